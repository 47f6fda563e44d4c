//! An MQTT 5 QoS 1 publisher for tests (rumqttc on a runtime of its own).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};

/// Publishes `messages` (MQTT topic, payload) with QoS 1 as client `id` to the
/// broker on 127.0.0.1:`port`, sleeping `pace` after each, and returns the
/// indexes of the messages the broker acknowledged (PUBACK), in order. Fails
/// when not all are acknowledged within `timeout`.
pub fn publish_qos1(
    port: u16,
    id: &str,
    messages: Vec<(String, Vec<u8>)>,
    pace: Duration,
    timeout: Duration,
) -> anyhow::Result<Vec<usize>> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(30)).set_max_packet_size(Some(64 << 20));
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let total = messages.len();
        let publisher = tokio::spawn(async move {
            for (topic, payload) in messages {
                client.publish(topic, QoS::AtLeastOnce, false, payload).await?;
                if !pace.is_zero() {
                    tokio::time::sleep(pace).await;
                }
            }
            anyhow::Ok(client)
        });
        let deadline = Instant::now() + timeout;
        let (mut sent, mut acked, mut by_pkid) = (0usize, Vec::new(), HashMap::new());
        while acked.len() < total {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("{} of {total} messages acknowledged within {timeout:?}", acked.len());
            }
            match tokio::time::timeout(left, eventloop.poll()).await {
                Ok(Ok(Event::Outgoing(rumqttc::Outgoing::Publish(pkid)))) => {
                    by_pkid.insert(pkid, sent);
                    sent += 1;
                }
                Ok(Ok(Event::Incoming(Packet::PubAck(ack)))) => {
                    if let Some(i) = by_pkid.remove(&ack.pkid) {
                        acked.push(i);
                    }
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => bail!("publisher connection: {e}"),
                Err(_) => {}
            }
        }
        let client = publisher.await.context("publisher task")??;
        let _ = client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
        Ok(acked)
    })
}

/// Messages received: (MQTT topic, payload).
type Received = std::sync::Arc<(std::sync::Mutex<Vec<(String, Vec<u8>)>>, std::sync::Condvar)>;

/// A QoS 1 subscriber collecting every message (MQTT topic, payload) on a
/// thread of its own until dropped.
pub struct Subscriber {
    messages: Received,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Subscriber {
    /// Subscribes to `filter` on 127.0.0.1:`port` as client `id`; returns once
    /// the broker acknowledged the subscription.
    pub fn start(port: u16, id: &str, filter: &str) -> anyhow::Result<Subscriber> {
        let messages: Received = Default::default();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready) = std::sync::mpsc::channel::<Result<(), String>>();
        let (id, filter, sink) = (id.to_string(), filter.to_string(), messages.clone());
        let thread = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                let _ = ready_tx.send(Err("no runtime".into()));
                return;
            };
            rt.block_on(async move {
                let mut options = MqttOptions::new(id, "127.0.0.1", port);
                // The gateway's receive maximum, so the broker keeps as many messages in flight.
                options
                    .set_keep_alive(Duration::from_secs(30))
                    .set_max_packet_size(Some(64 << 20))
                    .set_receive_maximum(Some(1000));
                let (client, mut eventloop) = AsyncClient::new(options, 1064);
                loop {
                    tokio::select! {
                        _ = &mut stopped => break,
                        event = eventloop.poll() => match event {
                            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                                if let Err(e) = client.try_subscribe(filter.clone(), QoS::AtLeastOnce) {
                                    let _ = ready_tx.send(Err(e.to_string()));
                                }
                            }
                            Ok(Event::Incoming(Packet::SubAck(_))) => {
                                let _ = ready_tx.send(Ok(()));
                            }
                            Ok(Event::Incoming(Packet::Publish(p))) => {
                                let topic = String::from_utf8_lossy(&p.topic).into_owned();
                                if let Ok(mut m) = sink.0.lock() {
                                    m.push((topic, p.payload.to_vec()));
                                }
                                sink.1.notify_all();
                            }
                            Ok(_) => {}
                            Err(e) => {
                                let _ = ready_tx.send(Err(e.to_string()));
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                    }
                }
            });
        });
        match ready.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(Subscriber { messages, stop: Some(stop), thread: Some(thread) }),
            Ok(Err(e)) => bail!("subscribing to {port}: {e}"),
            Err(_) => bail!("no subscription acknowledgement from 127.0.0.1:{port} within 10 s"),
        }
    }

    /// The messages so far.
    pub fn messages(&self) -> Vec<(String, Vec<u8>)> {
        self.messages.0.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Waits until at least `n` messages arrived; returns them (fails after `timeout`).
    pub fn wait_for(&self, n: usize, timeout: Duration) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
        let deadline = Instant::now() + timeout;
        let (lock, arrived) = &*self.messages;
        let mut m = lock.lock().map_err(|_| anyhow::anyhow!("subscriber state poisoned"))?;
        while m.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("{} of {n} messages within {timeout:?}", m.len());
            }
            m = arrived.wait_timeout(m, left).map_err(|_| anyhow::anyhow!("subscriber state poisoned"))?.0;
        }
        Ok(m.clone())
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Each line of `data` (JSON lines) as a message on `sensors/DEVICE`
/// (`sensors/unknown` for a line without a plain device name).
pub fn sensor_messages(data: &[u8]) -> Vec<(String, Vec<u8>)> {
    data.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|line| {
            let device = crate::kafka::device_of(line)
                .filter(|d| d.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-'))
                .map_or("unknown".to_string(), |d| String::from_utf8_lossy(d).into_owned());
            (format!("sensors/{device}"), line.to_vec())
        })
        .collect()
}
