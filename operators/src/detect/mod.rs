//! Streaming anomaly detectors: keyed, checkpointed, one score in `[0, 1]`
//! per reading.
//!
//! ```text
//! flow.key_by(|r| r.device.clone())
//!     .detect(ZScore::new(|r: &Reading| r.temp).window(100).threshold(0.99999))?  // Flow<Scored<String>>
//!     .alerts()                                                                   // Flow<Alert<String>>
//! ```
//!
//! A [`Detector`] turns a key's readings, in event-time order, into a
//! [`Verdict`] each: an anomaly score in `[0, 1]` and whether it alerts. The
//! detect step ([`Keyed::detect`], on the stateful-operator kit) emits one
//! [`Scored`] row per reading, with its own event time and, when the verdict
//! alerts, an [`Alert`]; [`Alerts::alerts`] keeps just the alerts.
//!
//! - **Order.** Records of one epoch reach a keyed step in no particular
//!   order, so a key's readings wait in its state until the watermark passes
//!   them and are then scored in order of event time, partition and offset:
//!   the rows do not depend on timing, batching or the worker count. A
//!   reading already behind the watermark when it arrives (later than the
//!   flow's allowed disorder) is not scored: it gets score 0, no alert, and
//!   leaves the state as it was. At the end of a bounded input every waiting
//!   reading is scored.
//! - **Bad values.** A NaN or infinite value is skipped for the state and
//!   scores 0 (it neither alerts nor poisons the statistics).
//! - **Warm-up.** Each detector scores 0 until it has seen its
//!   `min_samples` readings (for a windowed one, at most its window).
//! - **Bounded state.** Each key keeps a fixed number of values (the window,
//!   or a few running statistics) plus the readings the watermark has not
//!   passed yet; a key's state stays for as long as the step runs.
//!
//! Detectors ([`NAMES`] lists their names, which alerts carry):
//! [`Threshold`] (static bounds), [`RateOfChange`], [`ZScore`] (rolling
//! window, Welford with a removal step), [`Ewma`] (EWMA control chart),
//! [`Mad`] (median absolute deviation, bounded window), [`FlatLine`] (stuck
//! value for a duration of event time), [`Silence`] (no reading for a
//! duration, fired by the watermark), [`Mahalanobis`] (several fields of one
//! reading, Hotelling T² on a running covariance), [`Ensemble`] (the max
//! or mean of members' scores) and [`Knn`] (nearest-neighbour novelty of the
//! last few readings' pattern, with repeated alerts held back). [`Carry`] labels any detector's rows with a
//! field of the record (a site) that is not part of the key.
//!
//! - **Clock.** The rows keep the event-time clock of the flow the detector
//!   ran on (its source and watermarks): a row is emitted once the watermark
//!   passed its event time, in the epoch that moved the watermark there, so
//!   it is never behind the watermark of the epochs before. A window can
//!   therefore follow `.detect(...)` or `.alerts()` directly (per-site
//!   alert counts: `.alerts().key_by(..).window(Tumbling::minutes(1))`).

/// The builder methods of a detector's warm-up and alert threshold: they
/// set its fields `min_samples` (of type `$n`) and `threshold`, documented
/// by `$min_doc` and `$threshold_doc`.
macro_rules! gate_setters {
    ($n:ty, $min_doc:literal, $threshold_doc:literal) => {
        #[doc = $min_doc]
        pub fn min_samples(mut self, readings: $n) -> Self {
            self.min_samples = readings;
            self
        }

        #[doc = $threshold_doc]
        pub fn threshold(mut self, score: f64) -> Self {
            self.threshold = score;
            self
        }
    };
}

/// The value side of a [`Detector`] of one `f64` that its field `field`
/// takes from a record `T`: finite values are scored, and shown as they are.
macro_rules! one_field {
    () => {
        type Value = f64;
        type Out = f64;

        fn value(&self, record: &T) -> f64 {
            (self.field)(record)
        }

        fn valid(&self, value: &f64) -> bool {
            value.is_finite()
        }

        fn out(&self, value: &f64) -> f64 {
            *value
        }
    };
}

mod carry;
mod ensemble;
mod ewma;
mod flatline;
mod knn;
mod mad;
mod mahalanobis;
mod ordered;
mod panel;
mod rate;
pub mod score;
mod silence;
mod threshold;
mod zscore;

#[cfg(test)]
mod accuracy;
#[cfg(test)]
mod tests;

use std::fmt;
use std::hash::Hash;
use std::rc::Rc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use timely::ExchangeData;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use weir_core::flow::FlowMeta;
use weir_core::record::{EventTime, Rec};
use weir_core::state::{StepInput, local_step, step};
use weir_core::{Error, Flow, Result};

use crate::window::Keyed;

pub use carry::Carry;
pub use ensemble::{Ensemble, EnsembleScore, Members};
pub use ewma::Ewma;
pub use flatline::FlatLine;
pub use knn::Knn;
pub use mad::Mad;
pub use mahalanobis::Mahalanobis;
pub use panel::Panel;
pub use rate::RateOfChange;
pub use silence::Silence;
pub use threshold::Threshold;
pub use zscore::ZScore;

use ordered::{AlertRows, DetectLogic, Rows, Sample, ScoredRows};

/// The names of the built-in detectors, as alerts carry them in [`Alert::detector`].
pub const NAMES: [&str; 10] =
    ["threshold", "rate", "zscore", "ewma", "mad", "flatline", "silence", "mahalanobis", "ensemble", "knn"];

/// Why a reading scored as it did: the numbers behind a verdict, turned into
/// an alert's [`reason`](Alert::reason) only when it alerts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Why {
    /// Nothing to say: warming up, a skipped value, or nothing unusual.
    Nothing,
    /// `z` spreads away from `center` (a mean or median; `spread` is the
    /// standard deviation or scaled MAD) over `samples` readings.
    Deviation {
        /// Signed distance in spreads.
        z: f64,
        /// Mean or median.
        center: f64,
        /// Standard deviation or its robust estimate.
        spread: f64,
        /// Readings the statistics hold.
        samples: u64,
    },
    /// Outside `[low, high]`.
    Bounds {
        /// Lower bound.
        low: f64,
        /// Upper bound.
        high: f64,
    },
    /// Changed by `per_second` per second, more than `max`.
    Rate {
        /// The rate of change since the previous reading, per second.
        per_second: f64,
        /// The largest rate allowed.
        max: f64,
    },
    /// The value has not changed since `since`, for `for_ms` ms.
    Stuck {
        /// Event time of the first reading with this value.
        since: EventTime,
        /// How long it has been stuck, ms.
        for_ms: i64,
    },
    /// The key sent nothing from `since` for at least `quiet_ms` ms.
    Silent {
        /// Event time of its last reading.
        since: EventTime,
        /// The silence that alerts, ms.
        quiet_ms: i64,
    },
    /// Squared Mahalanobis distance `d2` (Hotelling T²) in `dims` dimensions over `samples` readings.
    Distance {
        /// The squared distance.
        d2: f64,
        /// Dimensions.
        dims: usize,
        /// Readings the covariance holds.
        samples: u64,
    },
    /// The recent pattern's nearest earlier one is `distance` (in standard
    /// deviations of the values) away, `z` spreads above the usual nearest
    /// distance over `samples` distances.
    Novel {
        /// The nearest distance.
        distance: f64,
        /// Its distance from the usual one, in spreads.
        z: f64,
        /// Distances the statistics hold.
        samples: u64,
    },
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Why::Nothing => write!(f, "nothing unusual"),
            Why::Deviation { z, center, spread, samples } => {
                write!(f, "{z:+.2} spreads from {center:.4} (spread {spread:.4}, {samples} readings)")
            }
            Why::Bounds { low, high } => write!(f, "outside [{low}, {high}]"),
            Why::Rate { per_second, max } => write!(f, "changed {per_second:+.4}/s, more than {max}/s"),
            Why::Stuck { since, for_ms } => write!(f, "unchanged since {since} for {for_ms} ms"),
            Why::Silent { since, quiet_ms } => write!(f, "no reading since {since} for {quiet_ms} ms"),
            Why::Distance { d2, dims, samples } => {
                write!(f, "squared Mahalanobis distance {d2:.2} in {dims} dimensions ({samples} readings)")
            }
            Why::Novel { distance, z, samples } => {
                write!(
                    f,
                    "nearest earlier pattern {distance:.4} away, {z:+.2} spreads above usual ({samples} distances)"
                )
            }
        }
    }
}

/// A detector's judgement of one reading.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Verdict {
    /// The anomaly score in `[0, 1]`.
    pub score: f64,
    /// Whether it alerts (the score passed the detector's threshold).
    pub alert: bool,
    /// The numbers behind it.
    pub why: Why,
    /// Which member of an [`Ensemble`] gave `why`.
    pub member: Option<&'static str>,
}

impl Verdict {
    /// Score 0, no alert: warming up, or a value that is skipped.
    pub const NONE: Verdict = Verdict { score: 0.0, alert: false, why: Why::Nothing, member: None };

    /// `score` (clamped to `[0, 1]`, NaN as 0), alerting when it is positive and at least `threshold`.
    pub fn new(score: f64, threshold: f64, why: Why) -> Self {
        let score = if score.is_nan() { 0.0 } else { score.clamp(0.0, 1.0) };
        Verdict { score, alert: score > 0.0 && score >= threshold, why, member: None }
    }

    /// Keeps `v` (of member `name`) instead when it scores higher, or when
    /// this is no member's verdict yet: how a combination picks its top member.
    pub(crate) fn keep_top(&mut self, name: &'static str, v: Verdict) {
        if v.score > self.score || self.member.is_none() {
            *self = Verdict { member: Some(name), ..v };
        }
    }

    /// The alert's reason.
    pub fn reason(&self) -> String {
        match self.member {
            Some(m) => format!("{m}: {}", self.why),
            None => self.why.to_string(),
        }
    }
}

/// A streaming anomaly detector over records `T` of one key: what
/// [`Keyed::detect`] runs. Its per-key [`State`](Self::State) is
/// checkpointed; [`update`](Self::update) gets a key's valid values in
/// event-time order (ties by partition and offset).
pub trait Detector<T>: 'static {
    /// What it takes from a record (kept until the watermark passes it, and sent between workers).
    type Value: ExchangeData;
    /// A key's state.
    type State: Default + Serialize + DeserializeOwned + 'static;
    /// What the rows show as the reading's value.
    type Out: Clone + 'static;

    /// The short name alerts carry (one of [`NAMES`] for the built-in ones).
    fn name(&self) -> &'static str;
    /// Checks the parameters (called when the step is built); the error names the parameter.
    fn validate(&self) -> Result<()> {
        Ok(())
    }
    /// The value of `record`.
    fn value(&self, record: &T) -> Self::Value;
    /// Whether `value` can be scored (false: score 0, the state is left alone).
    fn valid(&self, value: &Self::Value) -> bool;
    /// The value as the rows show it.
    fn out(&self, value: &Self::Value) -> Self::Out;
    /// Scores `value` at `time` and adds it to `state`.
    fn update(&self, state: &mut Self::State, time: EventTime, value: &Self::Value) -> Verdict;
    /// An alert not tied to a reading that is due at or before `upto` (a
    /// silence): its time, verdict and the value to show. Called before each
    /// reading with the reading's time, and as the watermark passes
    /// [`next_due`](Self::next_due) with the watermark (never at the end of a
    /// bounded input). None by default.
    fn due(&self, _state: &mut Self::State, _upto: EventTime) -> Option<(EventTime, Verdict, Self::Out)> {
        None
    }
    /// When the next [`due`](Self::due) alert would be due. None by default.
    fn next_due(&self, _state: &Self::State) -> Option<EventTime> {
        None
    }
    /// A hint that `state` is updated soon (the detect step calls it a few
    /// readings ahead): a detector whose state points to memory elsewhere
    /// (a ring of past values) prefetches what [`update`](Self::update)
    /// reads first, with [`weir_core::hint::prefetch`], so that the cache
    /// miss overlaps with the readings before. Nothing by default.
    fn prefetch(&self, _state: &Self::State) {}
    /// Scores `value` as [`update`](Self::update) does, giving `each` every
    /// verdict with the name its alert carries: one under
    /// [`name`](Self::name) by default, one per member for a [`Panel`].
    /// What [`Keyed::detect_alerts`] calls.
    fn update_each(
        &self,
        state: &mut Self::State,
        time: EventTime,
        value: &Self::Value,
        each: &mut dyn FnMut(&'static str, Verdict),
    ) {
        each(self.name(), self.update(state, time, value));
    }
    /// The due alerts at or before `upto` as [`due`](Self::due) finds them,
    /// each given to `each` with its name, time and value to show: at most
    /// one by default, one per due member for a [`Panel`]. What
    /// [`Keyed::detect_alerts`] calls.
    fn due_each(
        &self,
        state: &mut Self::State,
        upto: EventTime,
        each: &mut dyn FnMut(&'static str, EventTime, Verdict, Self::Out),
    ) {
        if let Some((at, verdict, shown)) = self.due(state, upto) {
            each(self.name(), at, verdict, shown);
        }
    }
}

/// An alert: a reading (or a silence) whose score passed its detector's threshold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert<K, V = f64> {
    /// The key.
    pub key: K,
    /// The reading's event time (a silence: when it became one).
    pub event_time: EventTime,
    /// The reading's value (a silence: the last value before it).
    pub value: V,
    /// The score, in `[0, 1]`.
    pub score: f64,
    /// The detector's name ([`NAMES`]).
    pub detector: String,
    /// Why, in words (the numbers of a [`Why`]).
    pub reason: String,
}

/// One reading's score (or a silence's row, which has score 1 and an alert).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scored<K, V = f64> {
    /// The key.
    pub key: K,
    /// The reading's event time.
    pub event_time: EventTime,
    /// The reading's value.
    pub value: V,
    /// The anomaly score, in `[0, 1]`.
    pub score: f64,
    /// The alert, when the score passed the threshold (boxed: most rows have none).
    pub alert: Option<Box<Alert<K, V>>>,
}

impl<'s, T: 'static, F> Keyed<'s, T, F> {
    /// Runs `detector` over each key's readings; one [`Scored`] row per
    /// reading (see the [module docs](self)). Needs event times
    /// (`.event_time(...)` before it). The step is named after the flow's
    /// [`named`](Flow::named) name, else `detect-<detector name>`.
    pub fn detect<K, D>(self, detector: D) -> Result<Flow<'s, Scored<K, D::Out>>>
    where
        K: ExchangeData + Hash + Eq + Clone,
        F: Fn(&T) -> K + 'static,
        D: Detector<T>,
    {
        self.detect_rows::<K, D, ScoredRows>(detector)
    }

    /// Runs `detector` over each key's readings and keeps only the alerts:
    /// the alerts of `.detect(detector)?.alerts()`, without a row per
    /// reading, and for a [`Panel`] every member's alerts under the
    /// member's name (as if each ran in a step of its own). The step is
    /// named as [`detect`](Self::detect)'s.
    pub fn detect_alerts<K, D>(self, detector: D) -> Result<Flow<'s, Alert<K, D::Out>>>
    where
        K: ExchangeData + Hash + Eq + Clone,
        F: Fn(&T) -> K + 'static,
        D: Detector<T>,
    {
        self.detect_rows::<K, D, AlertRows>(detector)
    }

    /// The detect step, its verdicts turned into rows by `R`.
    fn detect_rows<K, D, R>(self, detector: D) -> Result<Flow<'s, R::Row>>
    where
        K: ExchangeData + Hash + Eq + Clone,
        F: Fn(&T) -> K + 'static,
        D: Detector<T>,
        R: Rows<K, T, D>,
    {
        detector.validate()?;
        let local = self.is_local();
        let (flow, key_of) = self.into_parts();
        let (stream, meta) = flow.into_parts();
        let (Some(info), Some(watermarks)) = (meta.input, meta.watermarks) else {
            return Err(Error::config(
                "detect",
                "needs event times: call .event_time(...) on the flow before .detect(...)",
            ));
        };
        let ctx = meta.ctx;
        // The rows keep the input's clock (see the module docs).
        let clock = (info.clone(), watermarks.clone());
        let id = ctx.step_id(&format!("detect-{}", detector.name()), meta.name.as_deref())?;
        let detector = Rc::new(detector);
        let d = detector.clone();
        let sample = move |r: Rec<T>| Sample {
            key: key_of(&r.value),
            time: r.meta.event_time,
            pos: (r.meta.partition, r.meta.offset),
            value: d.value(&r.value),
        };
        let groups = ctx.key_groups();
        let partitions = info.partitions;
        let out = if local {
            // On their keys' workers already: the step makes the samples itself.
            let input = StepInput { records: stream, watermarks: Some(watermarks), partitions };
            local_step(&ctx, &id, input, DetectLogic::<K, T, D, R, _>::new(detector, groups, sample))?
        } else {
            // Samples (the key and the detector's value, not the whole record) cross the exchange.
            let samples = stream.unary(Pipeline, "DetectValues", move |_, _| {
                move |input, output| {
                    input.for_each(|cap, data: &mut Vec<Rec<T>>| {
                        output.session(&cap).give_iterator(data.drain(..).map(&sample));
                    });
                }
            });
            let input = StepInput { records: samples, watermarks: Some(watermarks), partitions };
            let logic = DetectLogic::<K, T, D, R, _>::new(detector, groups, |s: Sample<K, D::Value>| s);
            step(&ctx, &id, input, move |s: &Sample<K, D::Value>| groups.group_of(&s.key), logic)?
        };
        let meta = FlowMeta { ctx, input: Some(clock.0), watermarks: Some(clock.1), name: None };
        Ok(meta.flow(out))
    }
}

/// Adds `alerts` to flows of [`Scored`] rows.
pub trait Alerts<'s, K, V> {
    /// Keeps the alerts.
    fn alerts(self) -> Flow<'s, Alert<K, V>>;
}

impl<'s, K: 'static, V: 'static> Alerts<'s, K, V> for Flow<'s, Scored<K, V>> {
    fn alerts(self) -> Flow<'s, Alert<K, V>> {
        let (stream, meta) = self.into_parts();
        let stream = stream.unary(Pipeline, "Alerts", move |_, _| {
            move |input, output| {
                input.for_each(|cap, data: &mut Vec<Rec<Scored<K, V>>>| {
                    let alerts = data.drain(..).filter_map(|r| r.value.alert.map(|a| Rec { meta: r.meta, value: *a }));
                    output.session(&cap).give_iterator(alerts);
                });
            }
        });
        meta.flow(stream)
    }
}

/// Checks that `value` is in `range` (both ends inclusive), naming `field` otherwise.
fn check(field: &str, value: f64, ok: bool, expected: &str) -> Result<()> {
    if ok && !value.is_nan() { Ok(()) } else { Err(Error::config(field, format!("{value} is not {expected}"))) }
}

/// Checks detector `name`'s alert threshold, a score in `(0, 1]`.
fn check_threshold(name: &str, threshold: f64) -> Result<()> {
    check(&format!("{name}.threshold"), threshold, threshold > 0.0 && threshold <= 1.0, "in (0, 1]")
}
