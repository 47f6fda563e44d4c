//! Test fixtures for running operators in a real pipeline: an in-memory
//! source whose records may carry source times, and a sink that collects rows;
//! and a small seeded random generator for the aggregators' reference tests.

use std::sync::{Arc, Mutex};

use weir_core::Result;
use weir_core::checkpoint::Publish;
use weir_core::record::{Chunk, EventTime, Offset, OffsetKind, PartitionId};
use weir_core::sink::{Rejected, Sink, SinkContext, SinkWriter};
use weir_core::source::{PartitionReader, PartitionSpec, ReadStatus, Source};
use weir_core::time::Epoch;

/// One record of a [`Memory`] partition: the time the source gives it and its
/// payload. A partition's records all have a time (`Some(Meta::NO_TIME)` for one
/// the source has none for, as Kafka does) or all have none (a source without times).
pub type Record = (Option<EventTime>, Vec<u8>);

/// Partitions of records held in memory; offsets are record indexes.
#[derive(Clone, Debug)]
pub struct Memory {
    name: String,
    partitions: Arc<Vec<Vec<Record>>>,
    /// Records per chunk at most (with `Pipeline::epoch_records`, this decides
    /// which records share an epoch).
    per_read: usize,
    /// Each partition stops (reads return `Idle`) for this long once it has
    /// read this many records.
    pause: Option<(Offset, std::time::Duration)>,
}

impl Memory {
    /// A source over `partitions`, at most `per_read` records per chunk.
    pub fn new(partitions: Vec<Vec<Record>>, per_read: usize) -> Self {
        Memory { name: "memory".to_string(), partitions: Arc::new(partitions), per_read: per_read.max(1), pause: None }
    }

    /// The source named `name` (a pipeline with two sources names them apart).
    pub fn named(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    /// Each partition pauses for `pause` (processing time) after `records` records.
    pub fn pause_after(mut self, records: Offset, pause: std::time::Duration) -> Self {
        self.pause = Some((records, pause));
        self
    }
}

impl Source for Memory {
    fn name(&self) -> &str {
        &self.name
    }

    fn partitions(&self) -> Result<Vec<PartitionSpec>> {
        Ok((0..)
            .zip(self.partitions.iter())
            .map(|(id, p)| PartitionSpec { id, start: 0, end: p.len() as Offset })
            .collect())
    }

    fn open(&self, partition: PartitionId, from: Offset, until: Option<Offset>) -> Result<Box<dyn PartitionReader>> {
        let end = until.unwrap_or(self.partitions[partition as usize].len() as Offset);
        let records = self.partitions.clone();
        Ok(Box::new(MemoryReader {
            records,
            partition,
            next: from,
            end,
            per_read: self.per_read,
            pause: self.pause,
            paused: None,
        }))
    }

    fn fingerprint(&self) -> Result<serde_json::Value> {
        Ok(serde_json::json!({ "memory": self.partitions.len() }))
    }

    fn gives_times(&self) -> bool {
        self.partitions.iter().flatten().any(|r| r.0.is_some())
    }

    fn record_at(&self, partition: PartitionId, offset: Offset) -> Result<Option<Vec<u8>>> {
        Ok(self.partitions.get(partition as usize).and_then(|p| p.get(offset as usize)).map(|r| r.1.clone()))
    }
}

struct MemoryReader {
    records: Arc<Vec<Vec<Record>>>,
    partition: PartitionId,
    next: Offset,
    end: Offset,
    per_read: usize,
    pause: Option<(Offset, std::time::Duration)>,
    paused: Option<std::time::Instant>,
}

impl PartitionReader for MemoryReader {
    fn read(&mut self, max_bytes: usize, out: &mut Chunk) -> Result<ReadStatus> {
        if self.next >= self.end {
            return Ok(ReadStatus::End);
        }
        if let Some((after, pause)) = self.pause
            && self.next >= after
        {
            let since = *self.paused.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() < pause {
                return Ok(ReadStatus::Idle);
            }
            self.pause = None;
        }
        out.clear();
        out.partition = self.partition;
        out.first = self.next;
        out.kind = OffsetKind::Records;
        out.sep = 0;
        let records = &self.records[self.partition as usize];
        let stop =
            self.pause.map_or(self.end, |(after, _)| if self.next < after { after.min(self.end) } else { self.end });
        while self.next < stop && out.data.len() < max_bytes && out.len() < self.per_read {
            let (time, payload) = &records[self.next as usize];
            out.data.extend_from_slice(payload);
            out.ends.push(out.data.len() as u32);
            if let Some(t) = time {
                out.times.push(*t);
            }
            self.next += 1;
        }
        out.next = self.next;
        Ok(ReadStatus::Data)
    }
}

/// Collects every row written, from every worker.
pub struct Collect<T>(pub Arc<Mutex<Vec<T>>>);

impl<T> Clone for Collect<T> {
    fn clone(&self) -> Self {
        Collect(self.0.clone())
    }
}

impl<T: Send + 'static> Sink<T> for Collect<T> {
    fn kind(&self) -> &str {
        "collect"
    }

    fn rejects_rows(&self) -> bool {
        false
    }

    fn open(&self, _: &SinkContext) -> Result<Box<dyn SinkWriter<T>>> {
        Ok(Box::new(self.clone()))
    }
}

impl<T> SinkWriter<T> for Collect<T> {
    fn write(&mut self, rows: &mut Vec<T>, _: &mut Vec<Rejected<T>>) -> Result<()> {
        self.0.lock().expect("collect lock").append(rows);
        Ok(())
    }

    fn stage(&mut self, _: Epoch) -> Result<Vec<Publish>> {
        Ok(Vec::new())
    }
}

/// A seeded generator (splitmix64) with the distributions the aggregator
/// tests draw from: reproducible without a dependency.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next() as u128 * n as u128) >> 64) as u64
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u = 1.0 - self.unit();
        let v = self.unit();
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }

    /// Lognormal: `exp(mu + sigma · normal)`.
    pub fn lognormal(&mut self, mu: f64, sigma: f64) -> f64 {
        (mu + sigma * self.normal()).exp()
    }

    /// Pareto with scale `xm` and shape `alpha` (heavier tail for smaller alpha).
    pub fn pareto(&mut self, xm: f64, alpha: f64) -> f64 {
        xm / (1.0 - self.unit()).powf(1.0 / alpha)
    }
}
