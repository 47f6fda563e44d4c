//! The embedded partitioned log: Weir's default source, a directory of topics
//! that needs no server.
//!
//! A [`Topic`] is a directory of partitions; one [`PartitionWriter`] per
//! partition appends batches of records to segment files, any number of
//! [`LogReader`]s read them, and [`LogSource`] presents a topic as a
//! [`weir_core::source::Source`]. [`Producer`] spreads keyed records over the
//! partitions of a topic.
//!
//! # On-disk format
//!
//! ```text
//! <log_dir>/<topic>/
//!   topic.json                       {"format":1,"name":"<topic>","partitions":N}
//!   p-00000/                         one directory per partition, p-00000 .. p-(N-1)
//!     writer.lock                    held (File::try_lock) by the partition's one writer
//!     00000000000000000000.log       segment: frames of the records from offset 0
//!     00000000000000000000.index     its sparse offset index (rebuildable)
//!     00000000000000001000.log       next segment: its name is the offset of its first record
//!     00000000000000001000.index
//! ```
//!
//! - A **segment** `<base>.log` (base: first record offset, 20 decimal digits) is a
//!   sequence of frames, nothing else: `u32 LE payload length`, `u32 LE CRC-32`,
//!   payload. The CRC-32 (IEEE, `crc32fast`) covers the four length bytes followed by
//!   the payload. Covering the length (rather than the payload alone) means a
//!   zero-filled region, which a crash can leave at the end of a file, is never read
//!   as empty records (the CRC of an empty payload alone is 0), and a damaged length
//!   cannot pass. A payload is at most [`MAX_RECORD_BYTES`]. Record `i` of a segment
//!   has offset `base + i`. The writer rolls to a new segment before a frame would
//!   take the segment past [`LogConfig::segment_bytes`] (a segment always holds at
//!   least one record, so a single record larger than that gets a segment of its own).
//! - An **index** `<base>.index` is a sequence of 16-byte entries `u32 LE record
//!   offset relative to base`, `u64 LE byte position of its frame`, `u32 LE CRC-32 of
//!   those 12 bytes`, strictly increasing. It is sparse: a record gets an entry when
//!   its frame starts at least [`LogConfig::index_interval_bytes`] after the previous
//!   entry (record 0, at position 0, never needs one). A missing or damaged index is
//!   never an error: readers then scan the segment from its start, and the writer
//!   rewrites the index from the segment when it opens the partition.
//!
//! # Damage: the tail and everything before it
//!
//! A frame is *damaged* when its length exceeds [`MAX_RECORD_BYTES`], its CRC does not
//! match, or the file ends inside it. The **tail** of a partition is the region from
//! a damaged frame to the end of the **last** segment file when no valid frame starts
//! anywhere inside that region: what a crash in the middle of an append leaves behind.
//! The writer truncates a damaged tail when it opens the partition (with a
//! `tracing::warn!` naming the file and byte offset, see [`TailRepair`]); readers stop
//! before it and wait. Any other damage (in a segment that has a successor, or
//! followed by a valid frame in the last segment) is corruption: writer and readers
//! return [`weir_core::Error::Corrupt`] naming the file and the byte offset of the
//! damaged frame, and never skip it.

mod config;
mod frame;
mod index;
mod partition;
mod producer;
mod reader;
mod segment;
mod topic;
mod writer;

#[cfg(test)]
mod tests;

pub use config::{FsyncPolicy, LogConfig};
pub use frame::MAX_RECORD_BYTES;
pub use partition::{PartitionInfo, partition_dir_name};
pub use producer::{Producer, partition_for_key};
pub use reader::LogReader;
pub use topic::{LogSource, Topic};
pub use writer::{PartitionWriter, TailRepair};
