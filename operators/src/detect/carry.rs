//! [`Carry`]: a detector whose rows and alerts also carry a label taken from
//! each record (the site a registry join added to a reading, a unit, a
//! line's id), without making it part of the key. A due alert (a silence)
//! carries the label of the key's last reading.

use weir_core::Result;
use weir_core::record::EventTime;

use super::{Detector, Verdict};

/// Runs `detector` and pairs each row's value with `label(record)`: the
/// rows' value is `(detector's value, label)`.
///
/// ```text
/// flow.key_by(|r| r.device.clone())
///     .detect(Carry::new(ZScore::new(|r: &R| r.temp), |r: &R| r.site.clone()))?   // Scored<_, (f64, Site)>
/// ```
#[derive(Clone, Debug)]
pub struct Carry<D, G> {
    detector: D,
    label: G,
}

impl<D, G> Carry<D, G> {
    /// `detector`, its rows labelled with what `label` takes from each record.
    pub fn new(detector: D, label: G) -> Self {
        Carry { detector, label }
    }
}

impl<T, D, G, L> Detector<T> for Carry<D, G>
where
    D: Detector<T>,
    G: Fn(&T) -> L + 'static,
    L: timely::ExchangeData + Clone + Default,
{
    type Value = (D::Value, L);
    /// The detector's state and the label of the key's last reading.
    type State = (D::State, L);
    type Out = (D::Out, L);

    fn name(&self) -> &'static str {
        self.detector.name()
    }

    fn validate(&self) -> Result<()> {
        self.detector.validate()
    }

    fn value(&self, record: &T) -> Self::Value {
        (self.detector.value(record), (self.label)(record))
    }

    fn valid(&self, value: &Self::Value) -> bool {
        self.detector.valid(&value.0)
    }

    fn out(&self, value: &Self::Value) -> Self::Out {
        (self.detector.out(&value.0), value.1.clone())
    }

    fn update(&self, state: &mut Self::State, time: EventTime, value: &Self::Value) -> Verdict {
        state.1.clone_from(&value.1);
        self.detector.update(&mut state.0, time, &value.0)
    }

    fn due(&self, state: &mut Self::State, upto: EventTime) -> Option<(EventTime, Verdict, Self::Out)> {
        let (at, verdict, out) = self.detector.due(&mut state.0, upto)?;
        Some((at, verdict, (out, state.1.clone())))
    }

    fn next_due(&self, state: &Self::State) -> Option<EventTime> {
        self.detector.next_due(&state.0)
    }

    fn prefetch(&self, state: &Self::State) {
        self.detector.prefetch(&state.0);
    }

    fn update_each(
        &self,
        state: &mut Self::State,
        time: EventTime,
        value: &Self::Value,
        each: &mut dyn FnMut(&'static str, Verdict),
    ) {
        state.1.clone_from(&value.1);
        self.detector.update_each(&mut state.0, time, &value.0, each);
    }

    fn due_each(
        &self,
        state: &mut Self::State,
        upto: EventTime,
        each: &mut dyn FnMut(&'static str, EventTime, Verdict, Self::Out),
    ) {
        let (inner, label) = state;
        self.detector.due_each(inner, upto, &mut |name, at, v, shown| each(name, at, v, (shown, label.clone())));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::detect::Silence;

    type R = (f64, &'static str);

    fn temp(r: &R) -> f64 {
        r.0
    }

    fn site(r: &R) -> String {
        r.1.to_string()
    }

    #[test]
    fn rows_carry_the_label_and_a_silence_the_last_readings_label() {
        let d = Carry::new(Silence::new(temp as fn(&R) -> f64, Duration::from_millis(10)), site as fn(&R) -> String);
        let mut s = (Default::default(), String::new());
        for (t, r) in [(0, (1.0, "a")), (5, (2.0, "b"))] {
            let v = Detector::<R>::value(&d, &r);
            assert_eq!(Detector::<R>::out(&d, &v), (r.0, r.1.to_string()));
            Detector::<R>::update(&d, &mut s, t, &v);
        }
        assert_eq!(Detector::<R>::next_due(&d, &s), Some(15));
        let (at, verdict, out) = Detector::<R>::due(&d, &mut s, 20).expect("a silence");
        assert_eq!((at, verdict.alert, out), (15, true, (2.0, "b".to_string())));
    }
}
