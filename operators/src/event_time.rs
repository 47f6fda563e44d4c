//! `flow.event_time(|r| r.ts, delay)` and `flow.source_time(delay)`: set each
//! record's event time and derive per-partition watermarks (largest event time
//! seen minus `delay`, the allowed out-of-orderness).
//!
//! ```text
//! flow.event_time(|r| r.ts, Duration::from_secs(2))?   // a field of the record
//! flow.source_time(Duration::from_secs(2))?            // the time the source gave (Kafka's message timestamp)
//! ```
//!
//! Both are one operator that differs only in where a record's time comes
//! from: a function of the value, or the time decode copied from the source's
//! chunk ([`weir_core::record::Chunk::times`]). A record the source gave no
//! time is a dead letter of stage `source_time`, never dropped.
//!
//! A watermark emitted at epoch `e` reflects exactly the records of epochs
//! `<= e` (maxima are kept per epoch and folded in epoch order once the
//! frontier passes), so a window operator that applies epoch `e`'s records
//! before its watermarks never sees its own records as late. A finished
//! partition's watermark becomes `EventTime::MAX`. Watermarks are broadcast:
//! every window worker takes the minimum over all partitions.

use std::collections::BTreeMap;
use std::time::Duration;

use rustc_hash::FxHashMap;
use serde::Serialize;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::vec::Broadcast;
use weir_core::flow::{DeadLetterOutput, PartitionEvent, VecOutput, WatermarkUpdate};
use weir_core::record::{DeadLetter, EventTime, Meta, PartitionId, Rec};
use weir_core::time::Epoch;
use weir_core::{Error, Flow, Result};

/// The error of a `source_time` dead letter: the record has no source time.
pub const NO_SOURCE_TIME: &str = "the source gave no timestamp for this record";

/// Adds `event_time` and `source_time` to flows read from a source.
pub trait EventTimeExt<'s, T: 'static> {
    /// Assigns event times (ms) with `time` and tracks watermarks allowing `delay` of disorder.
    fn event_time(self, time: impl Fn(&T) -> EventTime + 'static, delay: Duration) -> Result<Flow<'s, T>>;

    /// Uses the event time the source gave each record (Kafka: the message
    /// timestamp) and tracks watermarks allowing `delay` of disorder. A record
    /// without one (a source that gives no times, a message without a timestamp)
    /// becomes a dead letter with stage `source_time` and error [`NO_SOURCE_TIME`].
    fn source_time(self, delay: Duration) -> Result<Flow<'s, T>>
    where
        T: Serialize;
}

impl<'s, T: 'static> EventTimeExt<'s, T> for Flow<'s, T> {
    fn event_time(self, time: impl Fn(&T) -> EventTime + 'static, delay: Duration) -> Result<Flow<'s, T>> {
        watermarked(self, "event_time", TimeFrom::Value(time), delay)
    }

    fn source_time(self, delay: Duration) -> Result<Flow<'s, T>>
    where
        T: Serialize,
    {
        let Some(origin) = self.input.as_ref().map(|i| i.origin.clone()) else {
            return Err(Error::config("source_time", "needs a flow read from a source"));
        };
        if !origin.source.gives_times() {
            return Err(Error::config(
                "source_time",
                format!("source `{}` gives records no time of their own (Kafka does): use event_time", origin.name),
            ));
        }
        let dead_letter =
            Box::new(move |r: &Rec<T>| origin.dead_letter(&r.meta, "source_time", NO_SOURCE_TIME.to_owned(), &r.value));
        watermarked(self, "source_time", TimeFrom::<T, fn(&T) -> EventTime>::Source(dead_letter), delay)
    }
}

/// Makes the dead letter of a record without a source time.
type NoTimeLetter<T> = Box<dyn Fn(&Rec<T>) -> DeadLetter>;

/// Where [`watermarked`] takes each record's event time from.
enum TimeFrom<T, F> {
    /// A function of the value, for every record.
    Value(F),
    /// `meta.event_time` as decode set it from the source; a record without one
    /// ([`Meta::NO_TIME`]) becomes the dead letter this makes.
    Source(NoTimeLetter<T>),
}

/// Raises partition `p`'s maximum in `maxima` to `t`.
fn raise(maxima: &mut FxHashMap<PartitionId, EventTime>, p: PartitionId, t: EventTime) {
    let m = maxima.entry(p).or_insert(t);
    if t > *m {
        *m = t;
    }
}

/// The operator behind `event_time` and `source_time` (named `step` in errors and counters).
fn watermarked<'s, T: 'static, F: Fn(&T) -> EventTime + 'static>(
    flow: Flow<'s, T>,
    step: &str,
    from: TimeFrom<T, F>,
    delay: Duration,
) -> Result<Flow<'s, T>> {
    let Some(info) = flow.input.clone() else {
        return Err(Error::config(step, "needs a flow read from a source"));
    };
    let delay = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
    let ctx = flow.ctx.clone();
    let (stream, meta) = flow.into_parts();
    let name = if matches!(from, TimeFrom::Source(_)) { "SourceTime" } else { "EventTime" };
    let mut builder = OperatorBuilder::new(name.to_owned(), ctx.scope());
    let mut records = builder.new_input(stream, Pipeline);
    let mut events = builder.new_input(info.events, Pipeline);
    let (rec_out, recs) = builder.new_output::<Vec<Rec<T>>>();
    // Only `source_time` can reject records: `event_time` registers no dead letters.
    let mut dead_out = matches!(from, TimeFrom::Source(_)).then(|| DeadLetterOutput::new(&mut builder, &ctx, step));
    // The last output: its capability is the one the operator holds (see `caps.pop()`).
    let (wm_out, wms) = builder.new_output::<Vec<WatermarkUpdate>>();
    let mut rec_out: VecOutput<Rec<T>> = OutputBuilder::from(rec_out);
    let mut wm_out: VecOutput<WatermarkUpdate> = OutputBuilder::from(wm_out);
    let start = ctx.start_epoch();
    builder.build(move |mut caps| {
        let mut wm_cap = caps.pop();
        drop(caps);
        if let Some(c) = wm_cap.as_mut() {
            c.downgrade(&start);
        }
        // Per epoch: the largest event time per partition, finished partitions,
        // and idleness changes in the order they happened.
        type Pending = (FxHashMap<PartitionId, EventTime>, Vec<(PartitionId, bool)>);
        let mut pending: BTreeMap<Epoch, Pending> = BTreeMap::new();
        let mut emitted: FxHashMap<PartitionId, (EventTime, bool)> = FxHashMap::default();
        move |frontiers| {
            let mut rec_h = rec_out.activate();
            let mut wm_h = wm_out.activate();
            records.for_each(|cap, data: &mut Vec<Rec<T>>| {
                let Some(&epoch) = cap.least() else { return };
                let maxima = &mut pending.entry(epoch).or_default().0;
                match &from {
                    TimeFrom::Value(time) => {
                        for r in data.iter_mut() {
                            let t = time(&r.value);
                            r.meta.event_time = t;
                            raise(maxima, r.meta.partition, t);
                        }
                    }
                    TimeFrom::Source(dead_letter) => {
                        let mut rejected = Vec::new();
                        data.retain(|r| {
                            if r.meta.event_time != Meta::NO_TIME {
                                raise(maxima, r.meta.partition, r.meta.event_time);
                                return true;
                            }
                            rejected.push(dead_letter(r));
                            false
                        });
                        if let Some(out) = dead_out.as_mut().filter(|_| !rejected.is_empty()) {
                            out.give(&cap, rejected);
                        }
                    }
                }
                rec_h.session(&cap).give_container(data);
            });
            events.for_each(|cap, data: &mut Vec<PartitionEvent>| {
                let Some(&epoch) = cap.least() else { return };
                let (maxima, idleness) = pending.entry(epoch).or_default();
                for event in data.drain(..) {
                    match event {
                        PartitionEvent::Finished(p) => {
                            maxima.insert(p, EventTime::MAX);
                        }
                        PartitionEvent::Idle(p) => idleness.push((p, true)),
                        PartitionEvent::Active(p) => idleness.push((p, false)),
                    }
                }
            });
            let Some(held) = wm_cap.as_mut() else { return };
            let f = frontiers.iter().flat_map(|f| f.frontier().iter().copied().collect::<Vec<_>>()).min();
            let ready = match f {
                Some(f) => {
                    let later = pending.split_off(&f);
                    std::mem::replace(&mut pending, later)
                }
                None => std::mem::take(&mut pending),
            };
            for (epoch, (maxima, idleness)) in ready {
                let cap = held.delayed(&epoch);
                let mut session = wm_h.session(&cap);
                let mut changed: FxHashMap<PartitionId, (EventTime, bool)> = FxHashMap::default();
                for (partition, max) in maxima {
                    let wm = if max == EventTime::MAX { max } else { max.saturating_sub(delay) };
                    let prev = emitted.get(&partition).copied().unwrap_or((EventTime::MIN, false));
                    changed.insert(partition, (wm.max(prev.0), prev.1));
                }
                for (partition, idle) in idleness {
                    let prev = emitted.get(&partition).copied().unwrap_or((EventTime::MIN, false));
                    changed.entry(partition).or_insert(prev).1 = idle;
                }
                let mut parts: Vec<_> = changed.into_iter().collect();
                parts.sort_unstable_by_key(|p| p.0);
                for (partition, (watermark, idle)) in parts {
                    let prev = emitted.entry(partition).or_insert((EventTime::MIN, false));
                    if watermark > prev.0 || idle != prev.1 {
                        *prev = (watermark, idle);
                        session.give(WatermarkUpdate { partition, watermark, idle });
                    }
                }
            }
            match f {
                Some(f) if f > *held.time() => held.downgrade(&f),
                Some(_) => {}
                None => wm_cap = None,
            }
        }
    });
    let mut flow = meta.flow(recs);
    flow.watermarks = Some(wms.broadcast());
    Ok(flow)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    use proptest::prelude::*;
    use serde::Deserialize;
    use weir_core::Pipeline;

    use super::*;
    use crate::prelude::*;
    use crate::testing::{Collect, Memory, Record};

    #[derive(Clone, Debug, Serialize, Deserialize)]
    struct Ev {
        k: String,
        v: f64,
    }

    /// `(key, window start)` → `(count, sum)`.
    type Windows = BTreeMap<(String, EventTime), (u64, f64)>;

    fn record(time: EventTime, k: &str, v: f64) -> Record {
        (Some(time), format!(r#"{{"k":"{k}","v":{v:?}}}"#).into_bytes())
    }

    /// Runs decode → source_time(delay) → one-second windows of count and sum
    /// on two workers, `epoch` records per epoch and `per_read` per chunk.
    fn run(
        parts: Vec<Vec<Record>>,
        delay: Duration,
        (epoch, per_read): (u64, usize),
    ) -> anyhow::Result<(Windows, Vec<DeadLetter>)> {
        let rows = Arc::new(Mutex::new(Vec::new()));
        let dead = Arc::new(Mutex::new(Vec::new()));
        let source = Memory::new(parts, per_read);
        let (r, d) = (rows.clone(), dead.clone());
        Pipeline::new("source-time").workers(2).bounded(true).epoch_records(epoch, 2).run(move |p| {
            p.source(source.clone())?
                .decode::<Ev>(Json)
                .source_time(delay)?
                .key_by(|e| e.k.clone())
                .window(Tumbling::seconds(1))
                .aggregate((Count, Sum(|e: &Ev| e.v)))?
                .map(|w| (w.key, w.start, w.value.0, w.value.1))
                .sink(Collect(r.clone()))?;
            p.dead_letters().sink(Collect(d.clone()))
        })?;
        let mut windows = Windows::new();
        for (k, start, count, sum) in rows.lock().expect("rows").drain(..) {
            let previous = windows.insert((k, start), (count, sum));
            anyhow::ensure!(previous.is_none(), "a window fired twice");
        }
        let dead = std::mem::take(&mut *dead.lock().expect("dead letters"));
        Ok((windows, dead))
    }

    /// The windows of `parts` computed directly.
    fn reference(parts: &[Vec<Record>]) -> Windows {
        let mut windows = Windows::new();
        for (time, payload) in parts.iter().flatten() {
            let (Some(t), Ok(e)) = (time.filter(|&t| t != Meta::NO_TIME), serde_json::from_slice::<Ev>(payload)) else {
                continue;
            };
            let w = windows.entry((e.k, t - t.rem_euclid(1000))).or_default();
            w.0 += 1;
            w.1 += e.v;
        }
        windows
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(6))]

        /// Records out of order by less than the allowed delay give exactly the
        /// windows of the same records in time order (and of the reference): none
        /// is late, and the source's times, not the payload, decide the windows.
        #[test]
        fn disorder_within_the_bound_gives_the_windows_of_sorted_input(
            parts in prop::collection::vec(
                prop::collection::vec((1i64..40, 0i64..=300, 0usize..3, -50i64..50), 1..120),
                1..4,
            ),
            epoch in 1u64..40,
            per_read in 1usize..10,
        ) {
            // Time i is base + the sum of the steps, plus a jitter of at most the delay:
            // every record is at most `delay` behind the largest time before it.
            let delay = Duration::from_millis(300);
            let mut shuffled = Vec::new();
            for part in &parts {
                let mut t = 1_700_000_000_000i64;
                let recs: Vec<Record> = part
                    .iter()
                    .map(|&(step, jitter, key, v)| {
                        t += step;
                        record(t + jitter, ["a", "b", "c"][key], v as f64)
                    })
                    .collect();
                shuffled.push(recs);
            }
            let sorted: Vec<Vec<Record>> = shuffled
                .iter()
                .map(|p| {
                    let mut p = p.clone();
                    p.sort_by_key(|r| r.0);
                    p
                })
                .collect();
            let (out_of_order, dead) = run(shuffled.clone(), delay, (epoch, per_read)).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(dead.is_empty(), "{:?}", dead.first());
            let (in_order, dead) = run(sorted, delay, (epoch, per_read)).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(dead.is_empty());
            prop_assert_eq!(&out_of_order, &in_order);
            prop_assert_eq!(&out_of_order, &reference(&shuffled));
        }
    }

    /// The same disorder beyond the allowed delay is late: the bound is what
    /// the test above relies on.
    #[test]
    fn disorder_beyond_the_bound_is_late() -> anyhow::Result<()> {
        let parts = vec![vec![record(1500, "a", 1.0), record(900, "a", 2.0), record(5000, "a", 3.0)]];
        let (windows, dead) = run(parts.clone(), Duration::from_millis(600), (1, 1))?;
        anyhow::ensure!(dead.is_empty() && windows == reference(&parts), "{windows:?} {dead:?}");
        let (windows, dead) = run(parts, Duration::ZERO, (1, 1))?;
        anyhow::ensure!(dead.len() == 1 && dead[0].stage == "late" && dead[0].offset == 1, "{dead:?}");
        anyhow::ensure!(!windows.contains_key(&("a".to_owned(), 0)), "{windows:?}");
        Ok(())
    }

    /// A record the source gave no time is a dead letter with its original
    /// bytes and position; the others go on.
    #[test]
    fn a_record_without_a_source_time_is_a_dead_letter() -> anyhow::Result<()> {
        let parts = vec![
            vec![record(100, "a", 1.0), record(Meta::NO_TIME, "a", 2.0), record(200, "a", 4.0)],
            vec![record(1100, "b", 8.0)],
        ];
        let (windows, dead) = run(parts.clone(), Duration::ZERO, (2, 2))?;
        anyhow::ensure!(windows == reference(&parts), "{windows:?}");
        anyhow::ensure!(windows[&("a".to_owned(), 0)] == (2, 5.0), "{windows:?}");
        anyhow::ensure!(dead.len() == 1, "{dead:?}");
        let d = &dead[0];
        anyhow::ensure!(d.stage == "source_time" && d.error == NO_SOURCE_TIME, "{d:?}");
        anyhow::ensure!((d.partition, d.offset, d.event_time) == (0, 1, None), "{d:?}");
        anyhow::ensure!(d.payload == parts[0][1].1, "{:?}", String::from_utf8_lossy(&d.payload));

        // A source without times is refused when the pipeline is built.
        let untimed = vec![parts[0].iter().map(|r| (None, r.1.clone())).collect()];
        let err = run(untimed, Duration::ZERO, (2, 2)).err().map(|e| e.to_string()).unwrap_or_default();
        anyhow::ensure!(err.contains("source_time") && err.contains("no time of their own"), "{err}");
        Ok(())
    }
}
