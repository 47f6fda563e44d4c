//! The Kafka sink: each checkpoint's rows produced to a topic after that
//! checkpoint commits, with the idempotent producer (no duplicates from the
//! producer's own retries), at-least-once across crashes (a crash between the
//! commit and the broker's acknowledgement produces the checkpoint's rows
//! again). It is an [`OutboxSink`]: see [`crate::outbox`].
//!
//! librdkafka cannot resume a transaction after a crash, and the broker the
//! tests run against has none, so a transactional (exactly-once) Kafka sink is
//! later work.

use std::sync::Mutex;
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use serde::Serialize;
use weir_core::error::{Error, Result};

use super::{KafkaConfig, broker_error, config_error};
use crate::outbox::{Deliver, Destination, OutRecord, OutboxSink};

/// A Kafka sink of rows of type `T` (JSON values, optionally keyed).
pub type KafkaSink<T> = OutboxSink<T, KafkaTopic>;

/// Settings Weir sets itself on the producer.
const RESERVED: &[&str] = &["enable.idempotence", "transactional.id"];

/// The largest message librdkafka produces unless `message.max.bytes` says otherwise.
const DEFAULT_MAX_MESSAGE: usize = 1_000_000;

/// Per-message overhead of the record format, kept free below `message.max.bytes`.
const RECORD_OVERHEAD: usize = 512;

/// A topic of a Kafka cluster as a sink's destination.
#[derive(Clone, Debug)]
pub struct KafkaTopic {
    cfg: KafkaConfig,
    topic: String,
}

impl KafkaTopic {
    /// The topic `topic` of the cluster `cfg` reaches (its group is unused).
    pub fn new(cfg: KafkaConfig, topic: impl Into<String>) -> Self {
        KafkaTopic { cfg, topic: topic.into() }
    }

    /// A sink of JSON rows to this topic, without keys (`.keyed(...)` adds them).
    pub fn sink<T: Serialize + 'static>(self) -> KafkaSink<T> {
        OutboxSink::new(self)
    }

    fn producer_config(&self) -> Result<rdkafka::ClientConfig> {
        if self.cfg.brokers.trim().is_empty() {
            return Err(Error::config("brokers", "no Kafka brokers given: expected host:port[,host:port...]"));
        }
        if self.topic.is_empty() {
            return Err(Error::config("kafka sink", "no topic given"));
        }
        let mut c = rdkafka::ClientConfig::new();
        c.set("bootstrap.servers", &self.cfg.brokers)
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("client.id", format!("weir-{}-sink", self.cfg.group));
        for (k, v) in &self.cfg.options {
            if RESERVED.contains(&k.as_str()) {
                return Err(Error::config(
                    format!("kafka option {k}"),
                    "Weir sets this itself (the sink's producer is idempotent, not transactional)",
                ));
            }
            // Consumer settings (the source's) do not apply to the producer.
            if super::RESERVED.contains(&k.as_str()) {
                continue;
            }
            c.set(k, v);
        }
        Ok(c)
    }
}

impl Destination for KafkaTopic {
    fn kind(&self) -> &str {
        "kafka"
    }

    fn max_record_bytes(&self) -> usize {
        let max = self
            .cfg
            .options
            .iter()
            .rev()
            .find(|(k, _)| k == "message.max.bytes")
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(DEFAULT_MAX_MESSAGE);
        max.saturating_sub(RECORD_OVERHEAD)
    }

    fn connect(&self) -> Result<Box<dyn Deliver>> {
        let producer: BaseProducer<Reports> =
            self.producer_config()?.create_with_context(Reports::default()).map_err(|e| config_error(&e))?;
        let brokers = &self.cfg.brokers;
        let md = producer
            .client()
            .fetch_metadata(Some(&self.topic), self.cfg.timeout)
            .map_err(|e| broker_error(format_args!("metadata of topic {}", self.topic), brokers, &e))?;
        let t = md.topics().iter().find(|t| t.name() == self.topic);
        match t {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => {}
            Some(t) if t.error().is_some() => {
                let code: Option<RDKafkaErrorCode> = t.error().map(Into::into);
                return Err(Error::config(
                    "kafka sink",
                    format!("topic `{}` on {brokers}: {}", self.topic, code.map_or(String::new(), |c| c.to_string())),
                ));
            }
            _ => {
                return Err(Error::config(
                    "kafka sink",
                    format!("topic `{}` does not exist on {brokers}: create it first", self.topic),
                ));
            }
        }
        Ok(Box::new(KafkaDeliver { producer, topic: self.topic.clone(), brokers: brokers.clone() }))
    }
}

/// Delivery reports of one batch: the failed messages' indexes and errors.
#[derive(Default)]
struct Reports {
    failed: Mutex<Vec<(usize, KafkaError)>>,
}

impl ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = Box<usize>;

    fn delivery(&self, result: &DeliveryResult<'_>, index: Box<usize>) {
        if let Err((e, _)) = result
            && let Ok(mut failed) = self.failed.lock()
        {
            failed.push((*index, e.clone()));
        }
    }
}

/// Whether a message can never be delivered, whatever is retried.
fn refused_for_good(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidRecord
        )
    )
}

struct KafkaDeliver {
    producer: BaseProducer<Reports>,
    topic: String,
    brokers: String,
}

impl Deliver for KafkaDeliver {
    fn deliver(&mut self, records: &[OutRecord<'_>], refused: &mut Vec<(usize, String)>) -> Result<()> {
        if let Ok(mut f) = self.producer.context().failed.lock() {
            f.clear();
        }
        for (i, r) in records.iter().enumerate() {
            let mut rec: BaseRecord<'_, [u8], [u8], Box<usize>> =
                BaseRecord::with_opaque_to(&self.topic, Box::new(i)).payload(r.value);
            if let Some(k) = r.key {
                rec = rec.key(k);
            }
            loop {
                match self.producer.send(rec) {
                    Ok(()) => break,
                    // A full producer queue: serve delivery reports until there is room.
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        rec = back;
                        self.producer.poll(Duration::from_millis(50));
                    }
                    Err((e, _)) if refused_for_good(&e) => {
                        refused.push((i, e.to_string()));
                        break;
                    }
                    Err((e, _)) => {
                        return Err(broker_error(format_args!("producing to {}", self.topic), &self.brokers, &e));
                    }
                }
            }
            self.producer.poll(Duration::ZERO);
        }
        // Every message is acknowledged or has failed (librdkafka retries until
        // `message.timeout.ms`).
        while self.producer.in_flight_count() > 0 {
            self.producer.poll(Duration::from_millis(100));
        }
        let failed = self.producer.context().failed.lock().map(|mut f| std::mem::take(&mut *f)).unwrap_or_default();
        for (i, e) in failed {
            if refused_for_good(&e) {
                refused.push((i, e.to_string()));
            } else {
                return Err(broker_error(format_args!("delivering to {}", self.topic), &self.brokers, &e));
            }
        }
        refused.sort_unstable();
        Ok(())
    }
}

impl Drop for KafkaDeliver {
    fn drop(&mut self) {
        let _ = self.producer.flush(Duration::from_secs(5));
    }
}
