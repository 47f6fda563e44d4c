//! [`Generator`]: a source that makes its records instead of reading them,
//! for throughput measurements without parsing and for tests (like Flink's
//! DataGen or Arroyo's impulse source).
//!
//! Each of its partitions holds the records `0..events` of a sequence: record
//! `i` is the 8-byte little-endian number `i`, with an event time the
//! source gives ([`Generator::times`]). Decode turns the number into a value
//! with `weir_operators::decode::Generated`, a format that calls a function
//! of the index, so decoding costs only what that function costs. Offsets are record offsets, so checkpoints, restarts
//! and bounded runs work as for a log.
//!
//! ```no_run
//! # use weir_connectors::generate::Generator;
//! # fn build(p: &mut weir_core::Dataflow<'_>) -> weir_core::Result<()> {
//! // 2 partitions of 1M records, 1,000 per ms of event time; then, e.g.,
//! // `.decode(Generated(|i: u64| i * 2))` with weir_operators::decode::Generated.
//! let raw = p.source(Generator::new(2, 1_000_000).times(0, 1, 1000))?;
//! # let _ = raw; Ok(()) }
//! ```

use weir_core::Result;
use weir_core::record::{Chunk, EventTime, Offset, OffsetKind, PartitionId};
use weir_core::source::{PartitionReader, PartitionSpec, ReadStatus, Source};

/// A source of `partitions` partitions of `events` generated records each.
#[derive(Clone, Debug)]
pub struct Generator {
    name: String,
    partitions: u32,
    events: u64,
    /// Event time of record 0, and `step` ms more every `every` records (None: no times).
    times: Option<Times>,
}

impl Generator {
    /// `partitions` partitions (at least 1) of `events` records each.
    pub fn new(partitions: u32, events: u64) -> Self {
        Generator { name: "generator".into(), partitions: partitions.max(1), events, times: None }
    }

    /// Gives record `i` of every partition the event time
    /// `start + (i / every) * step` (saturating; `every` at least 1), so each
    /// partition is in event-time order: `times(t0, 1, 1000)` is 1,000
    /// records per millisecond, `times(t0, 5, 1)` one record every 5 ms.
    pub fn times(mut self, start: EventTime, step: i64, every: u64) -> Self {
        self.times = Some(Times { start, step, every: every.max(1) });
        self
    }

    /// The name dead letters and checkpoints record (default `generator`).
    pub fn named(mut self, name: &str) -> Self {
        self.name = name.to_owned();
        self
    }
}

impl Source for Generator {
    fn name(&self) -> &str {
        &self.name
    }

    fn partitions(&self) -> Result<Vec<PartitionSpec>> {
        Ok((0..self.partitions).map(|id| PartitionSpec { id, start: 0, end: self.events }).collect())
    }

    fn open(&self, partition: PartitionId, from: Offset, until: Option<Offset>) -> Result<Box<dyn PartitionReader>> {
        let end = until.unwrap_or(self.events).min(self.events);
        Ok(Box::new(GeneratorReader { partition, next: from, end, times: self.times }))
    }

    fn fingerprint(&self) -> Result<serde_json::Value> {
        Ok(serde_json::json!({
            "generator": self.name,
            "partitions": self.partitions,
            "events": self.events,
            "times": self.times,
        }))
    }

    /// With [`Generator::times`]: `source_time` uses them.
    fn gives_times(&self) -> bool {
        self.times.is_some()
    }

    fn record_at(&self, _: PartitionId, offset: Offset) -> Result<Option<Vec<u8>>> {
        Ok((offset < self.events).then(|| offset.to_le_bytes().to_vec()))
    }
}

/// The event times of a [`Generator`]'s records.
#[derive(Clone, Copy, Debug, serde::Serialize)]
struct Times {
    start: EventTime,
    step: i64,
    every: u64,
}

impl Times {
    fn of(&self, i: u64) -> EventTime {
        self.start.saturating_add(((i / self.every) as i64).saturating_mul(self.step))
    }
}

/// Reads one partition of a [`Generator`].
struct GeneratorReader {
    partition: PartitionId,
    next: Offset,
    end: Offset,
    times: Option<Times>,
}

impl PartitionReader for GeneratorReader {
    fn read(&mut self, max_bytes: usize, out: &mut Chunk) -> Result<ReadStatus> {
        if self.next >= self.end {
            return Ok(ReadStatus::End);
        }
        if out.ends.is_empty() {
            out.partition = self.partition;
            out.first = self.next;
            out.kind = OffsetKind::Records;
            out.sep = 0;
        }
        let n = ((max_bytes / 8).max(1) as u64).min(self.end - self.next);
        out.data.reserve(n as usize * 8);
        out.ends.reserve(n as usize);
        for i in self.next..self.next + n {
            out.data.extend_from_slice(&i.to_le_bytes());
            out.ends.push(out.data.len() as u32);
        }
        if let Some(times) = self.times {
            out.times.extend((self.next..self.next + n).map(|i| times.of(i)));
        }
        self.next += n;
        out.next = self.next;
        Ok(ReadStatus::Data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_range_in_chunks_with_times() -> Result<()> {
        let g = Generator::new(2, 10).times(100, 5, 2);
        assert_eq!(g.partitions()?.len(), 2);
        let mut r = g.open(1, 3, Some(9))?;
        let mut chunk = Chunk::default();
        assert_eq!(r.read(32, &mut chunk)?, ReadStatus::Data);
        let got: Vec<(Offset, u64)> =
            chunk.records().map(|(o, b)| (o, u64::from_le_bytes(b.try_into().unwrap_or_default()))).collect();
        assert_eq!(got, vec![(3, 3), (4, 4), (5, 5), (6, 6)]);
        assert_eq!(chunk.times, vec![105, 110, 110, 115]);
        chunk.clear();
        assert_eq!(r.read(1 << 20, &mut chunk)?, ReadStatus::Data);
        assert_eq!(chunk.first, 7);
        assert_eq!(chunk.ends.len(), 2);
        chunk.clear();
        assert_eq!(r.read(1 << 20, &mut chunk)?, ReadStatus::End);
        assert_eq!(g.record_at(0, 4)?, Some(4u64.to_le_bytes().to_vec()));
        Ok(())
    }
}
