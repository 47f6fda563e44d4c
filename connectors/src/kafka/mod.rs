//! Apache Kafka (and every Kafka-protocol service: Amazon MSK, Azure Event
//! Hubs' Kafka endpoint, Redpanda, tansu) through rdkafka (librdkafka).
//!
//! [`KafkaSource`] makes a pipeline a consumer group on a topic: Weir's own
//! assignor spreads the partitions over the workers (each worker's consumer
//! takes its partitions with `assign()`, not the broker's group protocol), the
//! offsets travel in Weir's checkpoints, and after every committed checkpoint
//! they are also committed to the broker's consumer group (asynchronously; a
//! bounded run's last commit synchronously, retried), so any Kafka tool shows
//! the pipeline's lag. The group id is the pipeline's: it must not be shared
//! with consumers that `subscribe()` (the broker rejects commits from a
//! non-member while the group has members).
//!
//! Client settings pass through unchanged ([`KafkaConfig::option`], or a
//! Java-style properties file): TLS, SASL PLAIN/SCRAM/OAUTHBEARER and the rest
//! of librdkafka's configuration. A setting librdkafka does not accept is an
//! error at startup naming the option.
//!
//! [`KafkaTopic::sink`] produces a pipeline's rows to a topic after each
//! checkpoint commits (idempotent producer, at-least-once).

mod commit;
mod sink;
mod source;

use std::path::Path;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use rdkafka::error::KafkaError;
use weir_core::error::{Error, Result};

pub use sink::{KafkaSink, KafkaTopic};
pub use source::KafkaSource;

/// Where a consumer starts in a partition that has no offset in Weir's checkpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StartPosition {
    /// The offset the group committed to the broker; `Earliest` for a partition it never committed.
    #[default]
    Committed,
    /// The oldest offset the broker still has.
    Earliest,
    /// The end: only records produced after the start.
    Latest,
    /// The first record with a timestamp at or after this many ms since the Unix epoch.
    Timestamp(i64),
}

impl std::str::FromStr for StartPosition {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "committed" => Ok(StartPosition::Committed),
            "earliest" => Ok(StartPosition::Earliest),
            "latest" => Ok(StartPosition::Latest),
            _ => match s.strip_prefix("timestamp:").map(str::parse::<i64>) {
                Some(Ok(ms)) => Ok(StartPosition::Timestamp(ms)),
                _ => {
                    Err(format!("`{s}` is not a start position: expected committed, earliest, latest or timestamp:MS"))
                }
            },
        }
    }
}

/// How to reach a Kafka cluster and which group to be.
#[derive(Clone, Debug)]
pub struct KafkaConfig {
    /// `bootstrap.servers`: `host:port[,host:port...]`.
    pub brokers: String,
    /// The consumer group (`group.id`): the pipeline's group name.
    pub group: String,
    /// Start position for partitions without a checkpointed offset.
    pub start: StartPosition,
    /// Client settings passed to librdkafka as given (`security.protocol`, `sasl.*`, `ssl.*`, ...).
    pub options: Vec<(String, String)>,
    /// How long startup calls (metadata, watermarks, committed offsets) wait for the cluster.
    pub timeout: Duration,
}

/// Settings Weir sets itself: a user value would break the source's guarantees.
const RESERVED: &[&str] = &["group.id", "enable.auto.commit", "enable.auto.offset.store", "auto.offset.reset"];

impl KafkaConfig {
    /// A cluster at `brokers`, as consumer group `group`.
    pub fn new(brokers: impl Into<String>, group: impl Into<String>) -> Self {
        KafkaConfig {
            brokers: brokers.into(),
            group: group.into(),
            start: StartPosition::default(),
            options: Vec::new(),
            timeout: Duration::from_secs(30),
        }
    }

    /// Sets the start position for partitions without a checkpointed offset.
    pub fn start(mut self, start: StartPosition) -> Self {
        self.start = start;
        self
    }

    /// Adds a librdkafka client setting (`key=value` on the command line).
    pub fn option(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.options.push((key.into(), value.into()));
        self
    }

    /// Adds the settings of a Java-style properties file (`key=value` lines;
    /// `#` and `!` start comments).
    pub fn properties_file(mut self, path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
                continue;
            }
            let Some((k, v)) = line.split_once('=').or_else(|| line.split_once(':')) else {
                return Err(Error::config(
                    format!("{}:{}", path.display(), n + 1),
                    format!("`{line}` is not a `key=value` setting"),
                ));
            };
            self.options.push((k.trim().to_string(), v.trim().to_string()));
        }
        Ok(self)
    }

    /// Parses `key=value` (the `--kafka-option` argument).
    pub fn parse_option(s: &str) -> std::result::Result<(String, String), String> {
        match s.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
            _ => Err(format!("`{s}` is not a `key=value` Kafka client setting")),
        }
    }

    /// The librdkafka configuration of a consumer of this group.
    fn client_config(&self) -> Result<ClientConfig> {
        if self.brokers.trim().is_empty() {
            return Err(Error::config("brokers", "no Kafka brokers given: expected host:port[,host:port...]"));
        }
        if self.group.is_empty() {
            return Err(Error::config("group", "a Kafka consumer needs a group id"));
        }
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("group.id", &self.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // A checkpointed offset the broker no longer has is an error, never a silent jump.
            .set("auto.offset.reset", "error")
            .set("enable.partition.eof", "true")
            // Prefetch is bounded per partition: librdkafka stops fetching when it is full.
            .set("queued.max.messages.kbytes", "16384")
            .set("fetch.wait.max.ms", "50")
            .set("client.id", format!("weir-{}", self.group));
        for (k, v) in &self.options {
            if RESERVED.contains(&k.as_str()) {
                return Err(Error::config(
                    format!("kafka option {k}"),
                    "Weir sets this itself (the group id is the pipeline's group; offsets are committed by \
                     checkpoints)",
                ));
            }
            c.set(k, v);
        }
        Ok(c)
    }

    /// A consumer with this configuration (not yet assigned anything).
    pub(crate) fn consumer(&self) -> Result<BaseConsumer> {
        self.client_config()?.create().map_err(|e| config_error(&e))
    }
}

/// A client creation error, naming the setting librdkafka refused.
fn config_error(e: &KafkaError) -> Error {
    match e {
        KafkaError::ClientConfig(_, desc, key, value) => {
            Error::config(format!("kafka option {key}"), format!("`{value}` refused by librdkafka: {desc}"))
        }
        other => Error::config("kafka", format!("cannot create a Kafka client: {other}")),
    }
}

/// An error talking to the cluster.
fn broker_error(what: impl std::fmt::Display, brokers: &str, e: &KafkaError) -> Error {
    Error::Pipeline(format!("Kafka ({brokers}): {what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_positions_parse() {
        assert_eq!("committed".parse(), Ok(StartPosition::Committed));
        assert_eq!("earliest".parse(), Ok(StartPosition::Earliest));
        assert_eq!("latest".parse(), Ok(StartPosition::Latest));
        assert_eq!("timestamp:-5".parse(), Ok(StartPosition::Timestamp(-5)));
        assert!("timestamp:x".parse::<StartPosition>().is_err());
        assert!("first".parse::<StartPosition>().is_err());
    }

    #[test]
    fn a_bad_setting_is_an_error_naming_it() {
        let cfg = KafkaConfig::new("127.0.0.1:1", "g").option("security.protocol", "carrier-pigeon");
        let err = cfg.consumer().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("security.protocol") && err.contains("carrier-pigeon"), "{err}");
        let err = KafkaConfig::new("127.0.0.1:1", "g").option("no.such.setting", "1").consumer().err();
        assert!(err.is_some_and(|e| e.to_string().contains("no.such.setting")));
        let err = KafkaConfig::new("127.0.0.1:1", "g").option("group.id", "other").consumer().err();
        assert!(err.is_some_and(|e| e.to_string().contains("group.id")));
        assert!(KafkaConfig::new("", "g").consumer().is_err());
    }

    #[test]
    fn options_parse_from_arguments_and_files() -> Result<()> {
        assert_eq!(KafkaConfig::parse_option("sasl.mechanism=PLAIN"), Ok(("sasl.mechanism".into(), "PLAIN".into())));
        assert_eq!(KafkaConfig::parse_option("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(KafkaConfig::parse_option("novalue").is_err());
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", "", e))?;
        let path = dir.path().join("client.properties");
        std::fs::write(&path, "# Event Hubs\nsecurity.protocol=SASL_SSL\n\nsasl.mechanism = PLAIN\n")
            .map_err(|e| Error::io("write", &path, e))?;
        let cfg = KafkaConfig::new("h:9093", "g").properties_file(&path)?;
        assert_eq!(
            cfg.options,
            vec![("security.protocol".into(), "SASL_SSL".into()), ("sasl.mechanism".into(), "PLAIN".into())]
        );
        std::fs::write(&path, "garbage\n").map_err(|e| Error::io("write", &path, e))?;
        let err = KafkaConfig::new("h:9093", "g").properties_file(&path).err();
        assert!(err.is_some_and(|e| e.to_string().contains("client.properties:1")));
        Ok(())
    }
}
