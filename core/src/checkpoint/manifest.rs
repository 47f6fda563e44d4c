//! The manifest: the one file whose rename commits a checkpoint.
//!
//! Encoding: a header line `WEIR-MANIFEST <version> <crc32 hex>` followed by
//! the JSON body; the CRC covers the body, so a torn or edited manifest is
//! detected. The manifest lists every part file and every staged output file
//! with its size and CRC32, so recovery verifies what it restores.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::record::{Offset, PartitionId};
use crate::time::Epoch;

/// Current manifest format version.
pub const FORMAT_VERSION: u32 = 1;

const MAGIC: &str = "WEIR-MANIFEST";

/// A file written for a checkpoint: path (relative to the state directory), size and CRC32.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the state directory.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// CRC32 (IEEE) of the whole file.
    pub crc32: u32,
}

/// A staged output file and where it is published once its checkpoint commits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publish {
    /// The staged file (inside the sink's `_staging/` directory).
    pub staged: PathBuf,
    /// The final, visible path (same file system: publishing is a rename).
    pub target: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// CRC32 (IEEE) of the whole file.
    pub crc32: u32,
    /// Whether the published file is an outbox entry that the sink delivers
    /// elsewhere after the commit and then removes ([`crate::sink::AfterCommit`]):
    /// neither file existing then means it was delivered.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub transient: bool,
}

/// What a source reads: recorded in a run's first manifest and kept across
/// restarts, so every start checks that it reads the same input.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InputBound {
    /// The source's identity ([`crate::source::Source::fingerprint`]).
    pub fingerprint: serde_json::Value,
    /// Whether the run is bounded (stops at `ends`).
    #[serde(default)]
    pub bounded: bool,
    /// End offset of every partition when the run first started (where a bounded run stops).
    pub ends: BTreeMap<PartitionId, Offset>,
}

/// A committed checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version ([`FORMAT_VERSION`]).
    pub version: u32,
    /// The pipeline (group) name.
    pub pipeline: String,
    /// The checkpoint epoch: the manifest holds exactly the effect of epochs `<= epoch`.
    pub epoch: Epoch,
    /// Set on the final checkpoint of a bounded run that read all its input.
    pub complete: bool,
    /// Worker count of the run that wrote it (informational: restore works with any count).
    pub workers: usize,
    /// Number of key groups keyed state is split into (must match on restore).
    pub key_groups: u32,
    /// Bounded inputs per source name.
    pub inputs: BTreeMap<String, InputBound>,
    /// Which worker read which partitions, per source (the previous assignment
    /// the `sticky` assignor keeps as much of as it can after a rescale).
    #[serde(default)]
    pub assignments: BTreeMap<String, Vec<Vec<PartitionId>>>,
    /// Next offset to read per source name and partition.
    pub offsets: BTreeMap<String, BTreeMap<PartitionId, Offset>>,
    /// State part files per operator id.
    pub state: BTreeMap<String, Vec<FileEntry>>,
    /// Output files published by this checkpoint.
    pub outputs: Vec<Publish>,
    /// The pipeline's stateful steps (windows, sinks), id to kind: a restart
    /// refuses a pipeline that lacks one of them.
    #[serde(default)]
    pub steps: BTreeMap<String, String>,
}

impl Manifest {
    /// Serializes with the checksummed header.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let body = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::Encoding { what: "manifest".into(), message: e.to_string() })?;
        let crc = crc32fast::hash(&body);
        let mut out = format!("{MAGIC} {} {crc:08x}\n", self.version).into_bytes();
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Parses and verifies a manifest read from `path` (for error messages).
    pub fn decode(bytes: &[u8], path: &Path) -> Result<Manifest> {
        let nl = bytes
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| Error::corrupt(path, 0, "manifest header line missing"))?;
        let header =
            std::str::from_utf8(&bytes[..nl]).map_err(|_| Error::corrupt(path, 0, "manifest header is not UTF-8"))?;
        let mut fields = header.split(' ');
        if fields.next() != Some(MAGIC) {
            return Err(Error::corrupt(path, 0, format!("expected `{MAGIC}` header")));
        }
        let version: u32 = fields
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| Error::corrupt(path, 0, "manifest version missing"))?;
        if version > FORMAT_VERSION {
            return Err(Error::Checkpoint {
                path: path.to_path_buf(),
                message: format!(
                    "written by a newer Weir (checkpoint format {version}); this build reads format \
                     {FORMAT_VERSION}: use a newer build or another state directory"
                ),
            });
        }
        if version != FORMAT_VERSION {
            return Err(Error::corrupt(
                path,
                0,
                format!("manifest version {version}, this build reads {FORMAT_VERSION}"),
            ));
        }
        let crc = fields
            .next()
            .and_then(|c| u32::from_str_radix(c, 16).ok())
            .ok_or_else(|| Error::corrupt(path, 0, "manifest checksum missing"))?;
        let body = &bytes[nl + 1..];
        let actual = crc32fast::hash(body);
        if actual != crc {
            return Err(Error::corrupt(
                path,
                nl as u64 + 1,
                format!("manifest checksum {actual:08x}, header says {crc:08x}"),
            ));
        }
        serde_json::from_slice(body).map_err(|e| Error::corrupt(path, nl as u64 + 1, format!("manifest body: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_damage() {
        let mut m = Manifest { version: FORMAT_VERSION, pipeline: "p".into(), epoch: 7, ..Default::default() };
        m.offsets.entry("src".into()).or_default().insert(3, 42);
        m.state.insert("window-0".into(), vec![FileEntry { path: "chk/x".into(), size: 9, crc32: 1 }]);
        let bytes = m.encode().unwrap();
        let p = Path::new("MANIFEST");
        assert_eq!(Manifest::decode(&bytes, p).unwrap(), m);
        // Any flipped byte in the body is detected.
        for i in (bytes.iter().position(|&b| b == b'\n').unwrap() + 1)..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            assert!(Manifest::decode(&bad, p).is_err(), "flip at {i} not detected");
        }
        // A torn manifest is detected.
        assert!(Manifest::decode(&bytes[..bytes.len() / 2], p).is_err());
        assert!(Manifest::decode(b"", p).is_err());
    }
}
