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
//!
//! Every method of [`Dataflow`] is here; the operators the build API adds
//! are its submodules: `source` (the source operator), `sink` (the sink
//! operator behind [`Flow::sink`]) and `dead_letters` ([`DeadLetterOutput`],
//! [`with_dead_letters`]). The build API stands on the build context
//! ([`Ctx`]), epoch order and the stateful kit, never on the runtime: the
//! runtime builds a worker's dataflow through it and adds the commit
//! operator after `Dataflow::finish`.

mod dead_letters;
mod sink;
mod source;

use serde::Serialize;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Concatenate;
use timely::dataflow::operators::generic::Operator;

pub use self::dead_letters::{DeadLetterOutput, Emit, with_dead_letters};
pub use crate::ctx::Ctx;
pub use crate::stream::{PartitionEvent, VecOutput, WatermarkUpdate};

use crate::error::{Error, Result};
use crate::record::{Chunk, DeadLetter, Meta, Rec};
use crate::sink::Sink;
use crate::source::Source;
use crate::state::{KeyedLogic, StepInput, keyed_step};
use crate::time::Epoch;

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
    /// The build API over a fresh build context (the runtime makes one per worker).
    pub(crate) fn new(ctx: Ctx<'s>) -> Self {
        Dataflow { ctx }
    }

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
                        let meta = Meta {
                            partition: d.partition,
                            offset: d.offset,
                            event_time: d.event_time.unwrap_or(Meta::NO_TIME),
                        };
                        session.give(Rec { meta, value: d });
                    }
                });
            }
        });
        Flow { stream, ctx: self.ctx.clone(), input: None, watermarks: None, name: None }
    }

    /// Adds a source: this worker reads the partitions assigned to it.
    ///
    /// Its partitions and end offsets come from the planning pass, so every
    /// worker of a run reads up to the same ends; what the run reads (the
    /// source's identity and, when bounded, its ends) is recorded in every
    /// checkpoint and checked at every start.
    pub fn source<S: Source>(&mut self, src: S) -> Result<Raw<'s>> {
        source::build(&self.ctx, src)
    }

    /// Ends the build: checks that every dead letter goes somewhere and hands
    /// the context back for the runtime to add the commit operator.
    pub(crate) fn finish(self) -> Result<Ctx<'s>> {
        if !self.ctx.0.dead.borrow().is_empty() {
            return Err(unconsumed_dead_letters());
        }
        Ok(self.ctx)
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
    /// [`KeyedLogic`]): records go to the worker
    /// that owns their key's group; state is checkpointed and restored with
    /// any worker count. Timers fire as the flow's watermark passes them (a
    /// flow without event times fires them at the end of its input).
    pub fn stateful<K, L>(self, name: &str, key: impl Fn(&T) -> K + 'static, logic: L) -> Result<Flow<'s, L::Out>>
    where
        T: timely::ExchangeData,
        K: std::hash::Hash + Eq + Clone + Serialize + serde::de::DeserializeOwned + 'static,
        L: KeyedLogic<K, Rec<T>>,
    {
        let id = self.ctx.step_id("stateful", Some(name))?;
        let input = StepInput {
            records: self.stream,
            watermarks: self.watermarks,
            partitions: self.input.as_ref().map_or(0, |i| i.partitions),
        };
        let stream = keyed_step(&self.ctx, &id, input, move |r: &Rec<T>| key(&r.value), logic)?;
        Ok(Flow::derived(self.ctx, stream))
    }

    /// Sends the records to a transactional sink: each worker writes its share,
    /// staged until the checkpoint that covers it commits. Rows the sink cannot
    /// encode become dead letters (stage `sink`) at the epoch they were written in.
    pub fn sink<S: Sink<T>>(self, sink: S) -> Result<()>
    where
        T: Serialize,
    {
        sink::build(self, sink)
    }
}

impl Origin {
    /// A dead letter for the record at `meta` of this source, rejected by
    /// `stage`: its payload is the record's original input bytes, re-read from
    /// the source ([`Source::record_at`]); only when the source cannot re-read
    /// them is it `value` as JSON.
    pub fn dead_letter<T: Serialize>(&self, meta: &Meta, stage: &str, error: String, value: &T) -> DeadLetter {
        let original = match self.source.record_at(meta.partition, meta.offset) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::warn!(source = %self.name, partition = meta.partition, offset = meta.offset, "cannot re-read a dead letter's input: {e}");
                None
            }
        };
        match original {
            Some(payload) => {
                let length = payload.len() as u64;
                DeadLetter::new(stage, &self.name, meta, error, payload, length)
            }
            None => DeadLetter::as_json(stage, &self.name, meta, error, value),
        }
    }
}

/// A startup error for a pipeline that produces dead letters nobody consumes.
fn unconsumed_dead_letters() -> Error {
    Error::config(
        "dead_letters",
        "the pipeline produces dead letters but sends them nowhere: add \
         `p.dead_letters().sink(...)` after the stages that produce them",
    )
}
