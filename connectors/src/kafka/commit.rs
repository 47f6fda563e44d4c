//! Group commits after checkpoints: the offsets of each committed checkpoint
//! go to the broker's consumer group, so Kafka tools see the pipeline's
//! position and lag.
//!
//! One task on the shared I/O runtime commits, one request at a time and
//! always the newest (a checkpoint that commits while an older broker commit
//! is in flight replaces any request still waiting), so broker offsets never
//! move back. A failure is logged; the next checkpoint's request retries with
//! newer offsets. The last commit of a bounded run is waited for and retried,
//! so the group's lag is 0 when the process exits.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset as KOffset, TopicPartitionList};
use tokio::sync::watch;
use weir_core::error::{Error, Result};
use weir_core::record::{Offset, PartitionId};

use super::KafkaConfig;

/// Attempts of a bounded run's last commit.
const LAST_ATTEMPTS: u32 = 8;

#[derive(Clone, Debug, Default)]
struct Request {
    seq: u64,
    offsets: BTreeMap<PartitionId, Offset>,
    last: bool,
}

/// Commits checkpointed offsets to the broker's group, in the background.
pub(super) struct Committer {
    requests: watch::Sender<Request>,
    /// The sequence number and outcome of the newest finished request.
    done: watch::Receiver<(u64, std::result::Result<(), String>)>,
    seq: std::sync::atomic::AtomicU64,
    timeout: Duration,
}

impl Committer {
    /// Starts the commit task for `topic` on the shared runtime.
    pub(super) fn start(consumer: Arc<BaseConsumer>, topic: String, cfg: KafkaConfig) -> Result<Self> {
        let rt = crate::runtime::io()?;
        let (requests, mut rx) = watch::channel(Request::default());
        let (done_tx, done) = watch::channel((0u64, Ok(())));
        rt.spawn(async move {
            while rx.changed().await.is_ok() {
                let req = rx.borrow_and_update().clone();
                let attempts = if req.last { LAST_ATTEMPTS } else { 1 };
                let mut outcome = Err(String::new());
                for attempt in 0..attempts {
                    if attempt > 0 {
                        tokio::time::sleep(Duration::from_millis(250 << attempt.min(4))).await;
                    }
                    let (c, t, offsets) = (consumer.clone(), topic.clone(), req.offsets.clone());
                    outcome = match tokio::task::spawn_blocking(move || commit(&c, &t, &offsets)).await {
                        Ok(r) => r,
                        Err(e) => Err(e.to_string()),
                    };
                    if outcome.is_ok() {
                        break;
                    }
                }
                if let Err(e) = &outcome {
                    tracing::warn!(topic = %topic, group = %cfg.group, error = %e,
                        "committing offsets to the Kafka group failed; the next checkpoint retries");
                }
                if done_tx.send((req.seq, outcome)).is_err() {
                    break;
                }
            }
        });
        Ok(Committer { requests, done, seq: Default::default(), timeout: Duration::from_secs(120) })
    }

    /// Queues `offsets` (replacing a request still waiting); for the last
    /// commit, waits until it is on the broker and returns its outcome.
    pub(super) fn commit(&self, offsets: &BTreeMap<PartitionId, Offset>, last: bool) -> Result<()> {
        let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        self.requests
            .send(Request { seq, offsets: offsets.clone(), last })
            .map_err(|_| Error::Pipeline("the Kafka commit task stopped".into()))?;
        if !last {
            return Ok(());
        }
        let mut done = self.done.clone();
        let timeout = self.timeout;
        let outcome = crate::runtime::io()?.block_on(async move {
            let waited = tokio::time::timeout(timeout, done.wait_for(|(s, _)| *s >= seq)).await;
            match waited {
                Ok(Ok(r)) => r.1.clone(),
                Ok(Err(_)) => Err("the commit task stopped".to_string()),
                Err(_) => Err(format!("no answer within {timeout:?}")),
            }
        });
        outcome.map_err(|e| Error::Pipeline(format!("committing the final offsets to the Kafka group: {e}")))
    }
}

fn commit(
    consumer: &BaseConsumer,
    topic: &str,
    offsets: &BTreeMap<PartitionId, Offset>,
) -> std::result::Result<(), String> {
    let mut tpl = TopicPartitionList::new();
    for (&p, &o) in offsets {
        let (Ok(p), Ok(o)) = (i32::try_from(p), i64::try_from(o)) else { continue };
        tpl.add_partition_offset(topic, p, KOffset::Offset(o)).map_err(|e| e.to_string())?;
    }
    consumer.commit(&tpl, CommitMode::Sync).map_err(|e| e.to_string())
}
