//! Kafka helpers for tests and benchmarks: create a topic, produce lines.

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
