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
