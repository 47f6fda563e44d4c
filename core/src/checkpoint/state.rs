//! The part-file format of keyed state, indexed by key group.
//!
//! ```text
//! "WEIRSTAT" | block* | index (bincode Vec<(group u32, offset u64, len u64)>) | index length u64 LE
//! ```
//! A block holds one key group's entries (bincode). A restarted worker reads
//! the index and decodes only the groups it owns now, whatever the worker
//! count was when the part was written.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"WEIRSTAT";

/// Group id used for operator-wide (not keyed) state, read by every worker.
pub const GLOBAL_GROUP: u32 = u32::MAX;

fn enc<T: Serialize + ?Sized>(what: &str, v: &T) -> Result<Vec<u8>> {
    bincode::serialize(v).map_err(|e| Error::Encoding { what: what.into(), message: e.to_string() })
}

/// Builds a state part file one key group at a time.
#[derive(Debug)]
pub struct StateWriter {
    buf: Vec<u8>,
    index: Vec<(u32, u64, u64)>,
}

impl Default for StateWriter {
    fn default() -> Self {
        StateWriter { buf: MAGIC.to_vec(), index: Vec::new() }
    }
}

impl StateWriter {
    /// Adds the entries of key group `group`.
    pub fn group<T: Serialize + ?Sized>(&mut self, group: u32, entries: &T) -> Result<()> {
        let start = self.buf.len() as u64;
        bincode::serialize_into(&mut self.buf, entries)
            .map_err(|e| Error::Encoding { what: format!("state group {group}"), message: e.to_string() })?;
        self.index.push((group, start, self.buf.len() as u64 - start));
        Ok(())
    }

    /// The finished file contents.
    pub fn finish(mut self) -> Result<Vec<u8>> {
        let index = enc("state index", &self.index)?;
        self.buf.extend_from_slice(&index);
        self.buf.extend_from_slice(&(index.len() as u64).to_le_bytes());
        Ok(self.buf)
    }
}

/// Reads a state part file (already checksum-verified by the store).
#[derive(Debug)]
pub struct StateReader<'a> {
    bytes: &'a [u8],
    index: Vec<(u32, u64, u64)>,
    name: String,
}

impl<'a> StateReader<'a> {
    /// Parses the index of `bytes`; `name` is used in error messages.
    pub fn new(bytes: &'a [u8], name: &str) -> Result<Self> {
        let bad = |off: usize, what: &str| Error::corrupt(name, off as u64, what.to_string());
        if bytes.len() < 16 || &bytes[..8] != MAGIC {
            return Err(bad(0, "not a Weir state file"));
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(&bytes[bytes.len() - 8..]);
        let len = u64::from_le_bytes(len) as usize;
        // `checked_add`: a forged length near usize::MAX must not wrap (found by fuzzing).
        let start = len
            .checked_add(8)
            .and_then(|n| bytes.len().checked_sub(n))
            .filter(|&s| s >= 8)
            .ok_or_else(|| bad(bytes.len() - 8, "index length out of range"))?;
        let index: Vec<(u32, u64, u64)> =
            bincode::deserialize(&bytes[start..bytes.len() - 8]).map_err(|e| bad(start, &format!("index: {e}")))?;
        for &(_, off, len) in &index {
            if off.checked_add(len).is_none_or(|end| end as usize > start) {
                return Err(bad(off as usize, "block out of range"));
            }
        }
        Ok(StateReader { bytes, index, name: name.to_string() })
    }

    /// The key groups present.
    pub fn groups(&self) -> impl Iterator<Item = u32> + '_ {
        self.index.iter().map(|e| e.0)
    }

    /// Decodes the entries of `group`, if present.
    pub fn read<T: DeserializeOwned>(&self, group: u32) -> Result<Option<T>> {
        let Some(&(_, off, len)) = self.index.iter().find(|e| e.0 == group) else {
            return Ok(None);
        };
        let block = &self.bytes[off as usize..(off + len) as usize];
        bincode::deserialize(block)
            .map(Some)
            .map_err(|e| Error::corrupt(&self.name, off, format!("state group {group}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_roundtrip() {
        let mut w = StateWriter::default();
        w.group(3, &vec![("a".to_string(), 1u64)]).unwrap();
        w.group(7, &vec![("b".to_string(), 2u64), ("c".to_string(), 3)]).unwrap();
        w.group(GLOBAL_GROUP, &vec![5i64]).unwrap();
        let bytes = w.finish().unwrap();
        let r = StateReader::new(&bytes, "x").unwrap();
        assert_eq!(r.groups().collect::<Vec<_>>(), vec![3, 7, GLOBAL_GROUP]);
        let g7: Vec<(String, u64)> = r.read(7).unwrap().unwrap();
        assert_eq!(g7.len(), 2);
        assert!(r.read::<Vec<(String, u64)>>(4).unwrap().is_none());
        assert!(StateReader::new(&bytes[..bytes.len() - 1], "x").is_err());
        assert!(StateReader::new(b"garbage garbage garbage", "x").is_err());
    }
}
