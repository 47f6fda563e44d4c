//! The Kafka source: one consumer per worker for the partitions Weir's
//! assignor gave it, read in chunks.
//!
//! Every worker's readers share one `BaseConsumer`, created at the first read
//! (after every partition of the worker was opened) and given all of them with
//! one `assign()`. A read polls the consumer's queue without blocking and
//! sorts the messages into per-partition chunks (record offsets; a gap in the
//! offsets, as compaction or transaction markers leave, starts a new chunk),
//! each record with its message timestamp in [`Chunk::times`] (the topic's
//! CreateTime or LogAppendTime; `Meta::NO_TIME` for a message without one).
//! Backpressure: librdkafka's prefetch is bounded per partition
//! (`queued.max.messages.kbytes`), and a partition whose buffered chunks
//! exceed [`PARTITION_BUFFER_BYTES`] is paused until its reader drains them.
//! Wakeups: the queue's non-empty callback wakes the source operator, which
//! otherwise sleeps while every partition is idle.
//!
//! Errors: a lost broker is waited for (librdkafka reconnects and resumes at
//! its position; the pipeline stops only when the abort flag is set); an
//! offset the broker no longer has (deleted by retention, or a recreated
//! topic) stops the run with an error naming topic, partition and offsets.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset as KOffset, TopicPartitionList};
use weir_core::error::{Error, Result};
use weir_core::record::{Chunk, Meta, Offset, OffsetKind, PartitionId, TRUNCATED_PREFIX_BYTES};
use weir_core::source::{PartitionReader, PartitionSpec, ReadStatus, Source, Waker};

use super::commit::Committer;
use super::{KafkaConfig, StartPosition, broker_error};
use crate::record_limit::{DEFAULT_MAX_RECORD_BYTES, check_max_record_bytes};

/// Bytes of complete chunks a partition may buffer before it is paused.
pub const PARTITION_BUFFER_BYTES: usize = 8 << 20;

/// A Kafka topic as a partitioned source of a consumer group.
pub struct KafkaSource {
    topic: String,
    cfg: KafkaConfig,
    max_record_bytes: usize,
    /// Metadata, watermarks, committed offsets and group commits.
    meta: OnceLock<Arc<BaseConsumer>>,
    /// Re-reads single records for dead letters ([`Source::record_at`]).
    fetcher: Mutex<Option<BaseConsumer>>,
    /// This worker's consumer, shared by its partition readers.
    worker: Arc<Mutex<WorkerConsumer>>,
    committer: OnceLock<Committer>,
}

impl std::fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource").field("topic", &self.topic).field("brokers", &self.cfg.brokers).finish()
    }
}

impl KafkaSource {
    /// Reads `topic` of the cluster `cfg` describes. Nothing is contacted until the pipeline starts.
    pub fn new(cfg: KafkaConfig, topic: impl Into<String>) -> Result<Self> {
        let topic = topic.into();
        if topic.is_empty() {
            return Err(Error::config("topic", "a Kafka topic name is required"));
        }
        // Fail on a bad setting now, naming it, rather than in a worker.
        cfg.client_config()?;
        Ok(KafkaSource {
            topic,
            cfg,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES as usize,
            meta: OnceLock::new(),
            fetcher: Mutex::new(None),
            worker: Arc::new(Mutex::new(WorkerConsumer::default())),
            committer: OnceLock::new(),
        })
    }

    /// Hands over messages longer than `n` bytes (1 byte to 1 GiB) truncated, as dead letters.
    pub fn with_max_record_bytes(mut self, n: u64) -> Result<Self> {
        check_max_record_bytes(n)?;
        self.max_record_bytes = usize::try_from(n).unwrap_or(usize::MAX);
        Ok(self)
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    fn meta(&self) -> Result<&Arc<BaseConsumer>> {
        if let Some(m) = self.meta.get() {
            return Ok(m);
        }
        let consumer = Arc::new(self.cfg.consumer()?);
        Ok(self.meta.get_or_init(|| consumer))
    }

    /// The partition ids of the topic, from the cluster's metadata.
    pub fn partition_ids(&self) -> Result<Vec<i32>> {
        let meta = self.meta()?;
        let md = meta
            .fetch_metadata(Some(&self.topic), self.cfg.timeout)
            .map_err(|e| broker_error("fetching metadata", &self.cfg.brokers, &e))?;
        let Some(t) = md.topics().iter().find(|t| t.name() == self.topic) else {
            return Err(self.unknown_topic());
        };
        if t.error().is_some() || t.partitions().is_empty() {
            return Err(self.unknown_topic());
        }
        let mut ids: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
        ids.sort_unstable();
        Ok(ids)
    }

    fn unknown_topic(&self) -> Error {
        Error::config("topic", format!("Kafka topic `{}` does not exist on {}", self.topic, self.cfg.brokers))
    }

    /// The oldest and the next offset of every partition (`(low, high)` watermarks).
    pub fn watermarks(&self) -> Result<BTreeMap<i32, (i64, i64)>> {
        let meta = self.meta()?;
        let mut out = BTreeMap::new();
        for p in self.partition_ids()? {
            let w = meta.fetch_watermarks(&self.topic, p, self.cfg.timeout).map_err(|e| {
                broker_error(format!("reading the end offsets of {}/{p}", self.topic), &self.cfg.brokers, &e)
            })?;
            out.insert(p, w);
        }
        Ok(out)
    }

    /// The offsets the group has committed to the broker (absent: never committed).
    pub fn broker_committed(&self) -> Result<BTreeMap<i32, i64>> {
        let meta = self.meta()?;
        let mut tpl = TopicPartitionList::new();
        for p in self.partition_ids()? {
            tpl.add_partition(&self.topic, p);
        }
        let got = meta.committed_offsets(tpl, self.cfg.timeout).map_err(|e| {
            broker_error(format!("reading group `{}`'s committed offsets", self.cfg.group), &self.cfg.brokers, &e)
        })?;
        Ok(got
            .elements_for_topic(&self.topic)
            .iter()
            .filter_map(|e| match e.offset() {
                KOffset::Offset(o) if o >= 0 => Some((e.partition(), o)),
                _ => None,
            })
            .collect())
    }

    fn start_offsets(&self, marks: &BTreeMap<i32, (i64, i64)>) -> Result<BTreeMap<i32, i64>> {
        let low = || marks.iter().map(|(&p, &(l, _))| (p, l)).collect();
        Ok(match self.cfg.start {
            StartPosition::Earliest => low(),
            StartPosition::Latest => marks.iter().map(|(&p, &(_, h))| (p, h)).collect(),
            StartPosition::Committed => {
                let committed = self.broker_committed()?;
                marks.iter().map(|(&p, &(l, h))| (p, committed.get(&p).map_or(l, |&c| c.clamp(l, h)))).collect()
            }
            StartPosition::Timestamp(ms) => {
                let mut tpl = TopicPartitionList::new();
                for &p in marks.keys() {
                    tpl.add_partition_offset(&self.topic, p, KOffset::Offset(ms))
                        .map_err(|e| broker_error("building a request", &self.cfg.brokers, &e))?;
                }
                let got = self
                    .meta()?
                    .offsets_for_times(tpl, self.cfg.timeout)
                    .map_err(|e| broker_error(format!("finding offsets for timestamp {ms}"), &self.cfg.brokers, &e))?;
                marks
                    .iter()
                    .map(|(&p, &(_, h))| {
                        let at = got.find_partition(&self.topic, p).map(|e| e.offset());
                        (
                            p,
                            match at {
                                Some(KOffset::Offset(o)) if o >= 0 => o,
                                _ => h,
                            },
                        )
                    })
                    .collect()
            }
        })
    }
}

fn to_offset(o: i64) -> Offset {
    u64::try_from(o).unwrap_or(0)
}

impl Source for KafkaSource {
    fn name(&self) -> &str {
        &self.topic
    }

    fn partitions(&self) -> Result<Vec<PartitionSpec>> {
        let marks = self.watermarks()?;
        let starts = self.start_offsets(&marks)?;
        let mut specs = Vec::with_capacity(marks.len());
        for (&p, &(_, high)) in &marks {
            let id = PartitionId::try_from(p)
                .map_err(|_| Error::Pipeline(format!("Kafka partition id {p} of `{}` is negative", self.topic)))?;
            specs.push(PartitionSpec {
                id,
                start: to_offset(starts.get(&p).copied().unwrap_or(0)),
                end: to_offset(high),
            });
        }
        Ok(specs)
    }

    fn open(&self, partition: PartitionId, from: Offset, until: Option<Offset>) -> Result<Box<dyn PartitionReader>> {
        let p =
            i32::try_from(partition).map_err(|_| Error::config("partition", format!("{partition} is too large")))?;
        let from_i = i64::try_from(from).map_err(|_| Error::config("offset", format!("{from} is too large")))?;
        // A checkpointed offset the broker no longer has: refuse, never jump.
        let (low, high) = self
            .meta()?
            .fetch_watermarks(&self.topic, p, self.cfg.timeout)
            .map_err(|e| broker_error(format!("reading the offsets of {}/{p}", self.topic), &self.cfg.brokers, &e))?;
        if from_i < low || from_i > high {
            return Err(Error::Checkpoint {
                path: format!("kafka:{}/{p}", self.topic).into(),
                message: format!(
                    "the pipeline resumes partition {p} of topic `{}` at offset {from}, but the broker holds offsets \
                     {low} to {high}: records were deleted by retention or the topic was recreated",
                    self.topic
                ),
            });
        }
        let mut w = lock(&self.worker)?;
        w.pending.push((p, from_i));
        w.parts.insert(p, PartState::new(partition, from, until));
        Ok(Box::new(KafkaReader {
            partition: p,
            until,
            shared: self.worker.clone(),
            cfg: self.cfg.clone(),
            topic: self.topic.clone(),
            max_record_bytes: self.max_record_bytes,
        }))
    }

    fn fingerprint(&self) -> Result<serde_json::Value> {
        Ok(serde_json::json!({ "kafka_topic": self.topic }))
    }

    fn gives_times(&self) -> bool {
        true
    }

    fn discovers_partitions(&self) -> bool {
        true
    }

    fn discover(&self, known: &[PartitionId]) -> Result<Vec<PartitionSpec>> {
        let meta = self.meta()?;
        let mut found = Vec::new();
        for p in self.partition_ids()? {
            let Ok(id) = PartitionId::try_from(p) else { continue };
            if known.contains(&id) {
                continue;
            }
            // A partition created while the run goes on is read from its earliest offset.
            let (low, high) = meta.fetch_watermarks(&self.topic, p, self.cfg.timeout).map_err(|e| {
                broker_error(format!("reading the offsets of {}/{p}", self.topic), &self.cfg.brokers, &e)
            })?;
            found.push(PartitionSpec { id, start: to_offset(low), end: to_offset(high) });
        }
        Ok(found)
    }

    fn record_at(&self, partition: PartitionId, offset: Offset) -> Result<Option<Vec<u8>>> {
        let (Ok(p), Ok(o)) = (i32::try_from(partition), i64::try_from(offset)) else { return Ok(None) };
        let mut guard = self.fetcher.lock().map_err(|_| Error::Pipeline("Kafka fetcher lock poisoned".into()))?;
        if guard.is_none() {
            *guard = Some(self.cfg.consumer()?);
        }
        let Some(fetcher) = guard.as_ref() else { return Ok(None) };
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, p, KOffset::Offset(o))
            .map_err(|e| broker_error("building a request", &self.cfg.brokers, &e))?;
        fetcher.assign(&tpl).map_err(|e| broker_error("assigning a partition", &self.cfg.brokers, &e))?;
        let deadline = Instant::now() + self.cfg.timeout;
        while Instant::now() < deadline {
            match fetcher.poll(Duration::from_millis(100)) {
                Some(Ok(m)) if m.partition() == p && m.offset() == o => {
                    return Ok(Some(m.payload().unwrap_or(&[]).to_vec()));
                }
                Some(Ok(m)) if m.partition() == p && m.offset() > o => return Ok(None),
                Some(Err(KafkaError::PartitionEOF(_))) => return Ok(None),
                _ => {}
            }
        }
        Ok(None)
    }

    fn on_committed(&self, offsets: &BTreeMap<PartitionId, Offset>, last: bool) -> Result<()> {
        let committer = match self.committer.get() {
            Some(c) => c,
            None => {
                let c = Committer::start(self.meta()?.clone(), self.topic.clone(), self.cfg.clone())?;
                self.committer.get_or_init(|| c)
            }
        };
        committer.commit(offsets, last)
    }
}

/// One partition's messages, sorted out of the worker's queue.
struct PartState {
    id: PartitionId,
    /// Complete chunks, oldest first.
    ready: VecDeque<Chunk>,
    /// The chunk being filled.
    current: Chunk,
    /// The offset the next message should have (a gap starts a new chunk).
    expected: Offset,
    until: Option<Offset>,
    buffered: usize,
    paused: bool,
    eof: bool,
}

impl PartState {
    fn new(id: PartitionId, from: Offset, until: Option<Offset>) -> Self {
        PartState {
            id,
            ready: VecDeque::new(),
            current: Chunk::default(),
            expected: from,
            until,
            buffered: 0,
            paused: false,
            eof: false,
        }
    }
}

/// The consumer one worker's readers share.
#[derive(Default)]
struct WorkerConsumer {
    consumer: Option<BaseConsumer>,
    /// Opened partitions not yet assigned: `(partition, offset)`.
    pending: Vec<(i32, i64)>,
    parts: HashMap<i32, PartState>,
    waker: Option<Waker>,
    /// Emptied chunks to fill again.
    free: Vec<Chunk>,
    /// When a transport error was last logged (they repeat while a broker is away).
    last_warning: Option<Instant>,
}

fn lock(m: &Mutex<WorkerConsumer>) -> Result<MutexGuard<'_, WorkerConsumer>> {
    m.lock().map_err(|_| Error::Pipeline("Kafka consumer lock poisoned".into()))
}

struct KafkaReader {
    partition: i32,
    until: Option<Offset>,
    shared: Arc<Mutex<WorkerConsumer>>,
    cfg: KafkaConfig,
    topic: String,
    max_record_bytes: usize,
}

impl KafkaReader {
    fn start(&self, w: &mut WorkerConsumer) -> Result<()> {
        if w.consumer.is_none() {
            let mut consumer = self.cfg.consumer()?;
            if let Some(waker) = w.waker.clone() {
                consumer.set_nonempty_callback(move || waker.wake());
            }
            w.consumer = Some(consumer);
        }
        if w.pending.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for &(p, o) in &w.pending {
            tpl.add_partition_offset(&self.topic, p, KOffset::Offset(o))
                .map_err(|e| broker_error("building an assignment", &self.cfg.brokers, &e))?;
        }
        if let Some(c) = &w.consumer {
            c.incremental_assign(&tpl).map_err(|e| broker_error("assigning partitions", &self.cfg.brokers, &e))?;
        }
        w.pending.clear();
        Ok(())
    }

    /// Polls the worker's queue without blocking and sorts messages into their
    /// partitions' chunks, until it is empty or this partition has `want` bytes.
    fn pump(&self, w: &mut WorkerConsumer, want: usize) -> Result<()> {
        let WorkerConsumer { consumer, parts, free, last_warning, .. } = w;
        let Some(consumer) = consumer.as_ref() else { return Ok(()) };
        let mut polled = 0usize;
        while polled < 4 * want.max(1 << 16) {
            let Some(result) = consumer.poll(Duration::ZERO) else { break };
            let m = match result {
                Ok(m) => m,
                Err(KafkaError::PartitionEOF(p)) => {
                    if let Some(st) = parts.get_mut(&p) {
                        st.eof = true;
                    }
                    continue;
                }
                Err(e) => {
                    self.consumer_error(&e, last_warning)?;
                    continue;
                }
            };
            let Some(st) = parts.get_mut(&m.partition()) else { continue };
            let Ok(off) = u64::try_from(m.offset()) else { continue };
            if off < st.expected || st.until.is_some_and(|u| off >= u) {
                // Already read, or past a bounded run's end.
                continue;
            }
            st.eof = false;
            let payload = m.payload().unwrap_or(&[]);
            if !st.current.is_empty() && (off != st.expected || st.current.data.len() >= want) {
                let next = free.pop().unwrap_or_default();
                st.ready.push_back(std::mem::replace(&mut st.current, next));
            }
            let c = &mut st.current;
            if c.is_empty() {
                c.clear();
                c.partition = st.id;
                c.first = off;
                c.kind = OffsetKind::Records;
                c.sep = 0;
            }
            if payload.len() > self.max_record_bytes {
                c.truncated.push((c.ends.len() as u32, payload.len() as u64));
                c.max_record_bytes = self.max_record_bytes as u64;
                c.data.extend_from_slice(&payload[..TRUNCATED_PREFIX_BYTES.min(payload.len())]);
            } else {
                c.data.extend_from_slice(payload);
            }
            c.ends.push(c.data.len() as u32);
            // One time per record (the chunk's invariant): CreateTime or LogAppendTime, whichever the topic keeps.
            c.times.push(m.timestamp().to_millis().unwrap_or(Meta::NO_TIME));
            c.next = off + 1;
            st.expected = off + 1;
            let len = payload.len().min(self.max_record_bytes);
            st.buffered += len;
            polled += len;
            if !st.paused && st.buffered > PARTITION_BUFFER_BYTES {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(&self.topic, m.partition());
                if consumer.pause(&tpl).is_ok() {
                    st.paused = true;
                }
            }
            if m.partition() == self.partition && st.buffered >= want {
                break;
            }
        }
        Ok(())
    }

    fn consumer_error(&self, e: &KafkaError, last_warning: &mut Option<Instant>) -> Result<()> {
        let fatal = match e {
            KafkaError::MessageConsumptionFatal(_) => true,
            KafkaError::MessageConsumption(code) => {
                matches!(code, RDKafkaErrorCode::AutoOffsetReset | RDKafkaErrorCode::OffsetOutOfRange)
            }
            _ => false,
        };
        if fatal {
            return Err(Error::Pipeline(format!(
                "Kafka topic `{}` ({}): {e}: an offset the pipeline resumes from is no longer on the broker \
                 (deleted by retention?) or the topic was recreated",
                self.topic, self.cfg.brokers
            )));
        }
        if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
            tracing::warn!(topic = %self.topic, brokers = %self.cfg.brokers, error = %e, "Kafka consumer error; retrying");
            *last_warning = Some(Instant::now());
        }
        Ok(())
    }
}

impl PartitionReader for KafkaReader {
    fn read(&mut self, max_bytes: usize, out: &mut Chunk) -> Result<ReadStatus> {
        let mut guard = lock(&self.shared)?;
        let w = &mut *guard;
        self.start(w)?;
        let has_data = |w: &WorkerConsumer| {
            w.parts.get(&self.partition).is_some_and(|s| !s.ready.is_empty() || s.current.data.len() >= max_bytes)
        };
        if !has_data(w) {
            self.pump(w, max_bytes)?;
        }
        let WorkerConsumer { parts, free, consumer, .. } = w;
        let Some(st) = parts.get_mut(&self.partition) else {
            return Err(Error::Pipeline(format!("Kafka partition {} was never opened", self.partition)));
        };
        let chunk = match st.ready.pop_front() {
            Some(c) => Some(c),
            None if !st.current.is_empty() => Some(std::mem::take(&mut st.current)),
            None => None,
        };
        let mut next = st.expected;
        if let Some(mut chunk) = chunk {
            st.buffered = st.buffered.saturating_sub(chunk.data.len());
            std::mem::swap(out, &mut chunk);
            chunk.clear();
            free.push(chunk);
            next = out.next;
            if st.paused && st.buffered <= PARTITION_BUFFER_BYTES / 2 {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(&self.topic, self.partition);
                if let Some(c) = consumer.as_ref()
                    && c.resume(&tpl).is_ok()
                {
                    st.paused = false;
                }
            }
        }
        let Some(until) = self.until else {
            return Ok(if out.is_empty() { ReadStatus::Idle } else { ReadStatus::Data });
        };
        if next >= until {
            return Ok(ReadStatus::End);
        }
        if out.is_empty() && st.eof {
            // Control records (transaction markers) can sit between the last message and the end.
            if let Some(c) = consumer.as_ref()
                && let Ok(pos) = c.position()
                && let Some(KOffset::Offset(p)) = pos.find_partition(&self.topic, self.partition).map(|e| e.offset())
                && to_offset(p) >= until
            {
                st.expected = until;
                return Ok(ReadStatus::End);
            }
        }
        Ok(if out.is_empty() { ReadStatus::Idle } else { ReadStatus::Data })
    }

    fn set_waker(&mut self, waker: Waker) -> bool {
        match self.shared.lock() {
            Ok(mut w) => {
                w.waker = Some(waker);
                true
            }
            Err(_) => false,
        }
    }
}
