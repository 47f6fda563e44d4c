//! [`DeadLetterOutput`]: the dead-letter side of an operator, in one place
//! (below the build API, so that the stateful kit's steps have one too).
//! It adds an output of dead letters to an operator being built, counts what
//! it sends as `dead_letters.{stage}` and registers its stream with the build
//! context, so that `Dataflow::dead_letters` collects it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use timely::dataflow::operators::CapabilityTrait;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

use crate::ctx::Ctx;
use crate::record::DeadLetter;
use crate::stream::VecOutput;
use crate::time::Epoch;

/// An operator's output of the dead letters of one stage.
pub struct DeadLetterOutput {
    out: VecOutput<DeadLetter>,
    count: Arc<AtomicU64>,
}

impl DeadLetterOutput {
    /// Adds an output of dead letters of `stage` to `builder` (its next output
    /// port) and registers its stream with `ctx`; what it sends is counted as
    /// `dead_letters.{stage}`.
    pub fn new<'s>(builder: &mut OperatorBuilder<'s, Epoch>, ctx: &Ctx<'s>, stage: &str) -> Self {
        let (out, stream) = builder.new_output::<Vec<DeadLetter>>();
        ctx.register_dead_letters(stream);
        DeadLetterOutput { out: OutputBuilder::from(out), count: ctx.counter(&format!("dead_letters.{stage}")) }
    }

    /// Sends `letters` at the time of `cap` (a capability for this output).
    pub fn give<C: CapabilityTrait<Epoch>>(&mut self, cap: &C, letters: impl IntoIterator<Item = DeadLetter>) {
        let mut out = self.out.activate();
        let mut session = out.session(cap);
        let mut n = 0u64;
        for letter in letters {
            session.give(letter);
            n += 1;
        }
        if n > 0 {
            self.count.fetch_add(n, Ordering::Relaxed);
        }
    }
}
