//! [`Panel`]: several detectors over the same readings in one detect step,
//! each judging every reading and alerting under its own name (where an
//! [`Ensemble`](super::Ensemble) makes one judgement of them). Run with
//! [`Keyed::detect_alerts`](crate::window::Keyed::detect_alerts), a panel
//! costs one exchange, one wait for the watermark and one state look-up per
//! reading for all its members, instead of one each; its alerts are the
//! members' own, as if each ran in a step of its own, due alerts (silences)
//! included.

use weir_core::record::EventTime;
use weir_core::{Error, Result};

use super::{Detector, Members, Verdict};

/// Several detectors, each alerting on its own. Members are a tuple of two
/// to four detectors or a `Vec` of detectors of one type (as an
/// [`Ensemble`](super::Ensemble)'s); the rows show the members' value as an
/// ensemble's do.
///
/// ```text
/// flow.key_by(|r| r.device.clone())
///     .detect_alerts(Panel::new((ZScore::new(temp), Threshold::new(temp).bounds(b), Silence::new(temp, quiet))))?
/// ```
///
/// With [`Keyed::detect`](crate::window::Keyed::detect), which gives one
/// [`Scored`](super::Scored) row per reading, a panel is one detector: a
/// reading's verdict is the top-scoring member's (as
/// [`Ensemble::max`](super::Ensemble::max)) and a due alert the first
/// member's that is due.
#[derive(Clone, Debug)]
pub struct Panel<M> {
    members: M,
}

impl<M> Panel<M> {
    /// A panel of `members`.
    pub fn new(members: M) -> Self {
        Panel { members }
    }
}

impl<T, M: Members<T>> Detector<T> for Panel<M>
where
    M::Value: Clone,
{
    type Value = M::Value;
    /// The members' states and the key's last value (what a due alert shows).
    type State = (M::State, Option<M::Value>);
    type Out = M::Out;

    fn name(&self) -> &'static str {
        "panel"
    }

    fn validate(&self) -> Result<()> {
        if self.members.is_empty() {
            return Err(Error::config("panel.members", "a panel needs at least one member"));
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

    fn update(&self, s: &mut Self::State, t: EventTime, value: &M::Value) -> Verdict {
        let mut top = Verdict::NONE;
        self.update_each(s, t, value, &mut |name, v| top.keep_top(name, v));
        top
    }

    fn update_each(
        &self,
        s: &mut Self::State,
        t: EventTime,
        value: &M::Value,
        each: &mut dyn FnMut(&'static str, Verdict),
    ) {
        s.1 = Some(value.clone());
        self.members.update(&mut s.0, t, value, each);
    }

    fn due(&self, s: &mut Self::State, upto: EventTime) -> Option<(EventTime, Verdict, M::Out)> {
        let mut first = None;
        self.due_each(s, upto, &mut |name, at, v, shown| {
            if first.is_none() {
                first = Some((at, Verdict { member: Some(name), ..v }, shown));
            }
        });
        first
    }

    fn due_each(
        &self,
        s: &mut Self::State,
        upto: EventTime,
        each: &mut dyn FnMut(&'static str, EventTime, Verdict, M::Out),
    ) {
        let (members, last) = s;
        let Some(last) = last.as_ref() else { return };
        self.members.due(members, upto, &mut |name, at, v| each(name, at, v, self.members.out(last)));
    }

    fn next_due(&self, s: &Self::State) -> Option<EventTime> {
        self.members.next_due(&s.0)
    }

    fn prefetch(&self, s: &Self::State) {
        self.members.prefetch(&s.0);
    }
}
