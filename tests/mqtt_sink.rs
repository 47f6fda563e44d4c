//! The MQTT sink against a real mosquitto started by the test: the sensor
//! pipeline's window rows, published after each checkpoint commits, reach a
//! subscriber at `results/DEVICE`, each row once in a run without failures
//! and exactly the reference's rows; an unreachable broker is an error at
//! startup.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::ensure;
use weir::connectors::mqtt::MqttTopic;
use weir::prelude::*;
use weir_testkit::mqtt::Subscriber;
use weir_testkit::sensor::{self, Input};
use weir_testkit::servers::Mosquitto;

#[test]
fn window_rows_are_published_after_each_commit() -> anyhow::Result<()> {
    let broker = Mosquitto::start()?;
    let subscriber = Subscriber::start(broker.port, "watcher", "results/#")?;
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("in.jsonl");
    let mut data = Vec::new();
    sensor::generate(10_000, 9, 100, &mut data)?;
    std::fs::write(&input, &data)?;
    let (expected, _) = sensor::reference(&data);

    let mut outputs = sensor::Outputs::dirs(&dir.path().join("out"), &dir.path().join("dead"));
    outputs.mqtt_results = Some(MqttTopic::new(&broker.broker(), "results", "weir-test-results")?);
    let (i, o) = (Input::File(input.clone()), outputs.clone());
    let summary = Pipeline::new("mqtt-sink")
        .workers(2)
        .state(dir.path().join("state"))
        .epoch_records(250, 2)
        // Sources stay within 2 epochs of the commit, so a busy machine
        // cannot fold the run's checkpoints into one or two commits.
        .epochs_in_flight(2)
        .bounded(true)
        .run(move |p| sensor::build_to(p, &i, &o))?;
    ensure!(summary.commits.count > 2, "{} commits", summary.commits.count);

    // The run returned after the broker acknowledged every message.
    let got = subscriber.wait_for(expected.len(), Duration::from_secs(30))?;
    let mut rows = BTreeMap::new();
    for (topic, payload) in &got {
        let row: sensor::WindowRow = serde_json::from_slice(payload)?;
        ensure!(topic == &format!("results/{}", row.device), "row of {} on {topic}", row.device);
        ensure!(rows.insert((row.device.to_string(), row.window_start), row).is_none(), "a row came twice");
    }
    support::compare(&expected, &rows)?;
    ensure!(got.len() == expected.len(), "{} messages for {} rows", got.len(), expected.len());
    // Published is what the Parquet output holds too.
    support::compare(&expected, &support::read_rows(&dir.path().join("out"))?)?;
    Ok(())
}

/// AWS IoT Core's way: mutual TLS. The broker's TLS listener requires a
/// client certificate signed by the test's own CA; the subscriber watches on
/// the plain listener.
#[test]
fn rows_are_published_over_mutual_tls() -> anyhow::Result<()> {
    let certs = tempfile::tempdir()?;
    let pki = weir_testkit::tls::TestPki::generate(certs.path())?;
    let broker = Mosquitto::start_with_listener(&format!(
        "allow_anonymous true\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true",
        pki.ca.display(),
        pki.server_cert.display(),
        pki.server_key.display(),
    ))?;
    let tls_broker = broker.second_broker().ok_or_else(|| anyhow::anyhow!("no TLS listener"))?;
    let subscriber = Subscriber::start(broker.port, "watcher", "alerts/#")?;
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("in.jsonl");
    let mut data = Vec::new();
    sensor::generate(2_000, 4, 20, &mut data)?;
    std::fs::write(&input, &data)?;
    let (expected, _) = sensor::reference(&data);
    let mut dest = MqttTopic::new(&tls_broker, "alerts", "weir-tls-sink")?;
    dest.tls = weir::connectors::mqtt::GatewayTls {
        ca: Some(pki.ca.clone()),
        cert: Some(pki.client_cert.clone()),
        key: Some(pki.client_key.clone()),
    };
    let mut outputs = sensor::Outputs::dirs(&dir.path().join("out"), &dir.path().join("dead"));
    outputs.mqtt_results = Some(dest.clone());
    let (i, o) = (Input::File(input.clone()), outputs.clone());
    Pipeline::new("tls-sink").workers(2).bounded(true).run(move |p| sensor::build_to(p, &i, &o))?;
    let got = subscriber.wait_for(expected.len(), Duration::from_secs(30))?;
    ensure!(got.len() == expected.len(), "{} messages for {} rows", got.len(), expected.len());

    // Without the client certificate the broker refuses the connection: an error at startup.
    dest.tls.cert = None;
    dest.tls.key = None;
    let mut outputs = sensor::Outputs::dirs(&dir.path().join("out2"), &dir.path().join("dead2"));
    outputs.mqtt_results = Some(dest);
    let (i, o) = (Input::File(input), outputs);
    let err = Pipeline::new("tls-refused").workers(1).bounded(true).run(move |p| sensor::build_to(p, &i, &o)).err();
    ensure!(err.is_some_and(|e| e.to_string().contains("cannot connect")), "a sink without a certificate connected");
    Ok(())
}

#[test]
fn an_unreachable_broker_is_an_error_at_startup() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, b"{\"device\":\"d\",\"ts\":1,\"temp\":1.0}\n")?;
    // A port nothing listens on: a broker started and stopped.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let mut outputs = sensor::Outputs::dirs(&dir.path().join("out"), &dir.path().join("dead"));
    outputs.mqtt_results = Some(MqttTopic::new(&format!("127.0.0.1:{port}"), "results", "weir-test")?);
    let (i, o) = (Input::File(input), outputs);
    let err = Pipeline::new("mqtt-down").workers(1).bounded(true).run(move |p| sensor::build_to(p, &i, &o)).err();
    let msg = err.map(|e| e.to_string()).unwrap_or_default();
    ensure!(msg.contains("cannot connect") && msg.contains(&port.to_string()), "{msg}");
    ensure!(MqttTopic::new("127.0.0.1:1", "a/+", "x").is_err(), "a wildcard topic was accepted");
    Ok(())
}
