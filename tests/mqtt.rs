//! `weir ingest mqtt` against a real mosquitto started by each test: every
//! acknowledged message lands in the log (exactly once in a calm run, at least
//! once when the gateway is SIGKILLed or the broker restarts), with its MQTT
//! topic and its payload bytes as published; over mutual TLS and with a user
//! name and password too, where a gateway without the client certificate or
//! with a wrong password stores nothing; `--key-field` picks partitions by a
//! payload's field, and shared-subscription gateways append to one partition.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use weir::connectors::log::{Topic, partition_for_key};
use weir::connectors::mqtt::record::split_record;
use weir::core::record::Chunk;
use weir::core::source::{PartitionReader, ReadStatus};
use weir_testkit::mqtt::publish_qos1;
use weir_testkit::servers::{Mosquitto, mosquitto_password_file};
use weir_testkit::tls::TestPki;

/// A running `weir ingest mqtt` whose stderr lines are collected.
struct Gateway {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Gateway {
    fn spawn(broker: &str, log_dir: &Path, client_id: &str, extra: &[&str]) -> anyhow::Result<Gateway> {
        Self::spawn_with_env(broker, log_dir, client_id, extra, &[])
    }

    /// [`Gateway::spawn`] with environment variables (`WEIR_MQTT_PASSWORD`
    /// is removed unless given).
    fn spawn_with_env(
        broker: &str,
        log_dir: &Path,
        client_id: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Gateway> {
        let mut child = gateway_command(broker, log_dir, client_id, extra)
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().context("no stderr")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Gateway { child, lines, seen: Vec::new() })
    }

    /// Waits for a stderr line containing `what`.
    fn wait_for(&mut self, what: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(50)) {
                let hit = line.contains(what);
                self.seen.push(line);
                if hit {
                    return Ok(());
                }
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("the gateway exited with {status}: {:?}", self.seen);
            }
        }
        bail!("no `{what}` from the gateway within 20 s: {:?}", self.seen)
    }

    /// Waits for the gateway to exit by itself; its status and stderr lines.
    fn wait_exit(mut self, within: Duration) -> anyhow::Result<(std::process::ExitStatus, Vec<String>)> {
        let deadline = Instant::now() + within;
        loop {
            self.seen.extend(self.lines.try_iter());
            if let Some(status) = self.child.try_wait()? {
                self.read_to_end();
                return Ok((status, std::mem::take(&mut self.seen)));
            }
            if Instant::now() > deadline {
                bail!("the gateway still runs after {within:?}: {:?}", self.seen);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then its exit status and the last stderr line (the statistics).
    fn terminate(mut self) -> anyhow::Result<(std::process::ExitStatus, String)> {
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait()?;
        self.read_to_end();
        Ok((status, self.seen.last().cloned().unwrap_or_default()))
    }

    /// Once it exited: every stderr line left. The reader thread may still be
    /// forwarding the last ones (`try_iter` raced it and missed the
    /// statistics); it ends, disconnecting, at the end of the pipe.
    fn read_to_end(&mut self) {
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
    }

    fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `weir ingest mqtt` into topic `readings`, keyed by the device level unless
/// `extra` gives `--key-field`; `WEIR_MQTT_PASSWORD` from the test's environment removed.
fn gateway_command(broker: &str, log_dir: &Path, client_id: &str, extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_weir"));
    command
        .args(["ingest", "mqtt", "--broker", broker, "--subscribe", "sensors/#", "--client-id", client_id])
        .args(["--topic", "readings"]);
    if !extra.contains(&"--key-field") {
        command.args(["--key-from-topic-level", "1"]);
    }
    command
        .arg("--log-dir")
        .arg(log_dir)
        .args(extra)
        .env("RUST_LOG", "weir_connectors=info")
        .env_remove("WEIR_MQTT_PASSWORD");
    command
}

/// Runs a gateway that must fail before connecting; its stderr.
fn startup_error(broker: &str, log_dir: &Path, extra: &[&str]) -> anyhow::Result<String> {
    let out = gateway_command(broker, log_dir, "gw-bad", extra).stdin(Stdio::null()).output()?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    anyhow::ensure!(!out.status.success(), "started with {extra:?}: {stderr}");
    Ok(stderr)
}

/// A path as a command-line argument.
fn arg(path: &Path) -> anyhow::Result<&str> {
    path.to_str().context("a non-UTF-8 temporary path")
}

/// Every record of topic `readings`: (partition, MQTT topic, payload).
fn stored(log_dir: &Path) -> anyhow::Result<Vec<(u32, String, Vec<u8>)>> {
    let topic = Topic::open(log_dir, "readings")?;
    let mut out = Vec::new();
    for p in 0..topic.partition_count() {
        let mut reader = topic.reader(p, 0, None)?;
        let mut chunk = Chunk::default();
        loop {
            chunk.clear();
            if reader.read(1 << 20, &mut chunk)? != ReadStatus::Data {
                break;
            }
            for (_, record) in chunk.records() {
                let (t, payload) = split_record(record).context("a record without an MQTT topic")?;
                out.push((p, String::from_utf8(t.to_vec())?, payload.to_vec()));
            }
        }
    }
    Ok(out)
}

/// Waits until the log holds at least `n` records; returns them.
fn wait_stored(log_dir: &Path, n: usize, within: Duration) -> anyhow::Result<Vec<(u32, String, Vec<u8>)>> {
    let deadline = Instant::now() + within;
    loop {
        let records = stored(log_dir)?;
        if records.len() >= n || Instant::now() > deadline {
            return Ok(records);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the log holds every message id of `ids` (duplicates allowed).
fn wait_ids(log_dir: &Path, ids: std::ops::Range<usize>, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let counts = counts(&stored(log_dir)?)?;
        if ids.clone().all(|i| counts.contains_key(&i)) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    anyhow::bail!("not every message id was stored within {within:?}")
}

/// Message `i`: on `sensors/dev-{i % 7}/temp`, a JSON payload naming `i`.
fn message(i: usize) -> (String, Vec<u8>) {
    (format!("sensors/dev-{}/temp", i % 7), format!("{{\"i\":{i},\"t\":21.5}}").into_bytes())
}

/// How many times each message id is stored (ids from the JSON payloads).
fn counts(records: &[(u32, String, Vec<u8>)]) -> anyhow::Result<BTreeMap<usize, usize>> {
    let mut counts = BTreeMap::new();
    for (_, _, payload) in records {
        let v: serde_json::Value = serde_json::from_slice(payload)?;
        let i = v["i"].as_u64().context("no id")? as usize;
        *counts.entry(i).or_insert(0) += 1;
    }
    Ok(counts)
}

fn setup(partitions: u32) -> anyhow::Result<(Mosquitto, tempfile::TempDir)> {
    let broker = Mosquitto::start()?;
    let dir = tempfile::tempdir()?;
    Topic::create(dir.path(), "readings", partitions)?;
    Ok((broker, dir))
}

fn log_dir(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().to_path_buf()
}

#[test]
fn every_message_lands_once_with_its_topic_and_exact_payload() -> anyhow::Result<()> {
    let (broker, dir) = setup(3)?;
    let missing = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["ingest", "mqtt", "--broker", &broker.broker(), "--subscribe", "x", "--client-id", "c"])
        .args(["--topic", "nope", "--log-dir"])
        .arg(dir.path())
        .output()?;
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no topic `nope`"), "{missing:?}");

    let mut gw = Gateway::spawn(&broker.broker(), dir.path(), "gw-once", &[])?;
    gw.wait_for("subscribed")?;
    let n = 2000;
    let mut messages: Vec<_> = (0..n).map(message).collect();
    // A binary payload with NULs and no key level: stored round-robin, bytes intact.
    messages.push(("sensors".to_owned(), b"\x00\xff{\x00}\r\n".to_vec()));
    let acked = publish_qos1(broker.port, "pub-once", messages, Duration::ZERO, Duration::from_secs(60))?;
    assert_eq!(acked.len(), n + 1);
    let records = wait_stored(dir.path(), n + 1, Duration::from_secs(30))?;
    let (status, stats) = gw.terminate()?;
    assert!(status.success(), "{status}: {stats}");
    assert!(stats.contains(&format!("stored {}", n + 1)), "{stats}");

    let records_after = stored(&log_dir(&dir))?;
    assert_eq!(records_after.len(), n + 1, "exactly once: no duplicates in a calm run");
    let binary: Vec<_> = records.iter().filter(|(_, t, _)| t == "sensors").collect();
    assert_eq!(binary.len(), 1);
    assert_eq!(binary[0].2, b"\x00\xff{\x00}\r\n");
    let json: Vec<_> = records.iter().filter(|(_, t, _)| t != "sensors").cloned().collect();
    let counts = counts(&json)?;
    assert_eq!(counts.len(), n);
    assert!(counts.values().all(|&c| c == 1));
    for (p, t, payload) in &json {
        let v: serde_json::Value = serde_json::from_slice(payload)?;
        let i = v["i"].as_u64().context("id")? as usize;
        assert_eq!((t.clone(), payload.clone()), message(i));
        let device = t.split('/').nth(1).context("level")?;
        assert_eq!(*p, partition_for_key(device.as_bytes(), 3), "{t}");
    }
    Ok(())
}

#[test]
fn a_killed_gateway_restarted_with_its_client_id_loses_no_acknowledged_message() -> anyhow::Result<()> {
    let (broker, dir) = setup(2)?;
    let mut gw = Gateway::spawn(&broker.broker(), dir.path(), "gw-kill", &[])?;
    gw.wait_for("subscribed")?;
    let n = 3000;
    let port = broker.port;
    let publisher = std::thread::spawn(move || {
        publish_qos1(
            port,
            "pub-kill",
            (0..n).map(message).collect(),
            Duration::from_micros(500),
            Duration::from_secs(120),
        )
    });
    wait_stored(dir.path(), n / 4, Duration::from_secs(30))?;
    gw.kill()?;
    let at_kill = stored(dir.path())?.len();
    // Down for a moment while the publisher goes on: the broker queues for the session.
    std::thread::sleep(Duration::from_millis(300));
    let mut gw = Gateway::spawn(&broker.broker(), dir.path(), "gw-kill", &[])?;
    gw.wait_for("session present: true")?;
    let acked = publisher.join().map_err(|_| anyhow::anyhow!("publisher panicked"))??;
    assert_eq!(acked.len(), n);
    wait_ids(dir.path(), 0..n, Duration::from_secs(30))?;
    let (status, stats) = gw.terminate()?;
    assert!(status.success(), "{status}: {stats}");
    let records = stored(dir.path())?;
    let counts = counts(&records)?;
    let missing: Vec<_> = acked.iter().filter(|i| !counts.contains_key(i)).collect();
    assert!(missing.is_empty(), "lost {} acknowledged messages: {missing:?}", missing.len());
    let duplicates: usize = counts.values().map(|c| c - 1).sum();
    println!("killed at {at_kill} stored records; {} records for {n} messages: {duplicates} duplicates", records.len());
    Ok(())
}

#[test]
fn the_gateway_reconnects_after_a_broker_restart_and_loses_nothing() -> anyhow::Result<()> {
    let (mut broker, dir) = setup(2)?;
    let mut gw = Gateway::spawn(&broker.broker(), dir.path(), "gw-restart", &[])?;
    gw.wait_for("subscribed")?;
    let first =
        publish_qos1(broker.port, "pub-r1", (0..500).map(message).collect(), Duration::ZERO, Duration::from_secs(60))?;
    assert_eq!(first.len(), 500);
    broker.stop();
    // The outage under test: the gateway sees the broker gone and retries.
    std::thread::sleep(Duration::from_millis(500));
    broker.resume()?;
    gw.wait_for("session present: true")?;
    let second = publish_qos1(
        broker.port,
        "pub-r2",
        (500..1000).map(message).collect(),
        Duration::ZERO,
        Duration::from_secs(60),
    )?;
    assert_eq!(second.len(), 500);
    wait_ids(dir.path(), 0..1000, Duration::from_secs(30))?;
    let (status, stats) = gw.terminate()?;
    assert!(status.success(), "{status}: {stats}");
    assert!(stats.contains("2 connections"), "{stats}");
    let records = stored(dir.path())?;
    let counts = counts(&records)?;
    let missing: Vec<_> = (0..1000).filter(|i| !counts.contains_key(i)).collect();
    assert!(missing.is_empty(), "lost {} messages: {missing:?}", missing.len());
    let duplicates: usize = counts.values().map(|c| c - 1).sum();
    println!("broker restart: {} records for 1000 messages, {duplicates} duplicates", records.len());
    Ok(())
}

/// `--key-field device`: a JSON payload with a string `device` goes to the
/// partition that value hashes to (all of one device in one partition, whatever
/// its MQTT topic); one without a usable key (no such field, a null, not JSON)
/// is stored too, round-robin over the partitions.
#[test]
fn a_key_field_picks_the_partition_and_messages_without_it_go_round_robin() -> anyhow::Result<()> {
    let (broker, dir) = setup(3)?;
    let mut gw = Gateway::spawn(&broker.broker(), dir.path(), "gw-field", &["--key-field", "device"])?;
    gw.wait_for("subscribed")?;
    let n = 600;
    // One MQTT topic for all: its levels cannot be what picks the partition.
    let messages: Vec<(String, Vec<u8>)> = (0..n)
        .map(|i| {
            let payload = match i % 6 {
                3 => format!("{{\"i\":{i},\"t\":1.5}}"),
                5 => format!("{{\"device\":null,\"i\":{i}}}"),
                _ => format!("{{\"t\":2.5,\"device\":\"dev-{}\",\"i\":{i}}}", i % 5),
            };
            ("sensors/all/temp".to_owned(), payload.into_bytes())
        })
        .chain([("sensors/all/raw".to_owned(), b"not json".to_vec())])
        .collect();
    let acked = publish_qos1(broker.port, "pub-field", messages, Duration::ZERO, Duration::from_secs(60))?;
    assert_eq!(acked.len(), n + 1);
    let records = wait_stored(dir.path(), n + 1, Duration::from_secs(30))?;
    let (status, stats) = gw.terminate()?;
    assert!(status.success(), "{status}: {stats}");
    let unkeyed = n / 3 + 1;
    assert!(stats.contains(&format!("stored {} messages ({unkeyed} without a key)", n + 1)), "{stats}");
    assert_eq!(records.len(), n + 1, "exactly once: {stats}");

    let mut per_partition = [0usize; 3];
    let mut device_partitions = BTreeMap::new();
    for (p, _, payload) in &records {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload) else {
            assert_eq!(payload, b"not json");
            per_partition[*p as usize] += 1;
            continue;
        };
        match v["device"].as_str() {
            Some(device) => {
                assert_eq!(*p, partition_for_key(device.as_bytes(), 3), "{v}");
                device_partitions.insert(device.to_owned(), *p);
            }
            None => per_partition[*p as usize] += 1,
        }
    }
    assert_eq!(device_partitions.len(), 5);
    let used: std::collections::BTreeSet<_> = device_partitions.values().collect();
    assert!(used.len() > 1, "the devices' keys spread over partitions: {device_partitions:?}");
    assert_eq!(per_partition.iter().sum::<usize>(), unkeyed);
    let (min, max) = (per_partition.iter().min(), per_partition.iter().max());
    assert!(max.zip(min).is_some_and(|(max, min)| max - min <= 1), "unkeyed messages by partition: {per_partition:?}");
    Ok(())
}

/// Two gateways of one shared subscription split the messages, and both
/// append to one partition: every message's device hashes to the same
/// partition, so with both storing a share that partition holds appends from
/// both (the lock is taken per batch, not for the run).
#[test]
fn two_gateways_of_a_shared_subscription_split_messages_and_share_partitions() -> anyhow::Result<()> {
    let (broker, dir) = setup(2)?;
    let mut a = Gateway::spawn(&broker.broker(), dir.path(), "gw-a", &["--group", "g"])?;
    let mut b = Gateway::spawn(&broker.broker(), dir.path(), "gw-b", &["--group", "g"])?;
    a.wait_for("subscribed")?;
    b.wait_for("subscribed")?;
    let n = 2000;
    let device = |t: &str| t.split('/').nth(1).map(|d| partition_for_key(d.as_bytes(), 2));
    let shared = device(&message(0).0);
    let (ids, messages): (Vec<usize>, Vec<_>) =
        (0..).map(|i| (i, message(i))).filter(|(_, (t, _))| device(t) == shared).take(n).unzip();
    let acked = publish_qos1(broker.port, "pub-group", messages, Duration::ZERO, Duration::from_secs(60))?;
    assert_eq!(acked.len(), n);
    wait_stored(dir.path(), n, Duration::from_secs(30))?;
    let (status_a, stats_a) = a.terminate()?;
    let (status_b, stats_b) = b.terminate()?;
    assert!(status_a.success() && status_b.success(), "{stats_a} / {stats_b}");
    let stored_by = |stats: &str| -> anyhow::Result<usize> {
        Ok(stats.strip_prefix("stored ").and_then(|s| s.split(' ').next()).context("stats")?.parse()?)
    };
    let (sa, sb) = (stored_by(&stats_a)?, stored_by(&stats_b)?);
    assert!(sa > 0 && sb > 0, "both gateways store a share: {stats_a} / {stats_b}");
    let records = stored(dir.path())?;
    assert_eq!(records.len(), n, "{stats_a} / {stats_b}");
    assert_eq!(sa + sb, n);
    // Every record in the one partition: it holds appends from both gateways.
    assert!(records.iter().all(|(p, _, _)| Some(*p) == shared), "records outside partition {shared:?}");
    let counts = counts(&records)?;
    assert!(counts.len() == n && ids.iter().all(|i| counts.get(i) == Some(&1)));
    println!("group: gateway a stored {sa}, b stored {sb}, all in partition {shared:?}");
    Ok(())
}

#[test]
fn mutual_tls_ingests_and_a_gateway_without_a_client_certificate_is_refused() -> anyhow::Result<()> {
    let certs = tempfile::tempdir()?;
    let pki = TestPki::generate(certs.path())?;
    let (ca, cert, key) = (arg(&pki.ca)?, arg(&pki.client_cert)?, arg(&pki.client_key)?);
    // The publisher uses the plain listener; the gateway the TLS one.
    let broker = Mosquitto::start_with_listener(&format!(
        "allow_anonymous true\ncafile {ca}\ncertfile {}\nkeyfile {}\nrequire_certificate true",
        pki.server_cert.display(),
        pki.server_key.display(),
    ))?;
    let tls_broker = broker.second_broker().context("no TLS listener")?;
    let dir = tempfile::tempdir()?;
    Topic::create(dir.path(), "readings", 2)?;

    // Options that do not go together, files that are not what they should be:
    // errors at start naming the option (and the file).
    let e = startup_error(&tls_broker, dir.path(), &["--ca", ca, "--cert", cert])?;
    assert!(e.contains("`--cert` needs `--key`"), "{e}");
    let e = startup_error(&tls_broker, dir.path(), &["--ca", ca, "--key", key])?;
    assert!(e.contains("`--key` needs `--cert`"), "{e}");
    let e = startup_error(&tls_broker, dir.path(), &["--ca", ca, "--cert", cert, "--key", cert])?;
    assert!(e.contains("`key`") && e.contains(cert) && e.contains("no PEM private key"), "{e}");
    let e = startup_error(&tls_broker, dir.path(), &["--ca", key, "--cert", cert, "--key", key])?;
    assert!(e.contains("`ca`") && e.contains(key) && e.contains("no PEM certificate"), "{e}");
    let missing = certs.path().join("missing.pem");
    let e = startup_error(&tls_broker, dir.path(), &["--ca", ca, "--cert", arg(&missing)?, "--key", key])?;
    assert!(e.contains("`cert`") && e.contains("missing.pem") && e.contains("cannot be read"), "{e}");

    let mtls = ["--ca", ca, "--cert", cert, "--key", key];
    let mut gw = Gateway::spawn(&tls_broker, dir.path(), "gw-tls", &mtls)?;
    gw.wait_for("subscribed")?;
    let acked = publish_qos1(
        broker.port,
        "pub-tls1",
        (0..200).map(message).collect(),
        Duration::ZERO,
        Duration::from_secs(60),
    )?;
    assert_eq!(acked.len(), 200);
    wait_ids(dir.path(), 0..200, Duration::from_secs(30))?;
    let (status, stats) = gw.terminate()?;
    assert!(status.success() && stats.contains("stored 200"), "{status}: {stats}");

    // Queued for the session while it is away...
    let acked = publish_qos1(
        broker.port,
        "pub-tls2",
        (200..300).map(message).collect(),
        Duration::ZERO,
        Duration::from_secs(60),
    )?;
    assert_eq!(acked.len(), 100);
    // ...but not for a gateway with the same client id and no client
    // certificate: the broker refuses it, it retries, it stores nothing.
    let mut certless = Gateway::spawn(&tls_broker, dir.path(), "gw-tls", &["--ca", ca])?;
    certless.wait_for("MQTT connection")?;
    certless.wait_for("MQTT connection")?;
    assert!(!certless.seen.iter().any(|l| l.contains("connected to the MQTT broker")), "{:?}", certless.seen);
    println!("refused without a client certificate: {:?}", certless.seen.last());
    certless.kill()?;
    // A broker certificate not signed by the CA given is refused by the gateway.
    let other = tempfile::tempdir()?;
    let other_ca = TestPki::generate(other.path())?.ca;
    let mut untrusting =
        Gateway::spawn(&tls_broker, dir.path(), "gw-tls", &["--ca", arg(&other_ca)?, "--cert", cert, "--key", key])?;
    untrusting.wait_for("invalid peer certificate")?;
    untrusting.kill()?;
    assert_eq!(stored(dir.path())?.len(), 200);

    let mut gw = Gateway::spawn(&tls_broker, dir.path(), "gw-tls", &mtls)?;
    gw.wait_for("session present: true")?;
    wait_ids(dir.path(), 0..300, Duration::from_secs(30))?;
    let (status, stats) = gw.terminate()?;
    assert!(status.success() && stats.contains("stored 100"), "{status}: {stats}");
    let counts = counts(&stored(dir.path())?)?;
    assert!((0..300).all(|i| counts.get(&i) == Some(&1)), "each message once");
    Ok(())
}

#[test]
fn a_user_name_and_password_are_accepted_and_a_wrong_password_is_refused() -> anyhow::Result<()> {
    let secrets = tempfile::tempdir()?;
    let passwd = secrets.path().join("passwd");
    mosquitto_password_file(&passwd, "weir", "s3cret word")?;
    let broker = Mosquitto::start_with_listener(&format!("allow_anonymous false\npassword_file {}", passwd.display()))?;
    let auth_broker = broker.second_broker().context("no password listener")?;
    let dir = tempfile::tempdir()?;
    Topic::create(dir.path(), "readings", 2)?;
    let right = secrets.path().join("right");
    std::fs::write(&right, "s3cret word\n")?;
    let wrong = secrets.path().join("wrong");
    std::fs::write(&wrong, "guess\n")?;

    let e = startup_error(&auth_broker, dir.path(), &["--password-file", arg(&right)?])?;
    assert!(e.contains("needs a user name (`--username`)"), "{e}");
    let e = startup_error(&auth_broker, dir.path(), &["--username", "weir", "--password-file", "/nonexistent/pw"])?;
    assert!(e.contains("password-file") && e.contains("/nonexistent/pw"), "{e}");

    // Refused credentials end the run: the password is read once, retrying cannot help.
    for extra in [&["--username", "weir", "--password-file", arg(&wrong)?][..], &[]] {
        let gw = Gateway::spawn(&auth_broker, dir.path(), "gw-auth", extra)?;
        let (status, lines) = gw.wait_exit(Duration::from_secs(20))?;
        assert!(!status.success(), "{lines:?}");
        assert!(lines.iter().any(|l| l.contains("the broker refused the connection")), "{extra:?}: {lines:?}");
        println!("refused with {extra:?}: {:?}", lines.iter().find(|l| l.contains("refused")));
    }
    let gw = Gateway::spawn_with_env(
        &auth_broker,
        dir.path(),
        "gw-auth",
        &["--username", "weir"],
        &[("WEIR_MQTT_PASSWORD", "guess")],
    )?;
    let (status, lines) = gw.wait_exit(Duration::from_secs(20))?;
    assert!(!status.success() && lines.iter().any(|l| l.contains("refused the connection")), "{lines:?}");
    assert!(stored(dir.path())?.is_empty());

    let mut gw =
        Gateway::spawn(&auth_broker, dir.path(), "gw-auth", &["--username", "weir", "--password-file", arg(&right)?])?;
    gw.wait_for("subscribed")?;
    let acked = publish_qos1(
        broker.port,
        "pub-auth",
        (0..100).map(message).collect(),
        Duration::ZERO,
        Duration::from_secs(60),
    )?;
    assert_eq!(acked.len(), 100);
    wait_ids(dir.path(), 0..100, Duration::from_secs(30))?;
    let (status, stats) = gw.terminate()?;
    assert!(status.success() && stats.contains("stored 100"), "{status}: {stats}");

    // The password from the environment instead of a file.
    let mut gw = Gateway::spawn_with_env(
        &auth_broker,
        dir.path(),
        "gw-auth",
        &["--username", "weir"],
        &[("WEIR_MQTT_PASSWORD", "s3cret word")],
    )?;
    gw.wait_for("session present: true")?;
    let (status, stats) = gw.terminate()?;
    assert!(status.success(), "{status}: {stats}");
    assert_eq!(stored(dir.path())?.len(), 100);
    Ok(())
}

/// The whole MQTT path: readings published to mosquitto, stored by the
/// gateway, aggregated by the sensor example (`--record-format mqtt`) from the log,
/// give exactly the reference's rows.
#[test]
fn gateway_records_feed_the_sensor_pipeline() -> anyhow::Result<()> {
    let (broker, dir) = setup(3)?;
    let log = dir.path().join("log");
    Topic::create(&log, "readings", 3)?;
    let mut gw = Gateway::spawn(&broker.broker(), &log, "gw-pipeline", &[])?;
    gw.wait_for("subscribed")?;
    let mut data = Vec::new();
    weir_testkit::sensor::generate(3_000, 21, 50, &mut data)?;
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
    let messages = weir_testkit::mqtt::sensor_messages(&data);
    let acked = publish_qos1(broker.port, "pub-pipeline", messages, Duration::ZERO, Duration::from_secs(60))?;
    assert_eq!(acked.len(), lines.len());
    wait_stored(&log, lines.len(), Duration::from_secs(30))?;
    let (status, stats) = gw.terminate()?;
    assert!(status.success(), "{status}: {stats}");

    let out = dir.path().join("out");
    let run = weir_testkit::sensor::example()?
        .args(["--topic", "readings", "--record-format", "mqtt", "--bounded", "--workers", "2"])
        .arg("--log-dir")
        .arg(&log)
        .arg("--output")
        .arg(&out)
        .arg("--dead-letter")
        .arg(dir.path().join("dead"))
        .output()?;
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let (expected, malformed) = weir_testkit::sensor::reference(&data);
    support::compare(&expected, &support::read_rows(&out)?)?;
    let dead = support::read_dead_letters(&dir.path().join("dead"))?;
    assert_eq!(dead.len() as u64, malformed, "dead letters");
    Ok(())
}
