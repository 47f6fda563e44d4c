//! [`Ensemble`]: several detectors over the same readings, as one. Each
//! member keeps its own state and scores every reading; the ensemble's
//! score is the largest of the members' scores ([`EnsembleScore::Max`]) or their
//! mean ([`EnsembleScore::Mean`]), and the reason is that of the member that
//! scored highest. Without a threshold of its own it alerts when any member
//! does. Members are a tuple of two to four detectors (the rows show the
//! first one's value) or a `Vec` of detectors of one type (the rows show
//! every member's value). Members' due alerts (silences) are not forwarded
//! (a [`Panel`](super::Panel)'s are).

use serde::Serialize;
use serde::de::DeserializeOwned;
use timely::ExchangeData;
use weir_core::record::EventTime;
use weir_core::{Error, Result};

use super::{Detector, Verdict, check};

/// How an [`Ensemble`] combines its members' scores.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EnsembleScore {
    /// The largest score (an anomaly to any member is one).
    #[default]
    Max,
    /// The mean score (members must agree).
    Mean,
}

/// Several detectors as one.
///
/// Parameters (defaults): the score ([`EnsembleScore::Max`]), `threshold` (none:
/// alert when any member alerts).
#[derive(Clone, Debug)]
pub struct Ensemble<M> {
    members: M,
    score: EnsembleScore,
    threshold: Option<f64>,
}

impl<M> Ensemble<M> {
    /// The largest of the members' scores.
    pub fn max(members: M) -> Self {
        Ensemble { members, score: EnsembleScore::Max, threshold: None }
    }

    /// The mean of the members' scores.
    pub fn mean(members: M) -> Self {
        Ensemble { members, score: EnsembleScore::Mean, threshold: None }
    }

    /// Alerts when the combined score reaches `score`, in `(0, 1]`, instead of when a member alerts.
    pub fn threshold(mut self, score: f64) -> Self {
        self.threshold = Some(score);
        self
    }
}

/// The members of an [`Ensemble`]: detectors of the same records.
pub trait Members<T>: 'static {
    /// The members' values.
    type Value: ExchangeData;
    /// The members' states.
    type State: Default + Serialize + DeserializeOwned + 'static;
    /// What the rows show.
    type Out: Clone + 'static;
    /// How many members.
    fn len(&self) -> usize;
    /// Whether there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Checks every member.
    fn validate(&self) -> Result<()>;
    /// The members' values of `record`.
    fn value(&self, record: &T) -> Self::Value;
    /// Whether any member can score its value.
    fn valid(&self, value: &Self::Value) -> bool;
    /// The value as the rows show it.
    fn out(&self, value: &Self::Value) -> Self::Out;
    /// Each member's verdict on its value (0 for one it cannot score), given to `each` with its name.
    fn update(
        &self,
        state: &mut Self::State,
        time: EventTime,
        value: &Self::Value,
        each: &mut dyn FnMut(&'static str, Verdict),
    );
    /// Each member's due alert at or before `upto` (a silence), given to
    /// `each` with the member's name, the alert's time and verdict (what a
    /// [`Panel`](super::Panel) forwards). None by default.
    fn due(&self, _state: &mut Self::State, _upto: EventTime, _each: &mut dyn FnMut(&'static str, EventTime, Verdict)) {
    }
    /// The earliest of the members' next due times. None by default.
    fn next_due(&self, _state: &Self::State) -> Option<EventTime> {
        None
    }
    /// Each member's [`Detector::prefetch`]. Nothing by default.
    fn prefetch(&self, _state: &Self::State) {}
}

/// A member's verdict, or none for a value it cannot score.
fn member<T, D: Detector<T>>(d: &D, s: &mut D::State, t: EventTime, v: &D::Value) -> Verdict {
    if d.valid(v) { d.update(s, t, v) } else { Verdict::NONE }
}

impl<T, D: Detector<T>> Members<T> for Vec<D> {
    type Value = Vec<D::Value>;
    type State = Vec<D::State>;
    type Out = Vec<D::Out>;

    fn len(&self) -> usize {
        Vec::len(self)
    }

    fn validate(&self) -> Result<()> {
        self.iter().try_for_each(|d| d.validate())
    }

    fn value(&self, record: &T) -> Self::Value {
        self.iter().map(|d| d.value(record)).collect()
    }

    fn valid(&self, value: &Self::Value) -> bool {
        self.iter().zip(value).any(|(d, v)| d.valid(v))
    }

    fn out(&self, value: &Self::Value) -> Self::Out {
        self.iter().zip(value).map(|(d, v)| d.out(v)).collect()
    }

    fn update(
        &self,
        s: &mut Self::State,
        t: EventTime,
        value: &Self::Value,
        each: &mut dyn FnMut(&'static str, Verdict),
    ) {
        s.resize_with(Vec::len(self), Default::default);
        for ((d, s), v) in self.iter().zip(s.iter_mut()).zip(value) {
            each(d.name(), member(d, s, t, v));
        }
    }

    fn due(&self, s: &mut Self::State, upto: EventTime, each: &mut dyn FnMut(&'static str, EventTime, Verdict)) {
        for (d, s) in self.iter().zip(s.iter_mut()) {
            if let Some((at, v, _)) = d.due(s, upto) {
                each(d.name(), at, v);
            }
        }
    }

    fn next_due(&self, s: &Self::State) -> Option<EventTime> {
        self.iter().zip(s).filter_map(|(d, s)| d.next_due(s)).min()
    }

    fn prefetch(&self, s: &Self::State) {
        for (d, s) in self.iter().zip(s) {
            d.prefetch(s);
        }
    }
}

macro_rules! tuple_members {
    ($n:literal; $($d:ident $i:tt),+) => {
        impl<T, $($d: Detector<T>),+> Members<T> for ($($d,)+) {
            type Value = ($($d::Value,)+);
            type State = ($($d::State,)+);
            type Out = <A as Detector<T>>::Out;

            fn len(&self) -> usize {
                $n
            }

            fn validate(&self) -> Result<()> {
                $(self.$i.validate()?;)+
                Ok(())
            }

            fn value(&self, record: &T) -> Self::Value {
                ($(self.$i.value(record),)+)
            }

            fn valid(&self, value: &Self::Value) -> bool {
                false $(|| self.$i.valid(&value.$i))+
            }

            fn out(&self, value: &Self::Value) -> Self::Out {
                self.0.out(&value.0)
            }

            fn update(&self, s: &mut Self::State, t: EventTime, value: &Self::Value, each: &mut dyn FnMut(&'static str, Verdict)) {
                $(each(self.$i.name(), member(&self.$i, &mut s.$i, t, &value.$i));)+
            }

            fn due(&self, s: &mut Self::State, upto: EventTime, each: &mut dyn FnMut(&'static str, EventTime, Verdict)) {
                $(if let Some((at, v, _)) = self.$i.due(&mut s.$i, upto) {
                    each(self.$i.name(), at, v);
                })+
            }

            fn next_due(&self, s: &Self::State) -> Option<EventTime> {
                [$(self.$i.next_due(&s.$i)),+].into_iter().flatten().min()
            }

            fn prefetch(&self, s: &Self::State) {
                $(self.$i.prefetch(&s.$i);)+
            }
        }
    };
}

tuple_members!(2; A 0, B 1);
tuple_members!(3; A 0, B 1, C 2);
tuple_members!(4; A 0, B 1, C 2, D 3);

impl<T, M: Members<T>> Detector<T> for Ensemble<M> {
    type Value = M::Value;
    type State = M::State;
    type Out = M::Out;

    fn name(&self) -> &'static str {
        "ensemble"
    }

    fn validate(&self) -> Result<()> {
        if self.members.is_empty() {
            return Err(Error::config("ensemble.members", "an ensemble needs at least one member"));
        }
        if let Some(t) = self.threshold {
            check("ensemble.threshold", t, t > 0.0 && t <= 1.0, "in (0, 1]")?;
        }
        self.members.validate()
    }

    fn value(&self, record: &T) -> M::Value {
        self.members.value(record)
    }

    fn valid(&self, value: &M::Value) -> bool {
        self.members.valid(value)
    }

    fn out(&self, value: &M::Value) -> M::Out {
        self.members.out(value)
    }

    fn update(&self, s: &mut M::State, t: EventTime, value: &M::Value) -> Verdict {
        let (mut top, mut sum, mut any) = (Verdict::NONE, 0.0, false);
        self.members.update(s, t, value, &mut |name, v| {
            sum += v.score;
            any |= v.alert;
            top.keep_top(name, v);
        });
        let score = match self.score {
            EnsembleScore::Max => top.score,
            EnsembleScore::Mean => sum / self.members.len() as f64,
        };
        let alert = match self.threshold {
            Some(th) => score > 0.0 && score >= th,
            None => any,
        };
        Verdict { score, alert, ..top }
    }

    fn prefetch(&self, s: &M::State) {
        self.members.prefetch(s);
    }
}
