//! How a partition writer stores records: segment size, index density and when
//! appended data is forced to disk.

use std::time::Duration;

use weir_core::{Error, Result};

/// When a [`super::PartitionWriter`] forces appended records to stable storage.
///
/// Whatever the policy, records survive a crash of the *process* once `append`
/// returned (they are in the OS page cache); the policy decides what survives a
/// crash of the *machine*.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// `fdatasync` the segment after every append batch: a returned `append` is durable.
    Always,
    /// `fdatasync` at the first append at least this long after the previous one
    /// (and on [`super::PartitionWriter::sync`] and drop): up to about this much of
    /// the newest records can be lost with the machine.
    Interval(Duration),
    /// Never fsync; the OS writes back when it likes. A machine crash can lose or
    /// damage any unsynced part of the log.
    Never,
}

/// Configuration of a [`super::PartitionWriter`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogConfig {
    /// Roll to a new segment before a frame would take the current one past this
    /// many bytes. Default 64 MiB.
    pub segment_bytes: u64,
    /// Bytes of segment between two index entries (0: an entry for every record).
    /// Default 4 KiB.
    pub index_interval_bytes: u64,
    /// When appends are fsynced. Default [`FsyncPolicy::Always`].
    pub fsync: FsyncPolicy,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { segment_bytes: 64 << 20, index_interval_bytes: 4 << 10, fsync: FsyncPolicy::Always }
    }
}

impl LogConfig {
    /// Checks the values, naming the offending field.
    pub fn validate(&self) -> Result<()> {
        if self.segment_bytes == 0 {
            return Err(Error::config("segment_bytes", "must be at least 1 byte"));
        }
        if self.fsync == FsyncPolicy::Interval(Duration::ZERO) {
            return Err(Error::config("fsync", "an interval of 0 is FsyncPolicy::Always; use that instead"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_zero_values_are_named() {
        assert!(LogConfig::default().validate().is_ok());
        let e = LogConfig { segment_bytes: 0, ..LogConfig::default() }.validate().unwrap_err();
        assert!(e.to_string().contains("segment_bytes"), "{e}");
        let c = LogConfig { fsync: FsyncPolicy::Interval(Duration::ZERO), ..LogConfig::default() };
        assert!(c.validate().unwrap_err().to_string().contains("fsync"));
    }
}
