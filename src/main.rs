//! The `weir` command line: embedded-log topics, producing, consuming, the
//! MQTT gateway and consumer-group lag. (The sensor-aggregation pipeline is an
//! example: `cargo run --release --example sensor_aggregation -- --help`.)

mod cli_log;
mod cli_mqtt;

// The MQTT gateway receives messages on tokio's threads and frees them on the
// appending thread: cross-thread frees, which mimalloc handles better than the
// system allocator (as it does for pipelines, see the sensor example).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use weir::connectors::log::Topic;

#[derive(Parser, Debug)]
#[command(name = "weir", version, about = "Weir: stream analytics over partitioned feeds")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Embedded-log topics.
    Topic {
        #[command(subcommand)]
        command: TopicCommand,
    },
    /// Append JSON lines from standard input to a topic, partitioned by a key field.
    Produce {
        /// Topic name.
        name: String,
        /// Log directory.
        #[arg(long)]
        log_dir: PathBuf,
        /// Top-level field whose value picks the partition (stable hash); lines
        /// without it are stored too, spread round-robin.
        #[arg(long)]
        key_field: String,
    },
    /// Print a topic's records, one per line (payload as stored, then `\n`).
    Consume {
        /// Topic name.
        name: String,
        /// Log directory.
        #[arg(long)]
        log_dir: PathBuf,
        /// Only this partition (default: all, one after the other).
        #[arg(long)]
        partition: Option<u32>,
        /// First offset to print of every partition read (default 0).
        #[arg(long)]
        from: Option<u64>,
        /// Keep printing new records as they are appended (until killed).
        #[arg(long)]
        follow: bool,
        /// Prefix each record with its partition and offset: `P<TAB>OFFSET<TAB>`.
        #[arg(long)]
        with_meta: bool,
    },
    /// Gateways that append messages from outside to a topic.
    Ingest {
        #[command(subcommand)]
        command: IngestCommand,
    },
    /// Consumer groups (pipelines) and their lag.
    Group {
        #[command(subcommand)]
        command: GroupCommand,
    },
}

#[derive(Subcommand, Debug)]
enum TopicCommand {
    /// Create a topic.
    Create {
        /// Topic name.
        name: String,
        /// Number of partitions.
        #[arg(long)]
        partitions: u32,
        /// Log directory.
        #[arg(long)]
        log_dir: PathBuf,
    },
    /// Show a topic's partitions: offsets, segments, bytes.
    Describe {
        /// Topic name.
        name: String,
        /// Log directory.
        #[arg(long)]
        log_dir: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum IngestCommand {
    /// Subscribe to an MQTT 5 broker and append each message to a topic,
    /// acknowledging it (QoS 1) once it is fsynced; stops cleanly on SIGTERM.
    Mqtt(cli_mqtt::IngestMqtt),
}

#[derive(Subcommand, Debug)]
enum GroupCommand {
    /// Per partition: committed offset, end offset and lag.
    Describe {
        /// Group (pipeline) name.
        group: String,
        /// The pipeline's state directory.
        #[arg(long)]
        state: PathBuf,
        /// Log directory of the topics it reads.
        #[arg(long, required_unless_present = "brokers", conflicts_with = "brokers")]
        log_dir: Option<PathBuf>,
        /// Kafka brokers (`host:port[,...]`) of the topic it reads.
        #[arg(long, requires = "topic")]
        brokers: Option<String>,
        /// The Kafka topic.
        #[arg(long, requires = "brokers")]
        topic: Option<String>,
        /// A librdkafka client setting, `key=value` (repeatable).
        #[arg(long = "kafka-option", value_parser = weir::connectors::kafka::KafkaConfig::parse_option)]
        kafka_options: Vec<(String, String)>,
    },
}

fn main() -> anyhow::Result<()> {
    weir::init_logging();
    match Cli::parse().command {
        Command::Topic { command: TopicCommand::Create { name, partitions, log_dir } } => {
            cli_log::topic_create(&log_dir, &name, partitions)?;
            println!("created topic `{name}` with {partitions} partitions in {}", log_dir.display());
        }
        Command::Topic { command: TopicCommand::Describe { name, log_dir } } => {
            print!("{}", cli_log::topic_describe(&log_dir, &name)?);
        }
        Command::Produce { name, log_dir, key_field } => {
            let stats = cli_log::produce(&log_dir, &name, &key_field, std::io::stdin().lock())?;
            println!("{stats}");
        }
        Command::Consume { name, log_dir, partition, from, follow, with_meta } => {
            let options = cli_log::ConsumeOptions { partition, from, follow, with_meta };
            let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
            let never = std::sync::atomic::AtomicBool::new(false);
            match cli_log::consume(&log_dir, &name, &options, &mut out, &never) {
                Ok(_) => {}
                // `weir consume ... | head`: the reader went away, which is no failure.
                Err(e)
                    if e.downcast_ref::<std::io::Error>()
                        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) => {}
                Err(e) => return Err(e),
            }
        }
        Command::Ingest { command: IngestCommand::Mqtt(args) } => {
            eprintln!("{}", cli_mqtt::ingest_mqtt(args)?);
        }
        Command::Group { command: GroupCommand::Describe { group, state, log_dir, brokers, topic, kafka_options } } => {
            match (log_dir, brokers, topic) {
                (Some(log_dir), _, _) => print!("{}", group_describe(&group, &state, &log_dir)?),
                (None, Some(brokers), Some(topic)) => {
                    print!("{}", kafka_group_describe(&group, &state, &brokers, &topic, &kafka_options)?)
                }
                _ => bail!("give --log-dir DIR, or --brokers HOST:PORT and --topic NAME"),
            }
        }
    }
    Ok(())
}

/// The group's newest committed checkpoint in `state`.
fn group_manifest(group: &str, state: &Path) -> anyhow::Result<weir::core::checkpoint::Manifest> {
    let Some(manifest) = weir::core::checkpoint::store::read_latest(state)
        .with_context(|| format!("reading the checkpoints in {}", state.display()))?
    else {
        bail!("{} holds no committed checkpoint yet", state.display());
    };
    if manifest.pipeline != group {
        bail!("{} holds the checkpoints of group `{}`, not `{group}`", state.display(), manifest.pipeline);
    }
    Ok(manifest)
}

/// Per partition of a Kafka topic: the checkpoint's offset, the broker group's
/// committed offset, the end offset and the lag (from the checkpoint).
fn kafka_group_describe(
    group: &str,
    state: &Path,
    brokers: &str,
    topic: &str,
    options: &[(String, String)],
) -> anyhow::Result<String> {
    let manifest = group_manifest(group, state)?;
    let Some(committed) = manifest.offsets.get(topic) else {
        bail!("group `{group}` does not read Kafka topic `{topic}` (its checkpoint has {:?})", manifest.offsets.keys());
    };
    let mut cfg = weir::connectors::kafka::KafkaConfig::new(brokers, group);
    for (k, v) in options {
        cfg = cfg.option(k.clone(), v.clone());
    }
    let src = weir::connectors::kafka::KafkaSource::new(cfg, topic)?;
    let broker = src.broker_committed()?;
    let mut out = format!(
        "group `{group}`: checkpoint epoch {}{}\n{:<16} {:>9} {:>16} {:>16} {:>16} {:>12}\n",
        manifest.epoch,
        if manifest.complete { " (complete)" } else { "" },
        "TOPIC",
        "PARTITION",
        "CHECKPOINT",
        "BROKER",
        "END",
        "LAG"
    );
    for (p, (_, end)) in src.watermarks()? {
        let c = u32::try_from(p).ok().and_then(|p| committed.get(&p)).copied().unwrap_or(0);
        let b = broker.get(&p).map_or("-".to_string(), |o| o.to_string());
        let end = u64::try_from(end).unwrap_or(0);
        out.push_str(&format!("{topic:<16} {p:>9} {c:>16} {b:>16} {end:>16} {:>12}\n", end.saturating_sub(c)));
    }
    Ok(out)
}

/// A table of the group's committed offset, the end offset and the lag of
/// every partition of every log topic it reads.
fn group_describe(group: &str, state: &Path, log_dir: &Path) -> anyhow::Result<String> {
    let manifest = group_manifest(group, state)?;
    let mut out = format!(
        "group `{group}`: checkpoint epoch {}{}\n{:<16} {:>9} {:>16} {:>16} {:>12}\n",
        manifest.epoch,
        if manifest.complete { " (complete)" } else { "" },
        "TOPIC",
        "PARTITION",
        "COMMITTED",
        "END",
        "LAG"
    );
    let mut topics = 0;
    for (source, committed) in &manifest.offsets {
        let Ok(topic) = Topic::open(log_dir, source) else { continue };
        topics += 1;
        for (p, end) in topic.end_offsets()?.into_iter().enumerate() {
            let c = committed.get(&(p as u32)).copied().unwrap_or(0);
            out.push_str(&format!("{source:<16} {p:>9} {c:>16} {end:>16} {:>12}\n", end.saturating_sub(c)));
        }
    }
    if topics == 0 {
        bail!("group `{group}` reads no topic of {}", log_dir.display());
    }
    Ok(out)
}
