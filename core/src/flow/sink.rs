//! The sink operator behind [`Flow::sink`]: it stashes rows by epoch, hands
//! each complete epoch's rows to the sink's writer, stages the writer's files
//! at every checkpoint epoch and sends them to the commit as an `Output` part;
//! rows the writer rejects become dead letters of stage `sink`. Nothing is
//! opened while planning.

use std::sync::atomic::Ordering;

use serde::Serialize;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::operator::empty;

use super::Flow;
use crate::checkpoint::{Part, PartBody};
use crate::epochs::{EpochDriver, follow_frontier};
use crate::error::Result;
use crate::record::{DeadLetter, Rec};
use crate::sink::{Rejected, Sink};
use crate::stream::VecOutput;

/// Builds the sink operator for `flow` (see the module's documentation).
pub(super) fn build<T, S>(flow: Flow<'_, T>, sink: S) -> Result<()>
where
    T: Serialize + 'static,
    S: Sink<T>,
{
    let ctx = flow.ctx.clone();
    let operator = ctx.step_id(sink.kind(), flow.name.as_deref())?;
    let rejects = sink.rejects_rows();
    if ctx.planning() {
        // Nothing is opened or written while planning.
        if sink.delivers()
            && let Ok(mut plan) = ctx.shared().plan.lock()
        {
            plan.delivering.push(operator.clone());
        }
        if rejects {
            ctx.register_dead_letters(empty(ctx.scope()));
        }
        return Ok(());
    }
    let sctx = ctx.sink_context(&operator);
    let mut writer = sink.open(&sctx)?;
    if ctx.worker() == 0
        && sink.delivers()
        && let Some(handler) = sink.after_commit(&sctx)?
    {
        ctx.0.after_commit.borrow_mut().push((operator.clone(), handler));
    }
    let failure = ctx.failure();
    let worker = ctx.worker();
    let rows_out = ctx.counter(&format!("{operator}.rows"));
    let dead = ctx.counter("dead_letters.sink");
    let source = flow.input.as_ref().map_or_else(|| operator.clone(), |i| i.source.clone());
    let mut driver: EpochDriver<Vec<Rec<T>>> = EpochDriver::new(ctx.start_epoch(), ctx.schedule());
    let mut builder = OperatorBuilder::new(format!("Sink({operator})"), ctx.scope());
    let mut input = builder.new_input(flow.stream, Pipeline);
    let (part_out, parts) = builder.new_output::<Vec<Part>>();
    let (dead_out, dead_letters) = builder.new_output::<Vec<DeadLetter>>();
    let mut part_out: VecOutput<Part> = OutputBuilder::from(part_out);
    let mut dead_out: VecOutput<DeadLetter> = OutputBuilder::from(dead_out);
    builder.build(move |caps| {
        let mut caps = Some(caps);
        let mut rejected: Vec<Rejected<T>> = Vec::new();
        move |frontiers| {
            input.for_each(|time, data: &mut Vec<Rec<T>>| {
                if let Some(&t) = time.least() {
                    // Kept as records: the writer reads the rows in place (`write_records`).
                    driver.push(t, std::mem::take(data));
                }
            });
            let Some(held) = caps.as_mut() else { return };
            if failure.aborted() {
                return;
            }
            let f = frontiers.iter().filter_map(|f| f.frontier().iter().min().copied()).min();
            let mut part_h = part_out.activate();
            let mut dead_h = dead_out.activate();
            let step = (|| -> Result<()> {
                for step in driver.advance(f) {
                    for mut rows in step.data {
                        let n = rows.len() as u64;
                        writer.write_records(&mut rows, &mut rejected)?;
                        rows_out.fetch_add(n - rejected.len() as u64, Ordering::Relaxed);
                        if !rejected.is_empty() {
                            dead.fetch_add(rejected.len() as u64, Ordering::Relaxed);
                            let cap = held[1].delayed(&step.epoch);
                            let mut session = dead_h.session(&cap);
                            for r in rejected.drain(..) {
                                session.give(DeadLetter::of_row(&r.row, r.reason, "sink", &source));
                            }
                        }
                    }
                    if step.checkpoint {
                        let files = writer.stage(step.epoch)?;
                        let part = Part {
                            epoch: step.epoch,
                            worker,
                            body: PartBody::Output { operator: operator.clone(), files },
                        };
                        part_h.session(&held[0].delayed(&step.epoch)).give(part);
                    }
                }
                if f.is_none() {
                    let at = *held[0].time();
                    let files = writer.stage(at)?;
                    part_h.session(&held[0]).give(Part {
                        epoch: at,
                        worker,
                        body: PartBody::Output { operator: operator.clone(), files },
                    });
                }
                Ok(())
            })();
            drop((part_h, dead_h));
            if let Err(e) = step {
                failure.fail(e);
                return;
            }
            follow_frontier(&mut caps, f);
        }
    });
    ctx.register_parts(parts);
    if rejects {
        ctx.register_dead_letters(dead_letters);
    }
    Ok(())
}
