//! Kafka helpers for tests and benchmarks: create a topic, produce lines
//! (with or without explicit message timestamps).

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use weir_connectors::kafka::{KafkaConfig, KafkaSource};

/// Creates `name` with `partitions` partitions.
pub fn create_topic(brokers: &str, name: &str, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers).create().context("admin client")?;
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let results = weir_connectors::runtime::io()?
        .block_on(admin.create_topics([&topic], &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)))))
        .context("create_topics")?;
    for r in results {
        if let Err((t, e)) = r {
            bail!("creating topic {t}: {e}");
        }
    }
    Ok(())
}

/// Produces each line to the partition its `device` hashes to (round-robin without one),
/// and checks that the topic's end offsets grew by as many records.
pub fn produce(brokers: &str, topic: &str, lines: &[&[u8]]) -> anyhow::Result<()> {
    produce_records(brokers, topic, lines, None)
}

/// [`produce`] with an explicit message timestamp (CreateTime, ms) for each line.
pub fn produce_with_timestamps(brokers: &str, topic: &str, lines: &[&[u8]], timestamps: &[i64]) -> anyhow::Result<()> {
    ensure!(lines.len() == timestamps.len(), "{} lines but {} timestamps", lines.len(), timestamps.len());
    produce_records(brokers, topic, lines, Some(timestamps))
}

fn produce_records(brokers: &str, topic: &str, lines: &[&[u8]], timestamps: Option<&[i64]>) -> anyhow::Result<()> {
    let ends = |_: ()| -> anyhow::Result<(i32, i64)> {
        let marks = KafkaSource::new(KafkaConfig::new(brokers, "producer-check"), topic)?.watermarks()?;
        Ok((marks.len() as i32, marks.values().map(|&(_, high)| high).sum()))
    };
    let (partitions, before) = ends(())?;
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .context("producer")?;
    for (i, line) in lines.iter().enumerate() {
        let partition = match device_of(line) {
            Some(d) => {
                (d.iter().fold(0u32, |h, &b| h.wrapping_mul(31).wrapping_add(b as u32)) % partitions as u32) as i32
            }
            None => (i % partitions as usize) as i32,
        };
        let mut record = BaseRecord::<(), [u8]>::to(topic).payload(line).partition(partition);
        if let Some(&ts) = timestamps.and_then(|t| t.get(i)) {
            record = record.timestamp(ts);
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((e, r)) => {
                    if !matches!(
                        e,
                        rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull)
                    ) {
                        bail!("produce: {e}");
                    }
                    producer.poll(Duration::from_millis(10));
                    record = r;
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(60)).context("flush")?;
    let (_, after) = ends(())?;
    ensure!(
        after - before == lines.len() as i64,
        "produced {} records, the topic grew by {}",
        lines.len(),
        after - before
    );
    Ok(())
}

/// The `device` value of a JSON line, without a full parse.
pub fn device_of(line: &[u8]) -> Option<&[u8]> {
    let pat = b"\"device\":\"";
    let start = line.windows(pat.len()).position(|w| w == pat)? + pat.len();
    let len = line[start..].iter().position(|&b| b == b'"')?;
    Some(&line[start..start + len])
}

/// A consumed record: key (if any) and value.
pub type KeyValue = (Option<Vec<u8>>, Vec<u8>);

/// Every record of `topic` (key, value), partition by partition, up to the
/// end offsets at the call.
pub fn consume_all(brokers: &str, topic: &str) -> anyhow::Result<Vec<KeyValue>> {
    use rdkafka::Message;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let marks = KafkaSource::new(KafkaConfig::new(brokers, "consume-all"), topic)?.watermarks()?;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "weir-testkit-consume-all")
        .set("enable.auto.commit", "false")
        .create()
        .context("consumer")?;
    let mut out = Vec::new();
    for (&p, &(low, high)) in &marks {
        if high <= low {
            continue;
        }
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Offset(low))?;
        consumer.assign(&tpl)?;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut next = low;
        while next < high {
            ensure!(std::time::Instant::now() < deadline, "timed out reading {topic}/{p} at {next} of {high}");
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    next = m.offset() + 1;
                    out.push((m.key().map(<[u8]>::to_vec), m.payload().unwrap_or_default().to_vec()));
                }
                Some(Err(e)) => bail!("reading {topic}/{p}: {e}"),
                None => {}
            }
        }
    }
    Ok(out)
}
