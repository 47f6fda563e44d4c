//! The user-facing build API: a [`Dataflow`] is one worker's view of the
//! pipeline being built; [`Raw`] is a source's stream of raw chunks and
//! [`Flow`] a stream of typed records. Operators (decode, filter, windows, in
//! weir-operators) are extension traits on these; sources and sinks come from
//! connectors. Everything a checkpoint needs is registered by these calls:
//! the user writes no checkpoint code.
//!
//! `Flow` wraps a timely stream together with the build context rather than
//! being a bare extension trait on `Stream`, because every stage needs the
//! context (dead letters, snapshot streams, restored state, watermarks).

use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Concatenate;
use timely::dataflow::operators::generic::Operator;

use crate::checkpoint::{Part, PartBody};
use crate::error::{Error, Result};
use crate::record::{Chunk, DeadLetter, EventTime, PartitionId, Rec};
use crate::runtime::Ctx;
use crate::runtime::epochs::EpochDriver;
use crate::sink::Sink;
use crate::time::Epoch;

/// An operator output of `Vec<D>` batches at epochs (what every Weir operator builds).
pub type VecOutput<D> =
    timely::dataflow::operators::generic::OutputBuilder<Epoch, timely::container::CapacityContainerBuilder<Vec<D>>>;

/// A source partition event, sent at the epoch it happened in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PartitionEvent {
    /// The partition has no more input (bounded runs): it stops holding the watermark back.
    Finished(PartitionId),
}

/// A partition's watermark, broadcast to every worker once per epoch it changed in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatermarkUpdate {
    /// The source partition.
    pub partition: PartitionId,
    /// No event time at or below this is expected from the partition any more
    /// (`EventTime::MAX` once it finished).
    pub watermark: EventTime,
}

/// What the stages after a source know about it.
#[derive(Clone)]
pub struct InputInfo<'s> {
    /// Source name (dead letters' `source`).
    pub source: String,
    /// Number of partitions (the window watermark is the minimum over all of them).
    pub partitions: u32,
    /// Finished-partition events.
    pub events: StreamVec<'s, Epoch, PartitionEvent>,
}

/// Recycles chunk buffers between a source and the stage that consumes its
/// chunks on the same worker, so reading allocates no new buffers in steady
/// state (fresh large buffers cost page faults on every read).
#[derive(Clone, Default)]
pub struct ChunkPool(std::rc::Rc<std::cell::RefCell<Vec<Chunk>>>);

impl ChunkPool {
    /// A cleared chunk, recycled when one is available.
    pub fn get(&self) -> Chunk {
        self.0.borrow_mut().pop().unwrap_or_default()
    }

    /// Returns a chunk's buffers for reuse.
    pub fn put(&self, mut chunk: Chunk) {
        let mut pool = self.0.borrow_mut();
        if pool.len() < 64 {
            chunk.clear();
            pool.push(chunk);
        }
    }
}

/// One worker's view of the pipeline being built.
pub struct Dataflow<'s> {
    pub(crate) ctx: Ctx<'s>,
}

impl<'s> Dataflow<'s> {
    /// The build context.
    pub fn ctx(&self) -> &Ctx<'s> {
        &self.ctx
    }

    /// All dead letters registered so far, as one stream to send to a sink.
    /// Call it after building the stages that produce them.
    pub fn dead_letters(&mut self) -> Flow<'s, DeadLetter> {
        let scope = self.ctx.scope();
        let streams: Vec<_> = self.ctx.0.dead.borrow_mut().drain(..).collect();
        self.ctx.0.dead_taken.set(true);
        let stream = scope.concatenate(streams).unary(Pipeline, "DeadLetterMeta", |_, _| {
            move |input, output| {
                input.for_each(|cap, data: &mut Vec<DeadLetter>| {
                    let mut session = output.session(&cap);
                    for d in data.drain(..) {
                        let meta = crate::record::Meta {
                            partition: d.partition,
                            offset: d.offset,
                            event_time: d.event_time.unwrap_or(crate::record::Meta::NO_TIME),
                        };
                        session.give(Rec { meta, value: d });
                    }
                });
            }
        });
        Flow { stream, ctx: self.ctx.clone(), input: None, watermarks: None }
    }
}

/// A source's stream of raw chunks.
pub struct Raw<'s> {
    /// The chunks.
    pub stream: StreamVec<'s, Epoch, Chunk>,
    /// The build context.
    pub ctx: Ctx<'s>,
    /// The source.
    pub input: InputInfo<'s>,
    /// Where consumers return chunks for the source to reuse.
    pub pool: ChunkPool,
}

/// Everything a [`Flow`] carries besides its records.
pub struct FlowMeta<'s> {
    /// The build context.
    pub ctx: Ctx<'s>,
    /// The source the records come from.
    pub input: Option<InputInfo<'s>>,
    /// Per-partition watermarks.
    pub watermarks: Option<StreamVec<'s, Epoch, WatermarkUpdate>>,
}

impl<'s> FlowMeta<'s> {
    /// A flow over `stream` with this metadata.
    pub fn flow<U>(self, stream: StreamVec<'s, Epoch, Rec<U>>) -> Flow<'s, U> {
        Flow { stream, ctx: self.ctx, input: self.input, watermarks: self.watermarks }
    }
}

/// A stream of typed records with their provenance.
pub struct Flow<'s, T> {
    /// The records.
    pub stream: StreamVec<'s, Epoch, Rec<T>>,
    /// The build context.
    pub ctx: Ctx<'s>,
    /// The source these records come from (none for derived streams such as window results).
    pub input: Option<InputInfo<'s>>,
    /// Per-partition watermarks, once `event_time` assigned event times.
    pub watermarks: Option<StreamVec<'s, Epoch, WatermarkUpdate>>,
}

impl<'s, T: 'static> Flow<'s, T> {
    /// Splits the flow into its record stream and everything else, so an
    /// operator can consume the stream and rebuild a flow around its output.
    pub fn into_parts(self) -> (StreamVec<'s, Epoch, Rec<T>>, FlowMeta<'s>) {
        let Flow { stream, ctx, input, watermarks } = self;
        (stream, FlowMeta { ctx, input, watermarks })
    }

    /// Sends the records to a transactional sink: each worker writes its share,
    /// staged until the checkpoint that covers it commits.
    pub fn sink<S: Sink<T>>(self, sink: S) -> Result<()> {
        let ctx = self.ctx.clone();
        let operator = ctx.operator_id(sink.kind());
        let sctx = ctx.sink_context(&operator);
        let mut writer = sink.open(&sctx)?;
        let failure = ctx.failure();
        let worker = ctx.worker();
        let rows_out = ctx.counter(&format!("{operator}.rows"));
        let mut driver: EpochDriver<Vec<T>> = EpochDriver::new(ctx.start_epoch(), ctx.schedule());
        let parts = self.stream.unary_frontier(Pipeline, &format!("Sink({operator})"), move |cap, _| {
            let mut cap = Some(cap);
            move |(input, frontier), output| {
                input.for_each(|time, data: &mut Vec<Rec<T>>| {
                    if let Some(&t) = time.least() {
                        driver.push(t, data.drain(..).map(|r| r.value).collect());
                    }
                });
                let Some(held) = cap.as_mut() else { return };
                if failure.aborted() {
                    return;
                }
                let f = frontier.frontier().iter().min().copied();
                let mut emit = |epoch: Epoch, files: Vec<crate::checkpoint::Publish>| {
                    let part = Part { epoch, worker, body: PartBody::Output { operator: operator.clone(), files } };
                    output.session(&held.delayed(&epoch)).give(part);
                };
                let step = (|| -> Result<()> {
                    for step in driver.advance(f) {
                        for mut rows in step.data {
                            rows_out.fetch_add(rows.len() as u64, Ordering::Relaxed);
                            writer.write(&mut rows)?;
                        }
                        if step.checkpoint {
                            emit(step.epoch, writer.stage(step.epoch)?);
                        }
                    }
                    if f.is_none() {
                        let at = *held.time();
                        emit(at, writer.stage(at)?);
                    }
                    Ok(())
                })();
                if let Err(e) = step {
                    failure.fail(e);
                    return;
                }
                match f {
                    Some(f) if f > *held.time() => held.downgrade(&f),
                    Some(_) => {}
                    None => cap = None,
                }
            }
        });
        ctx.register_parts(parts);
        Ok(())
    }
}

/// A startup error for a pipeline that produces dead letters nobody consumes.
pub(crate) fn unconsumed_dead_letters() -> Error {
    Error::config(
        "dead_letters",
        "the pipeline produces dead letters but sends them nowhere: add \
         `p.dead_letters().sink(...)` after the stages that produce them",
    )
}
