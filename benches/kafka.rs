//! Kafka source throughput against a local broker.
//!
//! `cargo bench --bench kafka` (needs tansu: `bash scripts/tools.sh` installs it):
//! starts a tansu broker on 127.0.0.1 (sqlite storage, a scratch directory),
//! creates topic `sensors` with 4 partitions, produces `WEIR_KAFKA_EVENTS`
//! sensor readings (default 1,000,000; the workload's generator, seed 42) keyed
//! by device, then runs `WEIR_BENCH_RUNS` rounds (default 3) of, interleaved:
//!
//! - **plain rdkafka**: two threads, each a `BaseConsumer` assigned two
//!   partitions from offset 0, polling until every partition reports EOF and
//!   counting messages and payload bytes: the client's own speed on this broker;
//! - **Weir, 2 workers**: the sensor-window pipeline (`weir_testkit::sensor`,
//!   bounded: decode, filter, one-minute windows, Parquet, dead letters) on the
//!   same topic, as a new consumer group each run (so it starts at the earliest offset).
//!
//! It prints the medians (messages/s, MB/s of payload) and the ratio. Both sides
//! read the same records from the same broker process in the same round.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use weir::connectors::kafka::KafkaConfig;
use weir::prelude::*;
use weir_testkit::kafka::{create_topic, produce};
use weir_testkit::sensor::{self, Input};
use weir_testkit::servers::Tansu;

const PARTITIONS: i32 = 4;

fn main() -> anyhow::Result<()> {
    // `cargo test --all-targets` runs bench targets without `--bench`: nothing to check here.
    if !std::env::args().any(|a| a == "--bench") {
        return Ok(());
    }
    let events: u64 = std::env::var("WEIR_KAFKA_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let runs: usize = std::env::var("WEIR_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(3).max(1);
    let broker = Tansu::start()?;
    let brokers = broker.brokers();
    create_topic(&brokers, "sensors", PARTITIONS)?;
    let mut data = Vec::new();
    sensor::generate(events, 42, 10_000, &mut data)?;
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
    let bytes: usize = lines.iter().map(|l| l.len()).sum();
    let started = Instant::now();
    produce(&brokers, "sensors", &lines)?;
    let produce_s = started.elapsed().as_secs_f64();
    println!(
        "== produced {} messages ({:.1} MB) to tansu in {produce_s:.2} s ({:.0} msg/s, idempotent producer)",
        lines.len(),
        bytes as f64 / 1e6,
        lines.len() as f64 / produce_s
    );

    let mut plain = Vec::new();
    let mut weir_runs = Vec::new();
    for round in 0..runs {
        let (n, b, s) = plain_read(&brokers)?;
        anyhow::ensure!(n == lines.len() as u64, "plain consumer read {n} messages, expected {}", lines.len());
        plain.push(s);
        let dir = tempfile::tempdir()?;
        let input = Input::Kafka {
            config: KafkaConfig::new(brokers.clone(), format!("bench-{round}")),
            topic: "sensors".into(),
        };
        let (out, dead) = (dir.path().join("out"), dir.path().join("dead"));
        let started = Instant::now();
        let summary = Pipeline::new(format!("bench-{round}"))
            .workers(2)
            .bounded(true)
            .run(move |p| sensor::build(p, &input, &out, &dead))?;
        let s = started.elapsed().as_secs_f64();
        anyhow::ensure!(
            summary.counter("records_in") == lines.len() as u64,
            "weir read {}",
            summary.counter("records_in")
        );
        weir_runs.push(s);
        println!(
            "round {}: plain rdkafka {s_plain:.3} s ({n} msgs, {b} bytes), weir {s:.3} s",
            round + 1,
            s_plain = plain[round]
        );
    }
    let (mp, mw) = (median(&plain), median(&weir_runs));
    let n = lines.len() as f64;
    println!("\n| reader (2 threads / workers, 4 partitions) | median s | messages/s | MB/s |");
    println!("|---|---|---|---|");
    println!("| plain rdkafka consumer, read only | {mp:.3} | {:.0} | {:.1} |", n / mp, bytes as f64 / 1e6 / mp);
    println!("| Weir sensor pipeline, end to end | {mw:.3} | {:.0} | {:.1} |", n / mw, bytes as f64 / 1e6 / mw);
    println!("\nweir / plain time ratio: {:.2} (runs: plain {plain:.3?}, weir {weir_runs:.3?})", mw / mp);
    Ok(())
}

/// Reads every partition to its end with two consumers on two threads.
fn plain_read(brokers: &str) -> anyhow::Result<(u64, u64, f64)> {
    let started = Instant::now();
    let handles: Vec<_> = (0..2)
        .map(|t| {
            let brokers = brokers.to_string();
            std::thread::spawn(move || -> anyhow::Result<(u64, u64)> {
                let c: BaseConsumer = ClientConfig::new()
                    .set("bootstrap.servers", &brokers)
                    .set("group.id", "plain")
                    .set("enable.auto.commit", "false")
                    .set("enable.partition.eof", "true")
                    .set("fetch.wait.max.ms", "50")
                    .create()?;
                let mut tpl = TopicPartitionList::new();
                let mine: Vec<i32> = (0..PARTITIONS).filter(|p| p % 2 == t).collect();
                for &p in &mine {
                    tpl.add_partition_offset("sensors", p, Offset::Beginning)?;
                }
                c.assign(&tpl)?;
                let mut eof = BTreeMap::new();
                let (mut n, mut b) = (0u64, 0u64);
                let deadline = Instant::now() + Duration::from_secs(600);
                while eof.len() < mine.len() && Instant::now() < deadline {
                    match c.poll(Duration::from_millis(100)) {
                        Some(Ok(m)) => {
                            n += 1;
                            b += m.payload().map_or(0, |p| p.len() as u64);
                        }
                        Some(Err(KafkaError::PartitionEOF(p))) => {
                            eof.insert(p, ());
                        }
                        Some(Err(e)) => anyhow::bail!("plain consumer: {e}"),
                        None => {}
                    }
                }
                Ok((n, b))
            })
        })
        .collect();
    let (mut n, mut b) = (0, 0);
    for h in handles {
        let (hn, hb) = h.join().map_err(|_| anyhow::anyhow!("reader thread panicked"))??;
        n += hn;
        b += hb;
    }
    Ok((n, b, started.elapsed().as_secs_f64()))
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
