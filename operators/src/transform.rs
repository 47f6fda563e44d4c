//! Stateless stages: `filter` (what it drops is counted as `filtered`, not
//! dead-lettered: a filter is not validation), `map`, `try_map`, whose
//! `Err` becomes a dead letter naming the stage, and `concat`, the records
//! of two branches of one flow as one flow.

use std::sync::atomic::Ordering;

use serde::Serialize;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Concat;
use timely::dataflow::operators::generic::Operator;
use weir_core::Flow;
use weir_core::flow::with_dead_letters;
use weir_core::record::{DeadLetter, Rec};

/// Adds stateless stages to flows.
pub trait Transform<'s, T: 'static> {
    /// Keeps the records for which `pred` is true; counts the others as `filtered`.
    fn filter(self, pred: impl Fn(&T) -> bool + 'static) -> Flow<'s, T>;
    /// Transforms every record.
    fn map<U: 'static>(self, f: impl Fn(T) -> U + 'static) -> Flow<'s, U>;
    /// Transforms every record; an `Err` sends the record to the dead letters
    /// with `stage` and the error's message. The dead letter's payload is the
    /// record's original input bytes (re-read from the source), or the record
    /// as JSON when it has none (a derived record) or the source cannot re-read.
    fn try_map<U: 'static, E: std::fmt::Display>(
        self,
        stage: &str,
        f: impl Fn(&T) -> Result<U, E> + 'static,
    ) -> Flow<'s, U>
    where
        T: Serialize;
    /// The records of both flows, as one. The result keeps `self`'s source
    /// and watermarks: concatenate branches of one flow (several detectors'
    /// alerts), not flows of different sources.
    fn concat(self, other: Flow<'s, T>) -> Flow<'s, T>;
}

impl<'s, T: 'static> Transform<'s, T> for Flow<'s, T> {
    fn filter(self, pred: impl Fn(&T) -> bool + 'static) -> Flow<'s, T> {
        let filtered = self.ctx.counter("filtered");
        let (stream, meta) = self.into_parts();
        let stream = stream.unary(Pipeline, "Filter", move |_, _| {
            move |input, output| {
                input.for_each(|cap, data: &mut Vec<Rec<T>>| {
                    let before = data.len();
                    data.retain(|r| pred(&r.value));
                    filtered.fetch_add((before - data.len()) as u64, Ordering::Relaxed);
                    output.session(&cap).give_container(data);
                });
            }
        });
        meta.flow(stream)
    }

    fn map<U: 'static>(self, f: impl Fn(T) -> U + 'static) -> Flow<'s, U> {
        let (stream, meta) = self.into_parts();
        let stream = stream.unary(Pipeline, "Map", move |_, _| {
            move |input, output| {
                input.for_each(|cap, data: &mut Vec<Rec<T>>| {
                    output.session(&cap).give_iterator(data.drain(..).map(|r| Rec { meta: r.meta, value: f(r.value) }));
                });
            }
        });
        meta.flow(stream)
    }

    fn try_map<U: 'static, E: std::fmt::Display>(
        self,
        stage: &str,
        f: impl Fn(&T) -> Result<U, E> + 'static,
    ) -> Flow<'s, U>
    where
        T: Serialize,
    {
        let ctx = self.ctx.clone();
        let origin = self.input.as_ref().map(|i| i.origin.clone());
        let (stream, meta) = self.into_parts();
        let name = format!("TryMap({stage})");
        let step = stage.to_string();
        let ok = with_dead_letters(&ctx, name, stage, stream, move |data: &mut Vec<Rec<T>>, emit| {
            for r in data.drain(..) {
                match f(&r.value) {
                    Ok(value) => emit.give(Rec { meta: r.meta, value }),
                    Err(e) => {
                        let error = e.to_string();
                        emit.dead_letter(match &origin {
                            Some(info) => info.dead_letter(&r.meta, &step, error, &r.value),
                            None => DeadLetter::of_row(&r.value, error, &step, ""),
                        });
                    }
                }
            }
        });
        meta.flow(ok)
    }

    fn concat(self, other: Flow<'s, T>) -> Flow<'s, T> {
        let (stream, meta) = self.into_parts();
        meta.flow(stream.concat(other.stream))
    }
}
