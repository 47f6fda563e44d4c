//! The dead-letter side of an operator. [`DeadLetterOutput`] (defined in
//! the stateful kit's module, below this one, and re-exported here) adds an
//! output of dead letters to an operator being built, counts what it sends
//! as `dead_letters.{stage}` and registers its stream with the build
//! context, so that [`Dataflow::dead_letters`](super::Dataflow::dead_letters)
//! collects it. [`with_dead_letters`] is the common shape built on it: records
//! in, records out plus dead letters (decode, `try_map`). An operator of
//! another shape (the window's combiner, whose late records are dead letters)
//! adds a [`DeadLetterOutput`] to its own builder; a step of the kit has one
//! when its logic names a stage (`StepLogic::dead_letter_stage`).
//!
//! The letters themselves are made by [`DeadLetter::new`] (or
//! [`Origin::dead_letter`](super::Origin::dead_letter), which re-reads the
//! record's input bytes first).

use timely::container::CapacityContainerBuilder;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::InputCapability;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::{OutputBuilder, Session};

use crate::ctx::Ctx;
use crate::record::DeadLetter;
pub use crate::state::DeadLetterOutput;
use crate::stream::VecOutput;
use crate::time::Epoch;

/// What the logic of a [`with_dead_letters`] stage sends for one input batch:
/// records and dead letters, at the batch's time.
pub struct Emit<'a: 'b, 'b, O: 'static> {
    records: Session<'a, 'b, Epoch, CapacityContainerBuilder<Vec<O>>, InputCapability<Epoch>>,
    dead: &'b mut Vec<DeadLetter>,
}

impl<O: 'static> Emit<'_, '_, O> {
    /// Sends one record.
    pub fn give(&mut self, record: O) {
        self.records.give(record);
    }

    /// Sends `batch` as one message, leaving it empty (with its capacity, when
    /// it is returned).
    pub fn give_batch(&mut self, batch: &mut Vec<O>) {
        self.records.give_container(batch);
    }

    /// Sends a dead letter instead of a record.
    pub fn dead_letter(&mut self, letter: DeadLetter) {
        self.dead.push(letter);
    }
}

/// A stage named `name` from `input` to records, whose failures are dead
/// letters of `stage`: `logic` gets each input batch and sends what it makes
/// through an [`Emit`]. The dead letters are counted as `dead_letters.{stage}`
/// and registered with `ctx`; the records are the returned stream.
pub fn with_dead_letters<'s, I, O, L>(
    ctx: &Ctx<'s>,
    name: String,
    stage: &str,
    input: StreamVec<'s, Epoch, I>,
    mut logic: L,
) -> StreamVec<'s, Epoch, O>
where
    I: 'static,
    O: 'static,
    L: for<'a, 'b> FnMut(&mut Vec<I>, &mut Emit<'a, 'b, O>) + 'static,
{
    let mut builder = OperatorBuilder::new(name, ctx.scope());
    let mut input = builder.new_input(input, Pipeline);
    let (out, records) = builder.new_output::<Vec<O>>();
    let mut out: VecOutput<O> = OutputBuilder::from(out);
    let mut dead_out = DeadLetterOutput::new(&mut builder, ctx, stage);
    builder.build(move |_caps| {
        let mut dead: Vec<DeadLetter> = Vec::new();
        move |_frontiers| {
            let mut out_h = out.activate();
            input.for_each(|cap, data: &mut Vec<I>| {
                {
                    let mut emit = Emit { records: out_h.session(&cap), dead: &mut dead };
                    logic(data, &mut emit);
                }
                if !dead.is_empty() {
                    dead_out.give(&cap, dead.drain(..));
                }
            });
        }
    });
    records
}
