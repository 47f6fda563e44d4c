//! How a pipeline runs: [`PipelineConfig`], set with the `Pipeline` builder's
//! methods and validated once when the run starts. The runtime and the build
//! context read it; it depends on nothing above the ground modules.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::keygroup::KeyGroups;
use crate::partition::Assignor;
use crate::storage::Storage;
use crate::time::{CheckpointSchedule, EpochPolicy};

/// How a pipeline runs. Set it with `Pipeline`'s methods; validated once when `Pipeline::run` starts.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    /// Pipeline (consumer group) name; names its checkpoints.
    pub name: String,
    /// Worker threads.
    pub workers: usize,
    /// Checkpoint directory; `None` runs without checkpoints (output published at the end).
    pub state_dir: Option<PathBuf>,
    /// Time between checkpoints (a whole number of epochs); `None`: only the final one.
    pub checkpoint_interval: Option<Duration>,
    /// When sources close epochs.
    pub epoch: EpochPolicy,
    /// Epochs per checkpoint when `epoch` counts records (deterministic tests).
    pub checkpoint_epochs: Option<u64>,
    /// Stop at the end offsets seen at start, flush everything, take a final checkpoint.
    pub bounded: bool,
    /// How partitions are spread over workers.
    pub assignor: Assignor,
    /// Key groups keyed state is split into.
    pub key_groups: KeyGroups,
    /// Committed checkpoints kept.
    pub retain: usize,
    /// Bytes a source reads from one partition per read.
    pub read_batch_bytes: usize,
    /// Bytes a source hands downstream per activation before it yields, so
    /// that the operators after it take each batch while it is still in the
    /// core's cache. At least one read happens per activation.
    pub activation_bytes: usize,
    /// Epochs a source may run ahead of the commit operator's input (flow control).
    pub epochs_in_flight: u64,
    /// In an unbounded run, a partition without data for this long stops holding
    /// the window watermark back until it has data again (`None`: never).
    /// Bounded runs never release a partition that still has unread data.
    pub idle_timeout: Option<Duration>,
    /// In an unbounded run, how often sources whose partitions can grow (Kafka)
    /// look for new partitions ([`crate::source::Source::discover`]); `None`: never.
    pub partition_discovery: Option<Duration>,
    /// Where checkpoints, staged and published output are written (the local
    /// file system by default; tests inject faults here).
    pub storage: Arc<dyn Storage>,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            name: "weir".into(),
            workers: 1,
            state_dir: None,
            checkpoint_interval: Some(Duration::from_secs(1)),
            epoch: EpochPolicy::default(),
            checkpoint_epochs: None,
            bounded: true,
            assignor: Assignor::Range,
            key_groups: KeyGroups::default(),
            retain: 3,
            read_batch_bytes: 64 * 1024,
            activation_bytes: 256 * 1024,
            epochs_in_flight: 4,
            idle_timeout: Some(Duration::from_secs(10)),
            partition_discovery: Some(Duration::from_secs(30)),
            storage: crate::storage::local(),
        }
    }
}

impl PipelineConfig {
    /// Which epochs end with a checkpoint.
    pub fn schedule(&self) -> CheckpointSchedule {
        if self.state_dir.is_none() {
            return CheckpointSchedule { every: None };
        }
        let every = match (self.epoch, self.checkpoint_epochs, self.checkpoint_interval) {
            (_, Some(k), _) => Some(k.max(1)),
            (EpochPolicy::Time(e), None, Some(c)) => {
                Some(((c.as_secs_f64() / e.as_secs_f64().max(1e-6)).round() as u64).max(1))
            }
            _ => None,
        };
        CheckpointSchedule { every }
    }

    /// How far sources may run ahead of the commit operator, in epochs.
    ///
    /// The commit operator's input frontier moves every epoch (every operator
    /// emits or downgrades its part stream each epoch), so this bounds the
    /// data in flight to a few epochs whatever the checkpoint interval, and so
    /// also keeps the uncommitted checkpoint intervals bounded.
    pub fn max_epochs_in_flight(&self) -> u64 {
        self.epochs_in_flight
    }

    /// Checks every field once, before the run starts; the error names the field.
    pub(crate) fn validate(&self) -> Result<()> {
        if self.workers == 0 {
            return Err(Error::config("workers", "must be at least 1"));
        }
        if self.name.is_empty() {
            return Err(Error::config("name", "must not be empty"));
        }
        if let EpochPolicy::Time(d) = self.epoch
            && d.is_zero()
        {
            return Err(Error::config("epoch_interval", "must be positive"));
        }
        if let EpochPolicy::Records(0) = self.epoch {
            return Err(Error::config("epoch_records", "must be positive"));
        }
        if let Some(c) = self.checkpoint_interval
            && c.is_zero()
        {
            return Err(Error::config("checkpoint_interval", "must be positive"));
        }
        if self.retain == 0 {
            return Err(Error::config("retain", "keep at least one checkpoint"));
        }
        if self.epochs_in_flight < 2 {
            return Err(Error::config("epochs_in_flight", "must be at least 2"));
        }
        if self.read_batch_bytes < 1024 {
            return Err(Error::config("read_batch_bytes", "must be at least 1024"));
        }
        if self.idle_timeout.is_some_and(|d| d.is_zero()) {
            return Err(Error::config("idle_timeout", "must be positive (or none)"));
        }
        if self.partition_discovery.is_some_and(|d| d.is_zero()) {
            return Err(Error::config("partition_discovery", "must be positive (or none)"));
        }
        if self.activation_bytes == 0 {
            return Err(Error::config("activation_bytes", "must be positive"));
        }
        Ok(())
    }
}
