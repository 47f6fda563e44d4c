//! The MQTT sink: each checkpoint's rows published as JSON (QoS 1) after that
//! checkpoint commits, for alerts and dashboards. It is an
//! [`OutboxSink`](crate::outbox::OutboxSink): at-least-once (a crash between
//! the commit and the broker's PUBACKs publishes the checkpoint's rows again).
//!
//! A keyed row goes to `TOPIC/KEY` (`alerts/dev-7`), an unkeyed one to
//! `TOPIC`. The client keeps a persistent session, so messages sent but not
//! yet acknowledged when the connection drops are sent again on reconnect;
//! a delivery that gets no acknowledgement for [`MqttTopic::ack_timeout`]
//! fails the run, and the next run publishes what is left.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use serde::Serialize;
use tokio::sync::Notify;
use weir_core::error::{Error, Result};

use super::{GatewayTls, Password, parse_broker, secure};
use crate::outbox::{Deliver, Destination, OutRecord, OutboxSink};

/// An MQTT sink of rows of type `T`.
pub type MqttSink<T> = OutboxSink<T, MqttTopic>;

/// A topic of an MQTT broker as a sink's destination.
#[derive(Clone, Debug)]
pub struct MqttTopic {
    host: String,
    port: u16,
    topic: String,
    client_id: String,
    /// The largest message (key plus payload) published; larger rows are dead
    /// letters. Default 128 KiB, AWS IoT Core's limit.
    pub max_message_bytes: usize,
    /// How long a delivery waits for the broker's acknowledgements without
    /// progress before it fails. Default 60 s.
    pub ack_timeout: Duration,
    /// How long the broker keeps the session. Default 1 hour.
    pub session_expiry: Duration,
    /// TLS, as for the gateway (AWS IoT Core: mutual TLS on 8883).
    pub tls: GatewayTls,
    /// User name sent to the broker.
    pub username: Option<String>,
    /// Password sent with the user name.
    pub password: Option<Password>,
}

impl MqttTopic {
    /// Publishes to `topic` (rows with a key to `topic/key`) on `broker`
    /// (`host:port`) as client `client_id`.
    pub fn new(broker: &str, topic: impl Into<String>, client_id: impl Into<String>) -> Result<Self> {
        let (host, port) = parse_broker(broker)?;
        let topic = topic.into();
        if topic.is_empty() || topic.contains(['+', '#']) || topic.starts_with('$') {
            return Err(Error::config(
                "mqtt topic",
                format!("{topic:?}: a topic name without `+`, `#` or a leading `$`"),
            ));
        }
        let client_id = client_id.into();
        if client_id.is_empty() {
            return Err(Error::config("client-id", "the MQTT sink needs a non-empty client id"));
        }
        Ok(MqttTopic {
            host,
            port,
            topic,
            client_id,
            max_message_bytes: 128 << 10,
            ack_timeout: Duration::from_secs(60),
            session_expiry: Duration::from_secs(3600),
            tls: GatewayTls::default(),
            username: None,
            password: None,
        })
    }

    /// A sink of JSON rows to this topic (`.keyed(...)` adds `/KEY`).
    pub fn sink<T: Serialize + 'static>(self) -> MqttSink<T> {
        OutboxSink::new(self)
    }

    fn options(&self) -> Result<MqttOptions> {
        let mut options = MqttOptions::new(self.client_id.clone(), self.host.clone(), self.port);
        secure(&mut options, &self.tls, self.username.as_deref(), self.password.as_ref())?;
        options.set_clean_start(false).set_keep_alive(Duration::from_secs(30));
        if let Some(mut props) = options.connect_properties() {
            props.session_expiry_interval = Some(u32::try_from(self.session_expiry.as_secs()).unwrap_or(u32::MAX));
            options.set_connect_properties(props);
        }
        Ok(options)
    }
}

/// What the connection task tells the publisher.
#[derive(Default)]
struct Progress {
    acks: AtomicU64,
    connections: AtomicU64,
    changed: Notify,
}

impl Destination for MqttTopic {
    fn kind(&self) -> &str {
        "mqtt"
    }

    fn max_record_bytes(&self) -> usize {
        // The key becomes a topic level: `topic/` plus the key.
        self.max_message_bytes.saturating_sub(self.topic.len() + 1)
    }

    fn connect(&self) -> Result<Box<dyn Deliver>> {
        let rt = crate::runtime::io()?;
        let (client, eventloop) = AsyncClient::new(self.options()?, 1024);
        let progress = Arc::new(Progress::default());
        let driver = rt.spawn(drive(eventloop, progress.clone()));
        let broker = format!("{}:{}", self.host, self.port);
        // The first connection is waited for: an unreachable broker is an error at startup.
        let connected = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), async {
                while progress.connections.load(Ordering::SeqCst) == 0 {
                    let changed = progress.changed.notified();
                    if progress.connections.load(Ordering::SeqCst) > 0 {
                        break;
                    }
                    changed.await;
                }
            })
            .await
        });
        if connected.is_err() {
            driver.abort();
            return Err(Error::config(
                "mqtt broker",
                format!("cannot connect to the MQTT broker at {broker} within 10 s"),
            ));
        }
        Ok(Box::new(MqttDeliver {
            client,
            progress,
            driver,
            topic: self.topic.clone(),
            broker,
            ack_timeout: self.ack_timeout,
        }))
    }
}

/// Polls the event loop forever: counts PUBACKs and connections, reconnects
/// with backoff (rumqttc sends unacknowledged messages again on reconnect).
async fn drive(mut eventloop: EventLoop, progress: Arc<Progress>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                progress.acks.fetch_add(1, Ordering::SeqCst);
                progress.changed.notify_waiters();
            }
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = Duration::from_millis(100);
                progress.connections.fetch_add(1, Ordering::SeqCst);
                progress.changed.notify_waiters();
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "MQTT sink connection failed; reconnecting in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

struct MqttDeliver {
    client: AsyncClient,
    progress: Arc<Progress>,
    driver: tokio::task::JoinHandle<()>,
    topic: String,
    broker: String,
    ack_timeout: Duration,
}

impl Deliver for MqttDeliver {
    fn deliver(&mut self, records: &[OutRecord<'_>], _refused: &mut Vec<(usize, String)>) -> Result<()> {
        let rt = crate::runtime::io()?;
        let progress = self.progress.clone();
        let (client, base, timeout) = (&self.client, &self.topic, self.ack_timeout);
        rt.block_on(async {
            let start = progress.acks.load(Ordering::SeqCst);
            let mut topic = String::with_capacity(base.len() + 32);
            for r in records {
                topic.clear();
                topic.push_str(base);
                if let Some(k) = r.key {
                    topic.push('/');
                    topic.push_str(&String::from_utf8_lossy(k));
                }
                // Waits while the client's request queue is full (backpressure).
                client
                    .publish(topic.as_str(), QoS::AtLeastOnce, false, r.value.to_vec())
                    .await
                    .map_err(|e| Error::Pipeline(format!("MQTT ({}): publishing to {topic}: {e}", self.broker)))?;
            }
            let want = start + records.len() as u64;
            let mut last = progress.acks.load(Ordering::SeqCst);
            while last < want {
                let changed = progress.changed.notified();
                if progress.acks.load(Ordering::SeqCst) != last {
                    last = progress.acks.load(Ordering::SeqCst);
                    continue;
                }
                if tokio::time::timeout(timeout, changed).await.is_err() {
                    return Err(Error::Pipeline(format!(
                        "MQTT ({}): {} of {} messages to {base} unacknowledged after {timeout:?}",
                        self.broker,
                        want - last,
                        records.len()
                    )));
                }
                last = progress.acks.load(Ordering::SeqCst);
            }
            Ok(())
        })
    }
}

impl Drop for MqttDeliver {
    fn drop(&mut self) {
        let _ = self.client.try_disconnect();
        self.driver.abort();
    }
}
