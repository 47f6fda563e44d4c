//! [`Silence`]: a key that stops reporting. After a key's last reading at
//! `t`, a silence alert is due at `t + quiet` and fires as soon as the
//! watermark reaches it (an event-time timer), not when the key reports
//! again; a reading that comes later than that (the watermark lagged) finds
//! the gap and fires it then, so each silence alerts exactly once. The end
//! of a bounded input is not a silence: no alert fires then.
//!
//! Readings themselves score 0; the alert is a row of its own at `t + quiet`
//! with score 1 and the last value.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir_core::Result;
use weir_core::record::EventTime;

use super::{Detector, Verdict, Why, check};

/// No reading for a duration of event time.
///
/// Parameters (defaults): `quiet` (given, positive), `min_samples` (1:
/// readings before a silence counts).
#[derive(Clone, Debug)]
pub struct Silence<F> {
    field: F,
    quiet: i64,
    min_samples: u64,
}

impl<F> Silence<F> {
    /// Alerts when a key sends nothing for `quiet`; rows show the value `field` gives.
    pub fn new(field: F, quiet: Duration) -> Self {
        Silence { field, quiet: i64::try_from(quiet.as_millis()).unwrap_or(i64::MAX), min_samples: 1 }
    }

    /// Readings before a silence counts.
    pub fn min_samples(mut self, readings: u64) -> Self {
        self.min_samples = readings;
        self
    }
}

/// A key's last reading, whether its silence has alerted, and the reading count.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Last {
    n: u64,
    last: Option<(EventTime, f64)>,
    alerted: bool,
}

impl<T, F> Detector<T> for Silence<F>
where
    F: Fn(&T) -> f64 + 'static,
{
    type Value = f64;
    type State = Last;
    type Out = f64;

    fn name(&self) -> &'static str {
        "silence"
    }

    fn validate(&self) -> Result<()> {
        check("silence.quiet", self.quiet as f64, self.quiet > 0, "positive (ms)")
    }

    fn value(&self, record: &T) -> f64 {
        (self.field)(record)
    }

    /// Any reading is a report, whatever its value.
    fn valid(&self, _: &f64) -> bool {
        true
    }

    fn out(&self, value: &f64) -> f64 {
        *value
    }

    fn update(&self, s: &mut Last, t: EventTime, &x: &f64) -> Verdict {
        s.n += 1;
        s.last = Some((t, x));
        s.alerted = false;
        Verdict::NONE
    }

    fn due(&self, s: &mut Last, upto: EventTime) -> Option<(EventTime, Verdict, f64)> {
        let at = self.next_due(s)?;
        if at > upto {
            return None;
        }
        s.alerted = true;
        let (since, x) = s.last?;
        Some((at, Verdict::new(1.0, 1.0, Why::Silent { since, quiet_ms: self.quiet }), x))
    }

    fn next_due(&self, s: &Last) -> Option<EventTime> {
        match s.last {
            Some((t, _)) if !s.alerted && s.n >= self.min_samples => Some(t.saturating_add(self.quiet)),
            _ => None,
        }
    }
}
