//! Epochs (the timely timestamp) and the checkpoint schedule.
//!
//! Sources close an epoch every `epoch_interval` of processing time, or every
//! N records in deterministic tests ([`EpochPolicy`]). Every worker decides
//! whether an epoch is a checkpoint epoch from the epoch number alone
//! ([`CheckpointSchedule`]), so no coordination is needed: timely's progress
//! tracking tells each operator when an epoch is complete.

use std::time::Duration;

/// The timely timestamp of a Weir dataflow.
pub type Epoch = u64;

/// When a source closes its current epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EpochPolicy {
    /// After this much processing time (default 20 ms: short epochs keep the
    /// data in flight, and so memory and hash-table sizes, small).
    Time(Duration),
    /// After this many records read by one source worker (deterministic tests).
    Records(u64),
}

impl Default for EpochPolicy {
    fn default() -> Self {
        EpochPolicy::Time(Duration::from_millis(20))
    }
}

/// Which epochs end with a checkpoint: every `every`-th (`None`: only the final one).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckpointSchedule {
    /// Epochs per checkpoint; `None` disables periodic checkpoints.
    pub every: Option<u64>,
}

impl CheckpointSchedule {
    /// Whether epoch `e` ends with a checkpoint.
    pub fn is_checkpoint(&self, e: Epoch) -> bool {
        matches!(self.every, Some(k) if k > 0 && e > 0 && e.is_multiple_of(k))
    }

    /// The checkpoint epochs in `from..until`, in order.
    pub fn between(&self, from: Epoch, until: Epoch) -> impl Iterator<Item = Epoch> {
        let k = self.every.unwrap_or(0);
        let first = if k == 0 || from >= until { until } else { from.max(1).div_ceil(k) * k };
        (0..).map(move |i| first.saturating_add(i * k.max(1))).take_while(move |&e| k > 0 && e < until)
    }
}

/// Parses durations such as `100ms`, `1s`, `2m`, `1.5s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (num, unit) = match t.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let value: f64 = num.parse().map_err(|_| format!("`{text}` is not a duration (expected e.g. 100ms, 1s, 2m)"))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("`{text}`: unknown unit `{unit}` (use ms, s, m or h)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("`{text}` is not a valid duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule() {
        let s = CheckpointSchedule { every: Some(3) };
        assert!(!s.is_checkpoint(0));
        assert!(s.is_checkpoint(3) && s.is_checkpoint(6) && !s.is_checkpoint(4));
        assert_eq!(s.between(0, 10).collect::<Vec<_>>(), vec![3, 6, 9]);
        assert_eq!(s.between(4, 7).collect::<Vec<_>>(), vec![6]);
        assert_eq!(s.between(6, 7).collect::<Vec<_>>(), vec![6]);
        assert_eq!(s.between(7, 9).count(), 0);
        let off = CheckpointSchedule { every: None };
        assert_eq!(off.between(0, 100).count(), 0);
        assert!(!off.is_checkpoint(5));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("3parsecs").is_err());
    }
}
