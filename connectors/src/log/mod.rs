//! The embedded partitioned log: Weir's default source, a directory of topics
//! that needs no server.
//!
//! A [`Topic`] is a directory of partitions; one [`PartitionWriter`] per
//! partition appends batches of records to segment files, any number of
//! [`LogReader`]s read them, and [`LogSource`] presents a topic as a
//! [`weir_core::source::Source`]. [`Producer`] spreads keyed records over the
//! partitions of a topic.
//!
//! Every file operation goes through a [`weir_core::storage::Storage`]: the
//! local file system by default, another one given to [`Topic::open_in`],
//! [`Topic::create_in`], [`LogSource::open_in`], [`PartitionWriter::open_in`]
//! or [`LogReader::open_in`] (a pipeline passes its own storage; tests pass a
//! fault-injecting `FaultFs` to crash the log after any call). Appends are one
//! write per segment touched and batch, reads one positional read per 1 MiB.
//!
//! # On-disk format
//!
//! ```text
//! <log_dir>/<topic>/
//!   topic.json                       {"format":1,"name":"<topic>","id":"<32 hex digits>","partitions":N}
//!   p-00000/                         one directory per partition, p-00000 .. p-(N-1)
//!     writer.lock                    held (Storage::try_lock) by the partition's one writer
//!     synced.pos                     sync watermark: segment and byte synced so far
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
//! - The **sync watermark** `synced.pos` (24 bytes: `WSYN`, `u64 LE` segment base,
//!   `u64 LE` byte position, `u32 LE` CRC-32 of the first 20 bytes) says up to where
//!   the writer's fsyncs reached: every byte before `(base, pos)` is durable. The
//!   writer overwrites it (in place) after each successful fsync; it fsyncs it only
//!   the first time (when it opens, unless the policy is [`FsyncPolicy::Never`]), so
//!   a valid watermark is durable before an append can be torn, and after a machine
//!   crash it may be older than the truth but never newer.
//! - `topic.json`'s `id` (128 random-ish bits in hex, from the clock, the process id
//!   and std's randomly seeded hasher) tells two topics of the same name apart; a
//!   `topic.json` written before ids existed has id `legacy`.
//!
//! # Damage: the tail and everything before it
//!
//! A frame is *damaged* when its length exceeds [`MAX_RECORD_BYTES`], its CRC does not
//! match, or the file ends inside it. Whether damage is a **torn tail** (what a crash
//! in the middle of an unsynced append leaves behind: the writer truncates it, readers
//! stop before it) or **corruption** (an [`weir_core::Error::Corrupt`] naming the file
//! and the byte offset of the damaged frame, never skipped) is decided so:
//!
//! 1. Damage in a segment that has a successor is corruption: the writer fsyncs a
//!    segment before it starts the next one (with [`FsyncPolicy::Never`] too, damage
//!    there cannot be cut off without losing the later segments).
//! 2. Damage in the **last** segment at or after the sync watermark is a torn tail,
//!    whatever follows it. A crash during an unsynced multi-page append can persist
//!    the append's later pages and not its earlier ones, leaving a hole (zeros or
//!    stale bytes) followed by valid frames: those frames were never synced, so
//!    nothing was promised about them. When the watermark is in an earlier segment,
//!    all of the last segment counts as unsynced.
//! 3. Damage in the last segment before the watermark is corruption (the watermark is
//!    re-read first, and the frame after it, so a reader racing a live writer is
//!    never fooled by a frame being written).
//! 4. Without a (valid) watermark, from a partition written before watermarks
//!    existed or a damaged `synced.pos`, the older rule applies: damage in the last
//!    segment is a torn tail only when no valid frame starts anywhere between it and
//!    the end of the file.
//!
//! The writer truncates a torn tail when it opens the partition (with a
//! `tracing::warn!` naming the file and byte offset, see [`TailRepair`]); readers
//! stop before it and wait.
//!
//! # Oversize records
//!
//! Writers and producers refuse records over [`MAX_RECORD_BYTES`] (256 MiB). A
//! [`LogSource`] hands over records longer than its `max_record_bytes` (default
//! 16 MiB) as their first KiB and full length ([`weir_core::record::Chunk::truncated`]),
//! checked with a streaming CRC, so reading never allocates the record's size.

mod config;
mod frame;
mod index;
mod partition;
mod producer;
mod reader;
mod segment;
mod synced;
mod topic;
mod writer;

#[cfg(test)]
mod crash_tests;
#[cfg(test)]
mod tests;

pub use config::{FsyncPolicy, LogConfig};
pub use frame::MAX_RECORD_BYTES;
pub(crate) use partition::end_offset as partition_end_offset;
pub use partition::{PartitionInfo, partition_dir_name};
pub(crate) use producer::PendingRecords;
pub use producer::{Producer, partition_for_key};
pub use reader::LogReader;
pub use topic::{LEGACY_TOPIC_ID, LogSource, Topic, check_topic_name};
pub use writer::{PartitionWriter, TailRepair};
