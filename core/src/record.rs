//! Records as they travel through a pipeline: raw chunks read from a source
//! partition, typed records with their provenance, and dead letters.
//!
//! Sources hand over [`Chunk`]s (many raw records in one buffer, so reading
//! allocates per batch, not per record). Decoding turns each raw record into a
//! [`Rec<T>`] that keeps its [`Meta`] (partition, offset, event time), so any
//! later stage can still say where a record came from when it dead-letters it.

use serde::{Deserialize, Serialize};

/// Event time in milliseconds since the Unix epoch.
pub type EventTime = i64;

/// Index of an input partition within a pipeline's source (a log partition or a file split).
pub type PartitionId = u32;

/// Position of a record within its partition (a record offset, or a byte offset for files).
pub type Offset = u64;

/// Where a record came from and when it happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The source partition (log partition or file split).
    pub partition: PartitionId,
    /// The record's offset in that partition (byte offset of the line start for files).
    pub offset: Offset,
    /// Event time in ms, or [`Meta::NO_TIME`] before `event_time` assigned one.
    pub event_time: EventTime,
}

impl Meta {
    /// Event time of a record that has none (yet).
    pub const NO_TIME: EventTime = EventTime::MIN;

    /// Metadata of a derived record (a window result), which has no source position.
    pub fn derived(event_time: EventTime) -> Self {
        Meta { partition: PartitionId::MAX, offset: Offset::MAX, event_time }
    }
}

/// A typed record with its provenance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rec<T> {
    /// Where the record came from.
    pub meta: Meta,
    /// The record itself.
    pub value: T,
}

/// How the offsets of the records in a [`Chunk`] are numbered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum OffsetKind {
    /// Byte offsets: record `i` starts at `first + start_of(i)` (files).
    Bytes,
    /// Record offsets: record `i` has offset `first + i` (logs).
    #[default]
    Records,
}

/// Bytes of an oversize record that a [`Chunk`] (and then its [`DeadLetter`]) keeps: 1 KiB.
pub const TRUNCATED_PREFIX_BYTES: usize = 1024;

/// A batch of raw records read from one source partition.
///
/// Record `i` is `data[start(i)..ends[i]]` where `start(0) = 0` and
/// `start(i) = ends[i - 1] + sep`; line sources strip the trailing `\n` by storing
/// it outside the record (`ends` marks the end of the payload, and the next
/// record starts after the separator: see [`Chunk::sep`]).
///
/// A source that knows when each record happened (Kafka's message timestamp)
/// says so in [`Chunk::times`]; other sources leave it empty, so a chunk costs
/// nothing more for them.
///
/// A record longer than the source's `max_record_bytes` is never read whole:
/// `data` holds only its first [`TRUNCATED_PREFIX_BYTES`] and [`Chunk::truncated`]
/// its full length, so decoding turns it into a dead letter. With byte offsets
/// such a record is always the last of its chunk (later records' offsets are
/// computed from their position in `data`, which no longer matches the file).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    /// The partition the records were read from.
    pub partition: PartitionId,
    /// Offset of the first record.
    pub first: Offset,
    /// How offsets are numbered.
    pub kind: OffsetKind,
    /// Length of the separator after each record (1 for `\n`-terminated lines, 0 for framed records).
    pub sep: u32,
    /// The concatenated records.
    pub data: Vec<u8>,
    /// End (exclusive) of each record's payload in `data`.
    pub ends: Vec<u32>,
    /// Offset to resume from after this chunk.
    pub next: Offset,
    /// Oversize records, sparse and in record order: `(record index, full length in bytes)`.
    /// Their payload in `data` is only a prefix. Empty in nearly every chunk, so
    /// consumers check `truncated.is_empty()` once per chunk.
    pub truncated: Vec<(u32, u64)>,
    /// The source's `max_record_bytes`, for the dead letters of `truncated` records
    /// (set by the reader that truncated them; 0 when unknown).
    pub max_record_bytes: u64,
    /// The event time the source gave each record (ms; [`Meta::NO_TIME`] for a
    /// record it has none for), which decode copies into [`Meta::event_time`].
    /// Invariant: empty (the source gives no times) or exactly one per record
    /// (`times.len() == ends.len()`), so a source either pushes one for every record
    /// or none at all. Read it with [`Chunk::time`].
    pub times: Vec<EventTime>,
}

impl Chunk {
    /// Empties the chunk, keeping its buffers.
    pub fn clear(&mut self) {
        self.data.clear();
        self.ends.clear();
        self.truncated.clear();
        self.times.clear();
        self.max_record_bytes = 0;
        self.first = 0;
        self.next = 0;
    }

    /// Number of records in the chunk.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether the chunk holds no records.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The event time the source gave record `i`, or [`Meta::NO_TIME`] (a source
    /// that gives no times, or none for this record).
    pub fn time(&self, i: usize) -> EventTime {
        self.times.get(i).copied().unwrap_or(Meta::NO_TIME)
    }

    /// Iterates `(offset, payload)` for every record.
    pub fn records(&self) -> impl Iterator<Item = (Offset, &[u8])> + '_ {
        let mut start = 0usize;
        let sep = self.sep as usize;
        let kind = self.kind;
        self.ends.iter().enumerate().map(move |(i, &end)| {
            let end = end as usize;
            let offset = match kind {
                OffsetKind::Bytes => self.first + start as u64,
                OffsetKind::Records => self.first + i as u64,
            };
            let payload = &self.data[start..end];
            start = end + sep;
            (offset, payload)
        })
    }
}

/// The MQTT topic and payload of a record the MQTT gateway stored (`weir
/// ingest mqtt`: the topic, one NUL byte, the payload as published; MQTT
/// topics cannot hold NUL, so the first one ends the topic). `None` when the
/// record has no NUL, so was not written by the gateway.
pub fn split_topic(record: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = record.iter().position(|&b| b == 0)?;
    Some((&record[..nul], &record[nul + 1..]))
}

/// A record that could not be processed, with the reason.
///
/// Written by the dead-letter sink as one JSON object per line (see DESIGN.md).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The raw input bytes (the line without its `\n`), or only their first
    /// [`TRUNCATED_PREFIX_BYTES`] when `payload_truncated`.
    pub payload: Vec<u8>,
    /// Whether `payload` is a prefix of the record (an oversize record is never held whole).
    pub payload_truncated: bool,
    /// Length of the whole record in bytes (`payload.len()` unless truncated).
    pub payload_length: u64,
    /// What went wrong.
    pub error: String,
    /// The stage that rejected it (`decode`, `late`, a user stage name, ...).
    pub stage: String,
    /// The source name (topic name or input path).
    pub source: String,
    /// The source partition (log partition or file split).
    pub partition: PartitionId,
    /// The record offset, or the byte offset of the line start.
    pub offset: Offset,
    /// The event time, when known.
    pub event_time: Option<EventTime>,
}

impl DeadLetter {
    /// A dead letter of `stage` for a record of `source` at `meta`, with
    /// `payload` as the record's bytes: the whole record, or only its first
    /// bytes when it was longer (`length` bytes in all). A derived record's
    /// position ([`Meta::derived`]) is kept as it is; [`Meta::NO_TIME`] means
    /// no event time. Every dead letter is made here.
    pub fn new(stage: &str, source: &str, meta: &Meta, error: String, payload: Vec<u8>, length: u64) -> DeadLetter {
        DeadLetter {
            payload_truncated: (payload.len() as u64) < length,
            payload_length: length,
            payload,
            error,
            stage: stage.to_owned(),
            source: source.to_owned(),
            partition: meta.partition,
            offset: meta.offset,
            event_time: (meta.event_time != Meta::NO_TIME).then_some(meta.event_time),
        }
    }

    /// A dead letter at `meta` whose payload is `value` as JSON (or empty, with
    /// the encoder's message added to `error`, when even that fails): for a
    /// record whose input bytes are not at hand.
    pub fn as_json<T: Serialize>(stage: &str, source: &str, meta: &Meta, error: String, value: &T) -> DeadLetter {
        let (payload, error) = match serde_json::to_vec(value) {
            Ok(p) => (p, error),
            Err(e) => (Vec::new(), format!("{error} (the row could not be written as JSON either: {e})")),
        };
        let length = payload.len() as u64;
        DeadLetter::new(stage, source, meta, error, payload, length)
    }

    /// A dead letter for a derived row (no source position, no event time): its
    /// payload is the row as JSON (see [`DeadLetter::as_json`]).
    pub fn of_row<T: Serialize>(row: &T, error: String, stage: &str, source: &str) -> DeadLetter {
        DeadLetter::as_json(stage, source, &Meta::derived(Meta::NO_TIME), error, row)
    }
}
