//! [`Producer`]: appends records to a topic, choosing each record's partition
//! from its key ([`partition_for_key`]) or round-robin when it has none, and
//! batching the records of each partition into one append.

use weir_core::error::{Error, Result};
use weir_core::record::PartitionId;

use super::config::LogConfig;
use super::frame::MAX_RECORD_BYTES;
use weir_core::keygroup::stable_hash;

use super::topic::Topic;
use super::writer::PartitionWriter;

/// The partition of records with `key` in a topic of `partitions` partitions:
/// `stable_hash(key) % partitions` (FNV-1a 64, [`weir_core::keygroup::stable_hash`]). Stable forever (across versions, platforms and
/// runs); `partitions` of 0 is treated as 1.
pub fn partition_for_key(key: &[u8], partitions: u32) -> PartitionId {
    (stable_hash(key) % u64::from(partitions.max(1))) as PartitionId
}

/// Records waiting for their partition's next append: one buffer and the end
/// of each record in it (a batch costs two growing vectors, not one
/// allocation per record). Shared by the producer and the MQTT gateway.
#[derive(Debug, Default)]
pub(crate) struct PendingRecords {
    /// The records, back to back.
    pub(crate) data: Vec<u8>,
    /// End of each record in `data`.
    pub(crate) ends: Vec<usize>,
}

impl PendingRecords {
    /// Marks the bytes appended to `data` since the last record as one record.
    pub(crate) fn end_record(&mut self) {
        self.ends.push(self.data.len());
    }

    /// Appends one record.
    pub(crate) fn push(&mut self, record: &[u8]) {
        self.data.extend_from_slice(record);
        self.end_record();
    }

    /// Whether no record waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The waiting records, in order.
    pub(crate) fn records(&self) -> Vec<&[u8]> {
        let mut start = 0;
        self.ends
            .iter()
            .map(|&end| {
                let r = &self.data[start..end];
                start = end;
                r
            })
            .collect()
    }

    /// Forgets the records, keeping the buffers.
    pub(crate) fn clear(&mut self) {
        self.data.clear();
        self.ends.clear();
    }
}

/// Appends keyed records to a topic, batched per partition.
///
/// Each partition's writer is opened (and locked) at its first append. Records
/// are buffered until a partition holds `batch_bytes` of them or
/// [`Producer::flush`] is called; dropping a producer flushes too, logging
/// instead of returning a failure, so call `flush` to see errors.
///
/// ```
/// # fn main() -> weir_core::Result<()> {
/// use weir_connectors::log::{LogConfig, Producer, Topic, partition_for_key};
/// let dir = tempfile::tempdir().map_err(|e| weir_core::Error::io("tempdir", "/tmp", e))?;
/// let topic = Topic::create(dir.path(), "readings", 4)?;
/// let mut producer = Producer::new(&topic, LogConfig::default())?;
/// let p = producer.send(Some(b"device-7"), b"{\"device\":\"device-7\",\"t\":1}")?;
/// assert_eq!(p, partition_for_key(b"device-7", 4));
/// producer.flush()?;
/// assert_eq!(topic.end_offsets()?.iter().sum::<u64>(), 1);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Producer {
    topic: Topic,
    config: LogConfig,
    batch_bytes: usize,
    writers: Vec<Option<PartitionWriter>>,
    pending: Vec<PendingRecords>,
    round_robin: u32,
}

impl Producer {
    /// Default of [`Producer::with_batch_bytes`]: 1 MiB.
    pub const DEFAULT_BATCH_BYTES: usize = 1 << 20;

    /// A producer for `topic` whose writers use `config`.
    pub fn new(topic: &Topic, config: LogConfig) -> Result<Producer> {
        config.validate()?;
        let n = topic.partition_count() as usize;
        Ok(Producer {
            topic: topic.clone(),
            config,
            batch_bytes: Self::DEFAULT_BATCH_BYTES,
            writers: (0..n).map(|_| None).collect(),
            pending: (0..n).map(|_| PendingRecords::default()).collect(),
            round_robin: 0,
        })
    }

    /// Appends a partition's records once they take this many bytes.
    pub fn with_batch_bytes(mut self, bytes: usize) -> Producer {
        self.batch_bytes = bytes;
        self
    }

    /// Queues `record` for the partition of `key` ([`partition_for_key`]), or the
    /// next partition in round-robin order when there is no key, and returns that
    /// partition.
    pub fn send(&mut self, key: Option<&[u8]>, record: &[u8]) -> Result<PartitionId> {
        if record.len() > MAX_RECORD_BYTES {
            return Err(Error::Encoding {
                what: format!("a record for topic `{}`", self.topic.name()),
                message: format!("{} bytes, expected at most {MAX_RECORD_BYTES} bytes per record", record.len()),
            });
        }
        let n = self.topic.partition_count();
        let partition = match key {
            Some(key) => partition_for_key(key, n),
            None => {
                let p = self.round_robin % n;
                self.round_robin = (p + 1) % n;
                p
            }
        };
        let pending = &mut self.pending[partition as usize];
        pending.push(record);
        if pending.data.len() >= self.batch_bytes {
            self.flush_partition(partition)?;
        }
        Ok(partition)
    }

    /// Appends every queued record.
    pub fn flush(&mut self) -> Result<()> {
        for p in 0..self.topic.partition_count() {
            self.flush_partition(p)?;
        }
        Ok(())
    }

    fn flush_partition(&mut self, partition: PartitionId) -> Result<()> {
        let i = partition as usize;
        if self.pending[i].is_empty() {
            return Ok(());
        }
        if self.writers[i].is_none() {
            self.writers[i] = Some(self.topic.writer(partition, self.config)?);
        }
        let pending = &mut self.pending[i];
        if let Some(writer) = self.writers[i].as_mut() {
            writer.append(&pending.records())?;
        }
        pending.clear();
        Ok(())
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::warn!("dropping the producer of topic `{}`: {e}", self.topic.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_core::error::IoContext;

    #[test]
    fn partition_hash_is_fnv1a_64() {
        assert_eq!(stable_hash(b""), 0xcbf29ce484222325);
        assert_eq!(stable_hash(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(stable_hash(b"foobar"), 0x85944171f73967e8);
        assert_eq!(partition_for_key(b"foobar", 7), (0x85944171f73967e8u64 % 7) as u32);
    }

    #[test]
    fn keyed_records_stay_together_and_unkeyed_spread() -> Result<()> {
        let dir = tempfile::tempdir().ctx("tempdir", "/tmp")?;
        let topic = Topic::create(dir.path(), "t", 3)?;
        let mut producer = Producer::new(&topic, LogConfig::default())?.with_batch_bytes(8);
        let mut seen = Vec::new();
        for i in 0..6u8 {
            seen.push(producer.send(None, &[i])?);
        }
        assert_eq!(seen, vec![0, 1, 2, 0, 1, 2]);
        let p = partition_for_key(b"k", 3);
        for i in 0..10u8 {
            assert_eq!(producer.send(Some(b"k"), &[i])?, p);
        }
        producer.flush()?;
        let ends = topic.end_offsets()?;
        assert_eq!(ends.iter().sum::<u64>(), 16);
        assert_eq!(ends[p as usize], 12);
        Ok(())
    }
}
