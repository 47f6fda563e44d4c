//! `flow.event_time(|r| r.ts, delay)`: sets each record's event time and
//! derives per-partition watermarks (largest event time seen minus `delay`,
//! the allowed out-of-orderness).
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
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::vec::Broadcast;
use weir_core::flow::VecOutput;
use weir_core::flow::{PartitionEvent, WatermarkUpdate};
use weir_core::record::{EventTime, PartitionId, Rec};
use weir_core::time::Epoch;
use weir_core::{Error, Flow, Result};

/// Adds `event_time` to flows read from a source.
pub trait EventTimeExt<'s, T: 'static> {
    /// Assigns event times (ms) with `time` and tracks watermarks allowing `delay` of disorder.
    fn event_time(self, time: impl Fn(&T) -> EventTime + 'static, delay: Duration) -> Result<Flow<'s, T>>;
}

impl<'s, T: 'static> EventTimeExt<'s, T> for Flow<'s, T> {
    fn event_time(self, time: impl Fn(&T) -> EventTime + 'static, delay: Duration) -> Result<Flow<'s, T>> {
        let Some(info) = self.input.clone() else {
            return Err(Error::config("event_time", "needs a flow read from a source"));
        };
        let delay = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
        let ctx = self.ctx.clone();
        let (stream, meta) = self.into_parts();
        let mut builder = OperatorBuilder::new("EventTime".to_owned(), ctx.scope());
        let mut records = builder.new_input(stream, Pipeline);
        let mut events = builder.new_input(info.events, Pipeline);
        let (rec_out, recs) = builder.new_output::<Vec<Rec<T>>>();
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
                    for r in data.iter_mut() {
                        let t = time(&r.value);
                        r.meta.event_time = t;
                        let m = maxima.entry(r.meta.partition).or_insert(t);
                        if t > *m {
                            *m = t;
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
}
