//! MQTT gateway throughput against a local mosquitto.
//!
//! `cargo bench --bench mqtt` (needs mosquitto: `bash scripts/tools.sh`
//! installs it): starts mosquitto on 127.0.0.1, then runs `WEIR_BENCH_RUNS`
//! rounds (default 3) of, interleaved:
//!
//! - **plain subscriber**: `mosquitto_sub` (the broker's own C client, in a
//!   process of its own like the gateway) at QoS 1 with the gateway's receive
//!   maximum, one line per message to a pipe, while one publisher sends
//!   `WEIR_MQTT_EVENTS` sensor readings (default 200,000, the workload's
//!   generator) at QoS 1 to `sensors/DEVICE`: the broker's and client's own speed;
//! - **weir ingest mqtt**: the gateway (the release binary) subscribed to
//!   `sensors/#` with the key from topic level 1, appending to a 4-partition
//!   log topic and acknowledging each batch after its fsync, with the same
//!   publisher and messages: time until every message is in the log.
//!
//! It prints the medians (messages/s) and the time ratio. Both sides see the
//! same messages from the same broker process in the same round.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use weir::connectors::log::Topic;
use weir_testkit::mqtt::publish_qos1;
use weir_testkit::servers::Mosquitto;

fn main() -> anyhow::Result<()> {
    // `cargo test --all-targets` runs bench targets without `--bench`: nothing to check here.
    if !std::env::args().any(|a| a == "--bench") {
        return Ok(());
    }
    let events: u64 = std::env::var("WEIR_MQTT_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    let runs: usize = std::env::var("WEIR_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(3).max(1);
    let broker = Mosquitto::start()?;
    let mut data = Vec::new();
    weir_testkit::sensor::generate(events, 42, 10_000, &mut data)?;
    let messages = weir_testkit::mqtt::sensor_messages(&data);
    let n = messages.len();
    let bytes: usize = messages.iter().map(|m| m.1.len()).sum();
    println!("== {n} messages ({:.1} MB of payload), QoS 1, mosquitto on 127.0.0.1", bytes as f64 / 1e6);

    let (mut plain, mut gateway) = (Vec::new(), Vec::new());
    for round in 0..runs {
        // Plain subscriber: mosquitto's own client in a process of its own,
        // QoS 1 with the gateway's receive maximum, one line per message to a
        // pipe (stdbuf: line-buffered). Ready once it prints a probe message.
        let mut sub = Command::new("stdbuf")
            .args(["-oL", "mosquitto_sub", "-h", "127.0.0.1", "-p", &broker.port.to_string(), "-t", "sensors/#"])
            .args(["-q", "1", "-V", "5", "-D", "connect", "receive-maximum", "1000", "-i", &format!("plain-{round}")])
            .stdout(Stdio::piped())
            .spawn()
            .context("mosquitto_sub (Debian's mosquitto-clients; scripts/tools.sh installs it)")?;
        let out = sub.stdout.take().context("no stdout")?;
        let (probes, received) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (pc, rc) = (probes.clone(), received.clone());
        let drain = std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let counter = if line == "probe" { &pc } else { &rc };
                counter.fetch_add(1, Ordering::SeqCst);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while probes.load(Ordering::SeqCst) == 0 {
            if Instant::now() > deadline {
                bail!("mosquitto_sub did not subscribe within 30 s");
            }
            let probe = vec![("sensors/probe".to_string(), b"probe".to_vec())];
            publish_qos1(broker.port, &format!("probe-{round}"), probe, Duration::ZERO, Duration::from_secs(10))?;
            let wait = Instant::now() + Duration::from_millis(100);
            while probes.load(Ordering::SeqCst) == 0 && Instant::now() < wait {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        let started = Instant::now();
        publish_qos1(
            broker.port,
            &format!("pub-a{round}"),
            messages.clone(),
            Duration::ZERO,
            Duration::from_secs(600),
        )?;
        while received.load(Ordering::SeqCst) < n {
            if Instant::now() > started + Duration::from_secs(600) {
                bail!("mosquitto_sub received {} of {n}", received.load(Ordering::SeqCst));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let p = started.elapsed().as_secs_f64();
        sub.kill()?;
        sub.wait()?;
        let _ = drain.join();
        plain.push(p);

        // The gateway.
        let dir = tempfile::tempdir()?;
        let topic = Topic::create(dir.path(), "readings", 4)?;
        let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["ingest", "mqtt", "--broker", &broker.broker(), "--subscribe", "sensors/#"])
            .args(["--client-id", &format!("gw-{round}"), "--topic", "readings", "--key-from-topic-level", "1"])
            .arg("--log-dir")
            .arg(dir.path())
            .env("RUST_LOG", "weir_connectors=info")
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().context("no stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        loop {
            match lines.next() {
                Some(line) => {
                    if line?.contains("subscribed") {
                        break;
                    }
                }
                None => bail!("the gateway exited before subscribing"),
            }
        }
        std::thread::spawn(move || for _ in lines {});
        let started = Instant::now();
        publish_qos1(
            broker.port,
            &format!("pub-b{round}"),
            messages.clone(),
            Duration::ZERO,
            Duration::from_secs(600),
        )?;
        let deadline = Instant::now() + Duration::from_secs(600);
        while stored(&topic)? < n {
            if Instant::now() > deadline {
                bail!("the gateway stored {} of {n} messages", stored(&topic)?);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let g = started.elapsed().as_secs_f64();
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait()?;
        gateway.push(g);
        println!("round {}: plain subscriber {p:.3} s, weir ingest mqtt {g:.3} s", round + 1);
    }
    let (mp, mg) = (median(&plain), median(&gateway));
    println!("\n| MQTT QoS 1, one publisher | median s | messages/s | MB/s |");
    println!("|---|---|---|---|");
    println!("| plain mosquitto_sub, QoS 1 | {mp:.3} | {:.0} | {:.1} |", n as f64 / mp, bytes as f64 / 1e6 / mp);
    println!(
        "| weir ingest mqtt (fsynced log, 4 partitions) | {mg:.3} | {:.0} | {:.1} |",
        n as f64 / mg,
        bytes as f64 / 1e6 / mg
    );
    println!("\ngateway / plain time ratio: {:.2} (runs: plain {plain:.3?}, gateway {gateway:.3?})", mg / mp);
    Ok(())
}

/// Records in the topic (all partitions): the sum of the end offsets.
fn stored(topic: &Topic) -> anyhow::Result<usize> {
    Ok(topic.end_offsets()?.iter().sum::<u64>() as usize)
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
