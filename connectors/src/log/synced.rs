//! The sync watermark of a partition (`synced.pos`): the segment and byte up to
//! which the writer's appends are known to be on stable storage. It is what tells
//! a torn tail from corruption (see the module docs of [`super`]): damage at or
//! after it is what a crash during an unsynced append leaves, damage before it
//! is not.
//!
//! The writer stores it with one small positional write (`pwrite` at byte 0,
//! [`StorageFile::write_all_at`]) after each successful fsync of the segment.
//! It fsyncs the file once, after the first store of its life (with
//! [`super::FsyncPolicy::Always`] and `Interval`: when it opens), so that a
//! valid watermark is durable before any append can be torn: without one, a
//! torn append that left a hole before valid frames would be judged by the
//! older rule, as corruption. Later stores are not fsynced: after a machine
//! crash the stored value can only be older than the truth (never newer, since
//! it is written after the data it covers is durable; one 24-byte write in one
//! page reaches the disk whole or not at all), which only widens what counts
//! as the tail. It carries its own CRC; a damaged file counts as no watermark.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use weir_core::error::{IoContext, Result};
use weir_core::record::Offset;
use weir_core::storage::{Storage, StorageFile};

/// Name of the watermark file in a partition directory.
pub(crate) const SYNCED_FILE: &str = "synced.pos";

const MAGIC: &[u8; 4] = b"WSYN";
/// `magic`, `u64 LE segment base`, `u64 LE byte position`, `u32 LE CRC-32 of the first 20 bytes`.
const LEN: usize = 24;

/// Appends up to byte `pos` of the segment `base` (and every earlier segment) are durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Synced {
    /// The segment.
    pub base: Offset,
    /// Byte position in it.
    pub pos: u64,
}

impl Synced {
    fn encode(self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[..4].copy_from_slice(MAGIC);
        b[4..12].copy_from_slice(&self.base.to_le_bytes());
        b[12..20].copy_from_slice(&self.pos.to_le_bytes());
        let crc = crc32fast::hash(&b[..20]);
        b[20..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<Synced> {
        let b: &[u8; LEN] = b.try_into().ok()?;
        let crc = u32::from_le_bytes([b[20], b[21], b[22], b[23]]);
        if &b[..4] != MAGIC || crc32fast::hash(&b[..20]) != crc {
            return None;
        }
        let u64_at = |i: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(x)
        };
        Some(Synced { base: u64_at(4), pos: u64_at(12) })
    }
}

/// Path of the watermark file of the partition in `dir`.
pub(crate) fn path(dir: &Path) -> PathBuf {
    dir.join(SYNCED_FILE)
}

/// The watermark of the partition in `dir`: `None` when there is no file (a
/// partition written before watermarks existed) or it is damaged (with a warning).
pub(crate) fn load(storage: &dyn Storage, dir: &Path) -> Result<Option<Synced>> {
    let path = path(dir);
    let bytes = match storage.read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).ctx("read", &path),
    };
    let synced = Synced::decode(&bytes);
    if synced.is_none() {
        tracing::warn!("ignoring the sync watermark {}: damaged ({} bytes)", path.display(), bytes.len());
    }
    Ok(synced)
}

/// Opens (creating, never truncating) the watermark file of the partition in
/// `dir` for [`store`].
pub(crate) fn open(storage: &dyn Storage, dir: &Path) -> Result<Box<dyn StorageFile>> {
    let path = path(dir);
    match storage.open_append(&path) {
        Ok(file) => Ok(file),
        Err(e) if e.kind() == ErrorKind::NotFound => storage.create(&path).ctx("create", &path),
        Err(e) => Err(e).ctx("open", &path),
    }
}

/// Overwrites the watermark in `file` (the partition in `dir`) with `synced`; not fsynced.
pub(crate) fn store(file: &mut dyn StorageFile, dir: &Path, synced: Synced) -> Result<()> {
    file.write_all_at(&synced.encode(), 0).ctx("write", path(dir))
}

#[cfg(test)]
mod tests {
    use weir_core::storage::LocalFs;

    use super::*;

    #[test]
    fn roundtrip_and_damage() -> Result<()> {
        let dir = tempfile::tempdir().ctx("tempdir", "/tmp")?;
        assert_eq!(load(&LocalFs, dir.path())?, None);
        let mut file = open(&LocalFs, dir.path())?;
        let w = Synced { base: 1000, pos: 4096 };
        store(&mut *file, dir.path(), w)?;
        assert_eq!(load(&LocalFs, dir.path())?, Some(w));
        store(&mut *file, dir.path(), Synced { base: 1000, pos: 5 })?;
        assert_eq!(load(&LocalFs, dir.path())?, Some(Synced { base: 1000, pos: 5 }));
        // Opened again: not truncated.
        drop(file);
        let mut file = open(&LocalFs, dir.path())?;
        assert_eq!(load(&LocalFs, dir.path())?, Some(Synced { base: 1000, pos: 5 }));
        store(&mut *file, dir.path(), w)?;
        assert_eq!(std::fs::read(path(dir.path())).ctx("read", dir.path())?.len(), LEN);
        let mut bytes = std::fs::read(path(dir.path())).ctx("read", dir.path())?;
        bytes[13] ^= 1;
        std::fs::write(path(dir.path()), &bytes).ctx("write", dir.path())?;
        assert_eq!(load(&LocalFs, dir.path())?, None);
        Ok(())
    }
}
