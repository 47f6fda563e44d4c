//! TLS to the broker: the CA that signs the broker's certificate and, for
//! mutual TLS (AWS IoT Core on 8883), a client certificate and its key, all
//! PEM files. [`GatewayTls`] names them; the gateway reads and checks them
//! once at start into a rustls client configuration (rustls 0.22 with its
//! `ring` provider, as `rumqttc` uses it), so a missing or unusable file is a
//! startup error naming the option and the file, not a reconnect loop.

use std::path::{Path, PathBuf};

use rumqttc::tokio_rustls::rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use weir_core::error::{Error, Result};

/// The TLS settings of [`super::GatewayConfig`]. Without [`GatewayTls::ca`]
/// the connection is plain TCP; with it alone, TLS authenticating the broker;
/// with [`GatewayTls::cert`] and [`GatewayTls::key`] too, mutual TLS.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GatewayTls {
    /// PEM file of the CA certificate(s) the broker's certificate must chain
    /// to (`--ca`; for AWS IoT Core `AmazonRootCA1.pem`). The broker's host
    /// name (or IP address) must be in its certificate.
    pub ca: Option<PathBuf>,
    /// PEM file of the client certificate, optionally followed by its
    /// intermediate CAs (`--cert`).
    pub cert: Option<PathBuf>,
    /// PEM file of the client certificate's private key (`--key`): PKCS#8,
    /// PKCS#1 (RSA) or SEC1 (EC).
    pub key: Option<PathBuf>,
}

impl GatewayTls {
    /// Whether the connection uses TLS.
    pub fn enabled(&self) -> bool {
        self.ca.is_some()
    }

    /// Checks that the options go together, naming the one missing (the
    /// files themselves are read by [`GatewayTls::client_config`]).
    pub fn validate(&self) -> Result<()> {
        match (&self.cert, &self.key) {
            (Some(_), None) => {
                return Err(Error::config("key", "`--cert` needs `--key`, the client certificate's private key"));
            }
            (None, Some(_)) => {
                return Err(Error::config("cert", "`--key` needs `--cert`, the client certificate of that key"));
            }
            _ => {}
        }
        if self.cert.is_some() && self.ca.is_none() {
            return Err(Error::config(
                "ca",
                "`--cert` and `--key` need `--ca`, the CA certificate that signs the broker's certificate",
            ));
        }
        Ok(())
    }

    /// Reads and checks the files into a rustls configuration; `None` without TLS.
    pub(crate) fn client_config(&self) -> Result<Option<ClientConfig>> {
        self.validate()?;
        let Some(ca) = &self.ca else { return Ok(None) };
        let mut roots = RootCertStore::empty();
        for cert in read_certs("ca", ca)? {
            roots.add(cert).map_err(|e| bad_file("ca", ca, format!("not a usable CA certificate: {e}")))?;
        }
        let builder = ClientConfig::builder().with_root_certificates(roots);
        let (Some(cert), Some(key)) = (&self.cert, &self.key) else {
            return Ok(Some(builder.with_no_client_auth()));
        };
        let chain = read_certs("cert", cert)?;
        // rustls parses the client certificate only in the handshake: parse it
        // now (as a trust anchor, which reads the same X.509 structure) so a
        // damaged file fails at start.
        for c in &chain {
            RootCertStore::empty()
                .add(c.clone())
                .map_err(|e| bad_file("cert", cert, format!("not a usable certificate: {e}")))?;
        }
        let bytes = read_file("key", key)?;
        let der = PrivateKeyDer::from_pem_slice(&bytes)
            .map_err(|e| bad_file("key", key, format!("no PEM private key (PKCS#8, RSA or EC) could be read: {e}")))?;
        let config = builder
            .with_client_auth_cert(chain, der)
            .map_err(|e| bad_file("key", key, format!("not a usable private key: {e}")))?;
        Ok(Some(config))
    }
}

fn bad_file(option: &str, path: &Path, what: String) -> Error {
    Error::config(option, format!("{}: {what}", path.display()))
}

fn read_file(option: &str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| bad_file(option, path, format!("cannot be read: {e}")))
}

/// The certificates of a PEM file (other PEM sections are skipped).
fn read_certs(option: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let bytes = read_file(option, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad_file(option, path, format!("invalid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad_file(option, path, "no PEM certificate (`-----BEGIN CERTIFICATE-----`) in it".into()));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(tls: &GatewayTls) -> String {
        match tls.client_config() {
            Ok(_) => "accepted".into(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn options_that_do_not_go_together_name_the_missing_one() {
        let some = |p: &str| Some(PathBuf::from(p));
        assert!(GatewayTls::default().validate().is_ok());
        assert!(!GatewayTls::default().enabled());
        let cert_only = GatewayTls { ca: some("ca.pem"), cert: some("c.pem"), key: None };
        assert!(err(&cert_only).contains("`key`: `--cert` needs `--key`"), "{}", err(&cert_only));
        let key_only = GatewayTls { ca: some("ca.pem"), cert: None, key: some("k.pem") };
        assert!(err(&key_only).contains("`cert`: `--key` needs `--cert`"), "{}", err(&key_only));
        let no_ca = GatewayTls { ca: None, cert: some("c.pem"), key: some("k.pem") };
        assert!(err(&no_ca).contains("`ca`"), "{}", err(&no_ca));
    }

    #[test]
    fn unreadable_or_invalid_files_name_the_option_and_the_file() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", "", e))?;
        let missing = dir.path().join("missing.pem");
        let tls = GatewayTls { ca: Some(missing.clone()), ..GatewayTls::default() };
        let e = err(&tls);
        assert!(
            e.contains("`ca`") && e.contains(&missing.display().to_string()) && e.contains("cannot be read"),
            "{e}"
        );

        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").map_err(|e| Error::io("write", &garbage, e))?;
        let e = err(&GatewayTls { ca: Some(garbage.clone()), ..GatewayTls::default() });
        assert!(e.contains("`ca`") && e.contains("garbage.pem") && e.contains("no PEM certificate"), "{e}");

        let broken = dir.path().join("broken.pem");
        std::fs::write(&broken, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
            .map_err(|e| Error::io("write", &broken, e))?;
        let e = err(&GatewayTls { ca: Some(broken.clone()), ..GatewayTls::default() });
        assert!(e.contains("`ca`") && e.contains("broken.pem") && e.contains("not a usable CA certificate"), "{e}");
        Ok(())
    }
}
