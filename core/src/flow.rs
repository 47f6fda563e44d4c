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
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::{Operator, OutputBuilder};

use crate::checkpoint::{Part, PartBody};
use crate::error::{Error, Result};
use crate::record::{Chunk, DeadLetter, EventTime, Meta, PartitionId, Rec};
use crate::runtime::Ctx;
use crate::runtime::epochs::{EpochDriver, follow_frontier};
use crate::sink::{Rejected, Sink};
use crate::source::Source;
use crate::time::Epoch;

/// An operator output of `Vec<D>` batches at epochs (what every Weir operator builds).
pub type VecOutput<D> =
    timely::dataflow::operators::generic::OutputBuilder<Epoch, timely::container::CapacityContainerBuilder<Vec<D>>>;

/// A source partition event, sent at the epoch it happened in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PartitionEvent {
    /// The partition has no more input (bounded runs): it stops holding the watermark back.
    Finished(PartitionId),
    /// The partition had no data for the pipeline's `idle_timeout` (unbounded
    /// runs): it stops holding the watermark back until it has data again.
    Idle(PartitionId),
    /// An idle partition has data again (sent before that data, in the same epoch).
    Active(PartitionId),
}

/// A partition's watermark, broadcast to every worker once per epoch it changed in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatermarkUpdate {
    /// The source partition.
    pub partition: PartitionId,
    /// No event time at or below this is expected from the partition any more
    /// (`EventTime::MAX` once it finished).
    pub watermark: EventTime,
    /// The partition is idle: the window watermark is the minimum over the
    /// partitions that are not (records it sends later may then be late).
    pub idle: bool,
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
    /// The source itself, to re-read a record's original bytes for a dead letter.
    pub origin: Origin,
}

/// A handle on a source that later stages keep to build dead letters that
/// carry a record's original input bytes.
#[derive(Clone)]
pub struct Origin {
    /// Source name (dead letters' `source`).
    pub name: String,
    /// The source.
    pub source: std::sync::Arc<dyn Source>,
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
        Flow { stream, ctx: self.ctx.clone(), input: None, watermarks: None, name: None }
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
    /// The name the next stateful step takes ([`Flow::named`]).
    pub name: Option<String>,
}

impl<'s> FlowMeta<'s> {
    /// A flow over `stream` with this metadata.
    pub fn flow<U>(self, stream: StreamVec<'s, Epoch, Rec<U>>) -> Flow<'s, U> {
        Flow { stream, ctx: self.ctx, input: self.input, watermarks: self.watermarks, name: self.name }
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
    /// The name the next stateful step takes ([`Flow::named`]).
    pub name: Option<String>,
}

/// A flow can feed several sinks or stages: each gets every record.
impl<'s, T: Clone + 'static> Clone for Flow<'s, T> {
    fn clone(&self) -> Self {
        Flow {
            stream: self.stream.clone(),
            ctx: self.ctx.clone(),
            input: self.input.clone(),
            watermarks: self.watermarks.clone(),
            name: self.name.clone(),
        }
    }
}

impl<'s, T: 'static> Flow<'s, T> {
    /// Splits the flow into its record stream and everything else, so an
    /// operator can consume the stream and rebuild a flow around its output.
    pub fn into_parts(self) -> (StreamVec<'s, Epoch, Rec<T>>, FlowMeta<'s>) {
        let Flow { stream, ctx, input, watermarks, name } = self;
        (stream, FlowMeta { ctx, input, watermarks, name })
    }

    /// A flow over `stream` in the build context `ctx`, with no source behind it
    /// (a stateful step's output).
    pub fn derived(ctx: Ctx<'s>, stream: StreamVec<'s, Epoch, Rec<T>>) -> Self {
        Flow { stream, ctx, input: None, watermarks: None, name: None }
    }

    /// Names the next stateful step built on this flow (a window, a sink, a
    /// detector): its checkpointed state, counters and staged files are kept
    /// under the name. Without one a step is named after its kind (`window`,
    /// `parquet`), with `-2`, `-3`, ... for later steps of the same kind. Name
    /// the steps of a pipeline that will change: a checkpoint holding state of
    /// a step the pipeline no longer has is refused at start (with the step's
    /// name), and a step the checkpoint lacks starts empty.
    pub fn named(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }

    /// A keyed stateful step named `name`, running `logic` on each record of a
    /// key with the key's state and event-time timers (see
    /// [`KeyedLogic`](crate::state::KeyedLogic)): records go to the worker
    /// that owns their key's group; state is checkpointed and restored with
    /// any worker count. Timers fire as the flow's watermark passes them (a
    /// flow without event times fires them at the end of its input).
    pub fn stateful<K, L>(self, name: &str, key: impl Fn(&T) -> K + 'static, logic: L) -> Result<Flow<'s, L::Out>>
    where
        T: timely::ExchangeData,
        K: std::hash::Hash + Eq + Clone + Serialize + serde::de::DeserializeOwned + 'static,
        L: crate::state::KeyedLogic<K, Rec<T>>,
    {
        let id = self.ctx.step_id("stateful", Some(name))?;
        let input = crate::state::StepInput {
            records: self.stream,
            watermarks: self.watermarks,
            partitions: self.input.as_ref().map_or(0, |i| i.partitions),
        };
        let stream = crate::state::keyed_step(&self.ctx, &id, input, move |r: &Rec<T>| key(&r.value), logic)?;
        Ok(Flow::derived(self.ctx, stream))
    }

    /// Sends the records to a transactional sink: each worker writes its share,
    /// staged until the checkpoint that covers it commits. Rows the sink cannot
    /// encode become dead letters (stage `sink`) at the epoch they were written in.
    pub fn sink<S: Sink<T>>(self, sink: S) -> Result<()>
    where
        T: Serialize,
    {
        let ctx = self.ctx.clone();
        let operator = ctx.step_id(sink.kind(), self.name.as_deref())?;
        let rejects = sink.rejects_rows();
        if ctx.planning() {
            // Nothing is opened or written while planning.
            if sink.delivers()
                && let Ok(mut plan) = ctx.shared().plan.lock()
            {
                plan.delivering.push(operator.clone());
            }
            if rejects {
                ctx.register_dead_letters(timely::dataflow::operators::generic::operator::empty(ctx.scope()));
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
        let source = self.input.as_ref().map_or_else(|| operator.clone(), |i| i.source.clone());
        let mut driver: EpochDriver<Vec<T>> = EpochDriver::new(ctx.start_epoch(), ctx.schedule());
        let mut builder = OperatorBuilder::new(format!("Sink({operator})"), ctx.scope());
        let mut input = builder.new_input(self.stream, Pipeline);
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
                        driver.push(t, data.drain(..).map(|r| r.value).collect());
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
                            writer.write(&mut rows, &mut rejected)?;
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
}

impl DeadLetter {
    /// A dead letter for a derived row (no source position): its payload is the
    /// row as JSON (or empty, with the encoder's message added to `error`, when
    /// even that fails).
    pub fn of_row<T: Serialize>(row: &T, error: String, stage: &str, source: &str) -> DeadLetter {
        let (payload, error) = match serde_json::to_vec(row) {
            Ok(p) => (p, error),
            Err(e) => (Vec::new(), format!("{error} (the row could not be written as JSON either: {e})")),
        };
        DeadLetter {
            payload_truncated: false,
            payload_length: payload.len() as u64,
            payload,
            error,
            stage: stage.to_string(),
            source: source.to_string(),
            partition: Meta::derived(0).partition,
            offset: Meta::derived(0).offset,
            event_time: None,
        }
    }
}

impl Origin {
    /// A dead letter for the record at `meta` of this source, rejected by
    /// `stage`: its payload is the record's original input bytes, re-read from
    /// the source ([`Source::record_at`]); only when the source cannot re-read
    /// them is it `value` as JSON.
    pub fn dead_letter<T: Serialize>(&self, meta: &Meta, stage: &str, error: String, value: &T) -> DeadLetter {
        let event_time = (meta.event_time != Meta::NO_TIME).then_some(meta.event_time);
        let original = match self.source.record_at(meta.partition, meta.offset) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::warn!(source = %self.name, partition = meta.partition, offset = meta.offset, "cannot re-read a dead letter's input: {e}");
                None
            }
        };
        let mut d = match original {
            Some(payload) => DeadLetter {
                payload_length: payload.len() as u64,
                payload,
                error,
                stage: stage.to_string(),
                source: self.name.clone(),
                ..DeadLetter::default()
            },
            None => DeadLetter::of_row(value, error, stage, &self.name),
        };
        // The record's position, whichever payload it carries.
        d.partition = meta.partition;
        d.offset = meta.offset;
        d.event_time = event_time;
        d
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
