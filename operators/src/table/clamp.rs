//! The joined flow's watermarks: each reading partition's watermark held
//! back to the table's, so that no reading that waited in the join is late
//! for a stage after it. Applied in epoch order, like the join step, so a
//! watermark at epoch `e` never passes a reading the join emits at `e` or later.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use weir_core::epochs::follow_frontier;
use weir_core::flow::{VecOutput, WatermarkUpdate};
use weir_core::record::{EventTime, PartitionId};
use weir_core::state::{WatermarkTable, frontier_min};
use weir_core::time::Epoch;

/// `readings`' watermarks, each at most the watermark of `table` (over `partitions`).
pub(crate) fn clamp<'s>(
    readings: StreamVec<'s, Epoch, WatermarkUpdate>,
    table: StreamVec<'s, Epoch, WatermarkUpdate>,
    partitions: u32,
) -> StreamVec<'s, Epoch, WatermarkUpdate> {
    let scope = readings.scope();
    let mut builder = OperatorBuilder::new("ClampWatermarks".to_string(), scope);
    let mut own = builder.new_input(readings, Pipeline);
    let mut theirs = builder.new_input(table, Pipeline);
    let (out, stream) = builder.new_output::<Vec<WatermarkUpdate>>();
    let mut out: VecOutput<WatermarkUpdate> = OutputBuilder::from(out);
    builder.build(move |caps| {
        let mut caps = Some(caps);
        let mut pending: BTreeMap<Epoch, (Vec<WatermarkUpdate>, Vec<WatermarkUpdate>)> = BTreeMap::new();
        let mut table = WatermarkTable::new(partitions);
        // Per reading partition: its own watermark and idleness, and what was sent.
        let mut parts: FxHashMap<PartitionId, (EventTime, bool)> = FxHashMap::default();
        let mut sent: FxHashMap<PartitionId, (EventTime, bool)> = FxHashMap::default();
        move |frontiers| {
            own.for_each(|cap, data: &mut Vec<WatermarkUpdate>| {
                if let Some(&t) = cap.least() {
                    pending.entry(t).or_default().0.append(data);
                }
            });
            theirs.for_each(|cap, data: &mut Vec<WatermarkUpdate>| {
                if let Some(&t) = cap.least() {
                    pending.entry(t).or_default().1.append(data);
                }
            });
            let f = frontier_min(frontiers);
            let Some(held) = caps.as_mut() else { return };
            let ready = match f {
                Some(f) => {
                    let later = pending.split_off(&f);
                    std::mem::replace(&mut pending, later)
                }
                None => std::mem::take(&mut pending),
            };
            let mut out_h = out.activate();
            for (epoch, (mine, table_updates)) in ready {
                table.apply(&table_updates);
                for u in mine {
                    let p = parts.entry(u.partition).or_insert((EventTime::MIN, false));
                    *p = (p.0.max(u.watermark), u.idle);
                }
                let limit = table.current();
                let mut changed: Vec<WatermarkUpdate> = parts
                    .iter()
                    .filter_map(|(&partition, &(wm, idle))| {
                        let now = (wm.min(limit), idle);
                        let before = sent.get(&partition).copied().unwrap_or((EventTime::MIN, false));
                        (now.0 > before.0 || now.1 != before.1).then_some(WatermarkUpdate {
                            partition,
                            watermark: now.0.max(before.0),
                            idle,
                        })
                    })
                    .collect();
                changed.sort_unstable_by_key(|u| u.partition);
                for u in &changed {
                    sent.insert(u.partition, (u.watermark, u.idle));
                }
                if !changed.is_empty() {
                    out_h.session(&held[0].delayed(&epoch)).give_iterator(changed.into_iter());
                }
            }
            drop(out_h);
            follow_frontier(&mut caps, f);
        }
    });
    stream
}
