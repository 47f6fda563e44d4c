//! Certificates for TLS tests, made by the test itself (rcgen): a CA of its
//! own, a server certificate for 127.0.0.1 and `localhost` signed by it, and a
//! client certificate for mutual TLS, written as PEM files into a directory.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

/// The PEM files of a test PKI (ECDSA P-256 keys, PKCS#8).
#[derive(Clone, Debug)]
pub struct TestPki {
    /// The CA certificate: the broker's `cafile`, the client's `--ca`.
    pub ca: PathBuf,
    /// The server certificate (SAN 127.0.0.1 and `localhost`): the broker's `certfile`.
    pub server_cert: PathBuf,
    /// Its private key: the broker's `keyfile`.
    pub server_key: PathBuf,
    /// A client certificate signed by the CA (common name `weir-test-client`): `--cert`.
    pub client_cert: PathBuf,
    /// Its private key: `--key`.
    pub client_key: PathBuf,
}

impl TestPki {
    /// Makes a CA, a server and a client certificate and writes them into
    /// `dir` as `ca.pem`, `server.pem`, `server.key`, `client.pem`, `client.key`.
    pub fn generate(dir: &Path) -> anyhow::Result<TestPki> {
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "weir test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca, ca_key);

        let leaf = |names: Vec<String>, cn: &str, usage: ExtendedKeyUsagePurpose| -> anyhow::Result<(String, String)> {
            let mut params = CertificateParams::new(names)?;
            params.distinguished_name.push(DnType::CommonName, cn);
            params.use_authority_key_identifier_extension = true;
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![usage];
            let key = KeyPair::generate()?;
            let cert = params.signed_by(&key, &issuer)?;
            Ok((cert.pem(), key.serialize_pem()))
        };
        let server =
            leaf(vec!["127.0.0.1".into(), "localhost".into()], "localhost", ExtendedKeyUsagePurpose::ServerAuth)?;
        let client = leaf(Vec::new(), "weir-test-client", ExtendedKeyUsagePurpose::ClientAuth)?;

        let write = |name: &str, pem: &str| -> anyhow::Result<PathBuf> {
            let path = dir.join(name);
            std::fs::write(&path, pem).with_context(|| format!("writing {}", path.display()))?;
            Ok(path)
        };
        Ok(TestPki {
            ca: write("ca.pem", &ca_cert.pem())?,
            server_cert: write("server.pem", &server.0)?,
            server_key: write("server.key", &server.1)?,
            client_cert: write("client.pem", &client.0)?,
            client_key: write("client.key", &client.1)?,
        })
    }
}
