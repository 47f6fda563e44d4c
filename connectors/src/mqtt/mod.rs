//! The MQTT gateway: an MQTT 5 subscription (`rumqttc::v5`) appended to a
//! topic of the embedded log, each message acknowledged only once it is durable.
//!
//! [`run_gateway`] connects with a persistent session (clean start off, a
//! session expiry interval) and manual acknowledgements, subscribes to
//! [`GatewayConfig::filter`] (as the shared subscription `$share/G/filter`
//! with a [`GatewayConfig::group`]) and then loops:
//!
//! 1. wait for a message, then take every message already received (up to
//!    [`GatewayConfig::max_batch_messages`] / [`GatewayConfig::max_batch_bytes`]):
//!    under load batches grow by themselves, idle they are one message;
//! 2. append the batch, one append per partition touched, and fsync each
//!    touched partition once;
//! 3. only then send the QoS 1 PUBACKs, in receive order.
//!
//! A message is stored as one record: its MQTT topic, a NUL, its payload as
//! published ([`record`]). Its partition is that of its key
//! ([`crate::log::partition_for_key`]): a top-level field of a JSON payload
//! or a level of the MQTT topic ([`GatewayKey`]); a message without a usable
//! key is stored too, round-robin.
//!
//! The broker keeps the session while the gateway is away (up to the expiry
//! interval): messages published meanwhile, and those received but not yet
//! acknowledged, are delivered again when it reconnects with the same client
//! id. Delivery is therefore at least once: a gateway killed between the
//! fsync and the PUBACKs stores those messages again when they come back.
//! When the connection fails the gateway reconnects with exponential backoff
//! ([`GatewayConfig::reconnect_min`] .. [`GatewayConfig::reconnect_max`]);
//! messages of a batch received on an earlier connection are stored but not
//! acknowledged (the broker redelivers them, so their packet ids cannot be
//! confused with another message's).
//!
//! The stop future (SIGTERM in `weir ingest mqtt`) ends the run cleanly: the
//! batch being received is stored, fsynced and acknowledged, then the client
//! disconnects (the session stays).
//!
//! With [`GatewayConfig::share_partitions`] (set by `--group`) the gateway
//! holds a partition's `writer.lock` only while it appends and fsyncs a
//! batch, so several gateways of a group can append to the same partitions.
//!
//! The connection is plain TCP, TLS authenticating the broker, or mutual TLS
//! with a client certificate (AWS IoT Core on 8883): [`GatewayTls`], PEM
//! files read and checked before connecting ([`tls`]). A user name and
//! [`Password`] can be sent in either case. A broker refusing them (bad user
//! name or password, not authorized) ends the run with an error: the
//! credentials are read once, so retrying could not succeed; other refusals
//! and TLS failures are retried like any connection failure.
//!
//! [`MqttTopic::sink`] is the other direction: a pipeline's rows published
//! after each checkpoint commits (alerts; at-least-once).
//!
//! Not done yet: QoS 2.

pub mod record;
mod sink;
pub mod tls;

pub use sink::{MqttSink, MqttTopic};

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet, Publish, SubscribeReasonCode};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};
use tokio::sync::mpsc;
use weir_core::error::{Error, Result};
use weir_core::record::PartitionId;

use crate::json_key::json_key;
use crate::log::{FsyncPolicy, LogConfig, MAX_RECORD_BYTES, PartitionWriter, PendingRecords, Topic, partition_for_key};
use record::{encode_record, topic_level};
pub use tls::GatewayTls;

/// Where the key of a message (which picks its partition) comes from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum GatewayKey {
    /// No key: every message round-robin.
    #[default]
    None,
    /// The string or number at this top-level field of a JSON-object payload.
    Field(String),
    /// This level (0-based) of the MQTT topic: `sensors/dev-7/temp` at 1 is `dev-7`.
    TopicLevel(usize),
}

/// The password sent to the broker; `Debug` shows `Password(***)`, so it
/// stays out of logs of the configuration.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// A password.
    pub fn new(password: impl Into<String>) -> Password {
        Password(password.into())
    }

    /// The password itself.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The password of a command line: the content of `file` (`--password-file`,
    /// trailing line breaks dropped), else the environment variable
    /// [`PASSWORD_ENV`] if set and not empty, else none. No option takes the
    /// password itself, since `ps` would show it.
    pub fn from_file_or_env(file: Option<&std::path::Path>) -> Result<Option<Password>> {
        let password = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Error::config("password-file", format!("{}: cannot be read: {e}", path.display())))?;
                let password = text.trim_end_matches(['\r', '\n']);
                if password.is_empty() {
                    return Err(Error::config("password-file", format!("{}: the file is empty", path.display())));
                }
                password.to_owned()
            }
            None => match std::env::var(PASSWORD_ENV) {
                Ok(p) if !p.is_empty() => p,
                Ok(_) | Err(std::env::VarError::NotPresent) => return Ok(None),
                Err(e) => return Err(Error::config(PASSWORD_ENV, e.to_string())),
            },
        };
        Ok(Some(Password::new(password)))
    }
}

/// The environment variable read for the MQTT password without `--password-file`.
pub const PASSWORD_ENV: &str = "WEIR_MQTT_PASSWORD";

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(***)")
    }
}

/// Configuration of [`run_gateway`].
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Broker host name or address.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// TLS to the broker; the default is plain TCP.
    pub tls: GatewayTls,
    /// The user name sent to the broker.
    pub username: Option<String>,
    /// The password sent with [`GatewayConfig::username`].
    pub password: Option<Password>,
    /// The topic filter subscribed to, e.g. `sensors/#`.
    pub filter: String,
    /// Shared-subscription group: subscribes to `$share/GROUP/filter`.
    pub group: Option<String>,
    /// The client id; the broker keeps the session under it.
    pub client_id: String,
    /// Subscription QoS: 0 or 1 (QoS 1 is acknowledged after the fsync).
    pub qos: u8,
    /// The key of a message.
    pub key: GatewayKey,
    /// How long the broker keeps the session after a disconnect. Default 1 day.
    pub session_expiry: Duration,
    /// MQTT keep-alive. Default 30 s.
    pub keep_alive: Duration,
    /// Most unacknowledged QoS 1 messages the broker may send (MQTT 5 receive
    /// maximum); the broker's own limit may be lower. Default 1000.
    pub receive_maximum: u16,
    /// Most messages in one batch. Default 10,000.
    pub max_batch_messages: usize,
    /// Most record bytes in one batch. Default 8 MiB.
    pub max_batch_bytes: usize,
    /// First reconnect delay. Default 100 ms.
    pub reconnect_min: Duration,
    /// Longest reconnect delay. Default 5 s.
    pub reconnect_max: Duration,
    /// Take a partition's writer lock per batch instead of for the whole run,
    /// so several gateways can append to the same partitions.
    pub share_partitions: bool,
    /// Segment size and index density of the partition writers (the fsync
    /// policy is the gateway's: one fsync per batch and partition).
    pub log: LogConfig,
}

impl GatewayConfig {
    /// A configuration for `broker` (`host:port`), `filter` and `client_id`,
    /// QoS 1, no key, other values at their defaults.
    pub fn new(broker: &str, filter: impl Into<String>, client_id: impl Into<String>) -> Result<GatewayConfig> {
        let (host, port) = parse_broker(broker)?;
        Ok(GatewayConfig {
            host,
            port,
            tls: GatewayTls::default(),
            username: None,
            password: None,
            filter: filter.into(),
            group: None,
            client_id: client_id.into(),
            qos: 1,
            key: GatewayKey::None,
            session_expiry: Duration::from_secs(24 * 3600),
            keep_alive: Duration::from_secs(30),
            receive_maximum: 1000,
            max_batch_messages: 10_000,
            max_batch_bytes: 8 << 20,
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            share_partitions: false,
            log: LogConfig::default(),
        })
    }

    /// The filter subscribed to: `$share/GROUP/filter` with a group.
    pub fn subscription(&self) -> String {
        match &self.group {
            Some(g) => format!("$share/{g}/{}", self.filter),
            None => self.filter.clone(),
        }
    }

    /// Checks the values, naming the offending field.
    pub fn validate(&self) -> Result<()> {
        if self.filter.is_empty() {
            return Err(Error::config("subscribe", "an empty topic filter"));
        }
        if let Some(g) = &self.group
            && (g.is_empty() || g.contains(['/', '+', '#']))
        {
            return Err(Error::config("group", format!("{g:?}: a share name is non-empty, without `/`, `+`, `#`")));
        }
        if self.client_id.is_empty() {
            return Err(Error::config("client-id", "a persistent session needs a non-empty client id"));
        }
        if self.qos > 1 {
            return Err(Error::config("qos", format!("{}: 0 or 1 are supported", self.qos)));
        }
        if self.receive_maximum == 0 || self.max_batch_messages == 0 || self.max_batch_bytes == 0 {
            return Err(Error::config("batch", "receive maximum and batch limits must be at least 1"));
        }
        if self.password.is_some() && self.username.is_none() {
            return Err(Error::config(
                "password",
                "a password (`--password-file` or WEIR_MQTT_PASSWORD) needs a user name (`--username`)",
            ));
        }
        if self.username.as_deref() == Some("") {
            return Err(Error::config("username", "an empty user name"));
        }
        self.tls.validate()?;
        self.log.validate()
    }
}

/// `host:port` to its parts (an [`Error::Config`] naming `broker` otherwise).
pub fn parse_broker(broker: &str) -> Result<(String, u16)> {
    let bad = || Error::config("broker", format!("{broker:?}: expected HOST:PORT"));
    let (host, port) = broker.rsplit_once(':').ok_or_else(bad)?;
    let port = port.parse().map_err(|_| bad())?;
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.trim_start_matches('[').trim_end_matches(']').to_owned(), port))
}

/// Sets TLS (reading and checking the PEM files) and credentials on client
/// options: the one way the gateway and the sink connect securely.
pub(crate) fn secure(
    options: &mut MqttOptions,
    tls: &GatewayTls,
    username: Option<&str>,
    password: Option<&Password>,
) -> Result<()> {
    tls.validate()?;
    if password.is_some() && username.is_none() {
        return Err(Error::config("password", "a password needs a user name"));
    }
    if let Some(tls) = tls.client_config()? {
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(Arc::new(tls))));
    }
    if let Some(username) = username {
        // An empty password is not sent (MQTT's password flag stays off).
        options.set_credentials(username, password.map_or("", Password::expose));
    }
    Ok(())
}

/// What a [`run_gateway`] run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GatewayStats {
    /// Messages received and stored (redeliveries included).
    pub stored: u64,
    /// Of those, messages without a usable key (stored round-robin).
    pub unkeyed: u64,
    /// QoS 1 acknowledgements sent.
    pub acked: u64,
    /// Fsynced batches.
    pub batches: u64,
    /// Connections made (the first included).
    pub connections: u64,
}

/// From the client task to the writer.
enum Msg {
    Publish(Publish),
    Connected,
    Fatal(String),
    Stop,
}

/// Runs the gateway into `topic` until `stop` completes (then returns `Ok`
/// after storing and acknowledging what it received) or a fatal error: an
/// append or fsync failing, the subscription refused, the credentials
/// refused. A TLS file that cannot be read or used fails before connecting.
/// Other connection failures are retried forever. Blocks the calling thread
/// (which must not be a tokio worker); the MQTT client runs on
/// [`crate::runtime::io`].
pub fn run_gateway(
    topic: &Topic,
    config: &GatewayConfig,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<GatewayStats> {
    config.validate()?;
    let mut options = MqttOptions::new(config.client_id.clone(), config.host.clone(), config.port);
    secure(&mut options, &config.tls, config.username.as_deref(), config.password.as_ref())?;
    let rt = crate::runtime::io()?;
    options
        .set_clean_start(false)
        .set_manual_acks(true)
        .set_keep_alive(config.keep_alive)
        .set_request_channel_capacity(config.receive_maximum as usize + 64)
        .set_receive_maximum(Some(config.receive_maximum))
        .set_max_packet_size(Some(MAX_RECORD_BYTES as u32));
    if let Some(mut props) = options.connect_properties() {
        props.session_expiry_interval = Some(u32::try_from(config.session_expiry.as_secs()).unwrap_or(u32::MAX));
        options.set_connect_properties(props);
    }
    let (client, eventloop) = AsyncClient::new(options, config.receive_maximum as usize + 64);
    // Unbounded so that the connection task never waits on the gateway: it must
    // keep polling the event loop, which is what sends the gateway's PUBACKs
    // (a bounded channel deadlocked: the gateway waiting to ack, the task
    // waiting to hand over). QoS 1 messages are bounded anyway by the receive
    // maximum (the broker sends no more unacknowledged ones); QoS 0 messages
    // are not flow-controlled and queue here if the gateway falls behind.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let closing = Arc::new(AtomicBool::new(false));
    let qos = if config.qos == 0 { QoS::AtMostOnce } else { QoS::AtLeastOnce };
    let driver = rt.spawn(drive(
        eventloop,
        client.clone(),
        tx.clone(),
        config.subscription(),
        qos,
        (config.reconnect_min, config.reconnect_max),
        closing.clone(),
    ));
    let stopper = rt.spawn(async move {
        stop.await;
        let _ = tx.send(Msg::Stop);
    });
    let mut gateway = Gateway::new(topic, config, client.clone())?;
    let result = gateway.run(&mut rx, rt);
    stopper.abort();
    closing.store(true, Ordering::SeqCst);
    if result.is_ok() {
        // The PUBACKs are queued before the DISCONNECT: wait until it is sent.
        // Bounded: with the broker away the request channel may be full.
        let _ = rt.block_on(async {
            let disconnect = async {
                let _ = client.disconnect().await;
                driver.await
            };
            tokio::time::timeout(Duration::from_secs(5), disconnect).await
        });
    } else {
        driver.abort();
    }
    result.map(|()| gateway.stats)
}

/// Drives the MQTT connection: forwards messages, reconnects with backoff,
/// subscribes when the broker has no session for the client.
async fn drive(
    mut eventloop: EventLoop,
    client: AsyncClient,
    tx: mpsc::UnboundedSender<Msg>,
    subscription: String,
    qos: QoS,
    (min, max): (Duration, Duration),
    closing: Arc<AtomicBool>,
) {
    let mut backoff = min;
    loop {
        let msg = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::Publish(p))) => Msg::Publish(p),
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff = min;
                tracing::info!("connected to the MQTT broker (session present: {})", ack.session_present);
                if !ack.session_present
                    && let Err(e) = client.try_subscribe(subscription.clone(), qos)
                {
                    Msg::Fatal(format!("subscribing to {subscription:?}: {e}"))
                } else {
                    Msg::Connected
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                match ack.return_codes.iter().find(|c| !matches!(c, SubscribeReasonCode::Success(_))) {
                    Some(code) => Msg::Fatal(format!("the broker refused the subscription {subscription:?}: {code:?}")),
                    None => {
                        tracing::info!("subscribed to {subscription:?}");
                        continue;
                    }
                }
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) if closing.load(Ordering::SeqCst) => return,
            Ok(_) => continue,
            Err(ConnectionError::ConnectionRefused(
                code @ (ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized),
            )) => {
                let _ = tx.send(Msg::Fatal(format!(
                    "the broker refused the connection ({code:?}): check the user name and password \
                     (or the client certificate)"
                )));
                return;
            }
            Err(e) => {
                if closing.load(Ordering::SeqCst) || tx.is_closed() {
                    return;
                }
                tracing::warn!("MQTT connection: {e}; reconnecting in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(max);
                continue;
            }
        };
        if tx.send(msg).is_err() {
            return;
        }
    }
}

/// How long acknowledging one message may wait for the connection. The
/// request queue holds a whole batch's acks (it is sized past the receive
/// maximum), so this is only a last resort for a broker that stays away; it
/// must not fire on a live but busy connection, where unsent acks would
/// leave messages in flight until the next reconnect.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// The writer side: batches, appends, fsyncs, acknowledges.
struct Gateway {
    topic: Topic,
    config: GatewayConfig,
    client: AsyncClient,
    writers: Vec<Option<PartitionWriter>>,
    pending: Vec<PendingRecords>,
    /// The batch's messages in receive order, with the connection they came on.
    batch: Vec<(u64, Publish)>,
    batch_bytes: usize,
    connection: u64,
    round_robin: u32,
    stats: GatewayStats,
}

impl Gateway {
    fn new(topic: &Topic, config: &GatewayConfig, client: AsyncClient) -> Result<Gateway> {
        let n = topic.partition_count() as usize;
        // Fsynced explicitly once per batch; the interval policy (rather than
        // `Never`) keeps the writer's fsyncs when it opens a partition.
        let log = LogConfig { fsync: FsyncPolicy::Interval(Duration::from_secs(24 * 3600)), ..config.log };
        Ok(Gateway {
            topic: topic.clone(),
            config: GatewayConfig { log, ..config.clone() },
            client,
            writers: (0..n).map(|_| None).collect(),
            pending: (0..n).map(|_| PendingRecords::default()).collect(),
            batch: Vec::new(),
            batch_bytes: 0,
            connection: 0,
            round_robin: 0,
            stats: GatewayStats::default(),
        })
    }

    fn run(&mut self, rx: &mut mpsc::UnboundedReceiver<Msg>, rt: &tokio::runtime::Runtime) -> Result<()> {
        let mut stopping = false;
        while !stopping {
            let Some(first) = rx.blocking_recv() else {
                return Err(Error::Pipeline("the MQTT client stopped".into()));
            };
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Publish(p) => self.add(p),
                    Msg::Connected => {
                        self.connection += 1;
                        self.stats.connections += 1;
                    }
                    Msg::Stop => stopping = true,
                    Msg::Fatal(e) => {
                        self.flush(rt)?;
                        return Err(Error::Pipeline(e));
                    }
                }
                if self.batch.len() < self.config.max_batch_messages && self.batch_bytes < self.config.max_batch_bytes {
                    next = rx.try_recv().ok();
                }
            }
            self.flush(rt)?;
        }
        Ok(())
    }

    /// Queues a message's record for its partition.
    fn add(&mut self, p: Publish) {
        let key = match &self.config.key {
            GatewayKey::None => None,
            GatewayKey::Field(f) => json_key(&p.payload, f).map(std::borrow::Cow::Owned),
            GatewayKey::TopicLevel(l) => topic_level(&p.topic, *l).map(std::borrow::Cow::Borrowed),
        };
        let n = self.topic.partition_count();
        let partition = match key {
            Some(k) => partition_for_key(&k, n),
            None => {
                self.stats.unkeyed += 1;
                let p = self.round_robin % n;
                self.round_robin = (p + 1) % n;
                p
            }
        };
        let pending = &mut self.pending[partition as usize];
        encode_record(&p.topic, &p.payload, &mut pending.data);
        pending.end_record();
        self.batch_bytes += p.topic.len() + 1 + p.payload.len();
        self.batch.push((self.connection, p));
    }

    /// Appends and fsyncs the batch, then acknowledges it in receive order.
    fn flush(&mut self, rt: &tokio::runtime::Runtime) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        for partition in 0..self.topic.partition_count() {
            if self.pending[partition as usize].is_empty() {
                continue;
            }
            let mut writer = match self.writers[partition as usize].take() {
                Some(w) => w,
                None => self.open_writer(partition)?,
            };
            let pending = &mut self.pending[partition as usize];
            writer.append(&pending.records())?;
            writer.sync()?;
            pending.clear();
            if !self.config.share_partitions {
                self.writers[partition as usize] = Some(writer);
            }
        }
        self.stats.stored += self.batch.len() as u64;
        self.stats.batches += 1;
        let connection = self.connection;
        let client = &self.client;
        let acked = rt.block_on(async {
            let mut acked = 0u64;
            for (c, p) in &self.batch {
                // A message of an earlier connection is redelivered: its packet
                // id may mean another message now.
                if *c == connection && p.qos == QoS::AtLeastOnce {
                    // While the broker is away the request queue is not drained: give
                    // up on this batch's remaining acks (in order, so none after a
                    // missing one); the broker redelivers them on the next connection.
                    match tokio::time::timeout(ACK_TIMEOUT, client.ack(p)).await {
                        Ok(r) => r.map_err(|e| Error::Pipeline(format!("acknowledging: {e}")))?,
                        Err(_) => {
                            tracing::warn!("acknowledgements are not going out (broker away?); the broker redelivers");
                            break;
                        }
                    }
                    acked += 1;
                }
            }
            Ok::<_, Error>(acked)
        })?;
        self.stats.acked += acked;
        self.batch.clear();
        self.batch_bytes = 0;
        Ok(())
    }

    /// Opens a partition's writer, waiting while another gateway holds its lock.
    fn open_writer(&self, partition: PartitionId) -> Result<PartitionWriter> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.topic.writer(partition, self.config.log) {
                Err(Error::Locked { path }) if self.config.share_partitions && Instant::now() < deadline => {
                    tracing::debug!("{} is held; waiting", path.display());
                    std::thread::sleep(Duration::from_millis(5));
                }
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_checks_and_subscriptions() -> Result<()> {
        assert_eq!(parse_broker("127.0.0.1:1883")?, ("127.0.0.1".to_owned(), 1883));
        assert_eq!(parse_broker("[::1]:1883")?, ("::1".to_owned(), 1883));
        for bad in ["localhost", ":1883", "h:x", "h:70000"] {
            assert!(parse_broker(bad).unwrap_err().to_string().contains("broker"), "{bad}");
        }
        let mut c = GatewayConfig::new("h:1", "sensors/#", "gw")?;
        assert_eq!(c.subscription(), "sensors/#");
        c.group = Some("g1".into());
        assert_eq!(c.subscription(), "$share/g1/sensors/#");
        c.validate()?;
        c.group = Some("a/b".into());
        assert!(c.validate().unwrap_err().to_string().contains("group"));
        c.group = None;
        c.qos = 2;
        assert!(c.validate().unwrap_err().to_string().contains("qos"));
        c.qos = 1;
        c.client_id.clear();
        assert!(c.validate().unwrap_err().to_string().contains("client-id"));
        c.client_id = "gw".into();
        c.password = Some(Password::new("secret"));
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("`password`: a password (`--password-file` or WEIR_MQTT_PASSWORD) needs a user name")
        );
        assert_eq!(format!("{:?}", c.password), "Some(Password(***))");
        c.username = Some("u".into());
        c.validate()?;
        c.tls.cert = Some("client.pem".into());
        assert!(c.validate().unwrap_err().to_string().contains("`key`"));
        Ok(())
    }
}
