//! `weir ingest mqtt`: runs the MQTT gateway ([`weir::connectors::mqtt`]) until
//! SIGTERM or SIGINT, then prints what it stored. The password comes from a
//! file or the environment, never from the command line (where `ps` shows it).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use weir::connectors::log::Topic;
use weir::connectors::mqtt::{GatewayConfig, GatewayKey, GatewayTls, Password, run_gateway};

/// The options of `weir ingest mqtt`.
#[derive(Args, Debug)]
pub struct IngestMqtt {
    /// The broker, `HOST:PORT`.
    #[arg(long)]
    broker: String,
    /// The topic filter to subscribe to, e.g. `sensors/#`.
    #[arg(long)]
    subscribe: String,
    /// Subscribe as a member of shared-subscription group G (`$share/G/FILTER`);
    /// the members' writers then share the partitions (lock per batch).
    #[arg(long)]
    group: Option<String>,
    /// The client id: the broker keeps the session (and queues messages) under it.
    #[arg(long)]
    client_id: String,
    /// Log directory.
    #[arg(long)]
    log_dir: PathBuf,
    /// The log topic (must exist: `weir topic create`).
    #[arg(long)]
    topic: String,
    /// Top-level field of a JSON payload whose value picks the partition.
    #[arg(long, conflicts_with = "key_from_topic_level")]
    key_field: Option<String>,
    /// Level (0-based) of the MQTT topic that picks the partition.
    #[arg(long)]
    key_from_topic_level: Option<usize>,
    /// Subscription QoS (0 or 1; QoS 1 is acknowledged after the fsync).
    #[arg(long, default_value_t = 1)]
    qos: u8,
    /// MQTT 5 receive maximum: unacknowledged messages the broker may send.
    #[arg(long, default_value_t = 1000)]
    receive_maximum: u16,
    /// Session expiry interval in seconds.
    #[arg(long, default_value_t = 24 * 3600)]
    session_expiry: u64,
    /// Connect with TLS, trusting this PEM file of CA certificates for the
    /// broker's certificate (AWS IoT Core: AmazonRootCA1.pem).
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// PEM file of the client certificate for mutual TLS (with --key and --ca).
    #[arg(long, value_name = "FILE")]
    cert: Option<PathBuf>,
    /// PEM file of the client certificate's private key (PKCS#8, RSA or EC).
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// User name sent to the broker.
    #[arg(long)]
    username: Option<String>,
    /// File holding the password for --username (trailing line breaks are
    /// dropped). Without it, the password is the environment variable
    /// WEIR_MQTT_PASSWORD if set and not empty. No option takes the password
    /// itself: `ps` would show it.
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
}

/// Runs the gateway; returns its statistics line.
pub fn ingest_mqtt(args: IngestMqtt) -> anyhow::Result<String> {
    let topic = Topic::open(&args.log_dir, &args.topic)?;
    let mut config = GatewayConfig::new(&args.broker, args.subscribe, args.client_id)?;
    config.key = match (args.key_field, args.key_from_topic_level) {
        (Some(f), _) => GatewayKey::Field(f),
        (None, Some(l)) => GatewayKey::TopicLevel(l),
        (None, None) => GatewayKey::None,
    };
    config.share_partitions = args.group.is_some();
    config.group = args.group;
    config.qos = args.qos;
    config.receive_maximum = args.receive_maximum;
    config.session_expiry = std::time::Duration::from_secs(args.session_expiry);
    config.tls = GatewayTls { ca: args.ca, cert: args.cert, key: args.key };
    config.password = Password::from_file_or_env(args.password_file.as_deref())?;
    config.username = args.username;
    config.validate()?;
    let rt = weir::connectors::runtime::io()?;
    let (mut term, mut int) = {
        let _guard = rt.enter();
        use tokio::signal::unix::{SignalKind, signal};
        (signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?)
    };
    let stop = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    let stats =
        run_gateway(&topic, &config, stop).with_context(|| format!("ingesting into topic `{}`", topic.name()))?;
    Ok(format!(
        "stored {} messages ({} without a key) in {} batches, acknowledged {}, {} connections",
        stats.stored, stats.unkeyed, stats.batches, stats.acked, stats.connections
    ))
}
