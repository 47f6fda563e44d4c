//! The longest record a source hands over whole (`max_record_bytes`), shared by
//! the file and log sources. A longer record becomes a truncated chunk entry
//! (its first KiB, see [`weir_core::record::Chunk::truncated`]) that decoding
//! turns into a dead letter, so no record costs an allocation of its size.

use weir_core::error::{Error, Result};

/// Default `max_record_bytes`: 16 MiB.
pub const DEFAULT_MAX_RECORD_BYTES: u64 = 16 << 20;

/// Largest accepted `max_record_bytes`: 1 GiB, so that a chunk's `u32` record
/// ends always fit (a chunk holds at most about one window of this size).
pub const MAX_RECORD_BYTES_LIMIT: u64 = 1 << 30;

/// Checks a `max_record_bytes` value, naming the field.
pub(crate) fn check_max_record_bytes(n: u64) -> Result<()> {
    if n == 0 || n > MAX_RECORD_BYTES_LIMIT {
        return Err(Error::config(
            "max_record_bytes",
            format!("{n} is out of range: expected 1 to {MAX_RECORD_BYTES_LIMIT} bytes"),
        ));
    }
    Ok(())
}
