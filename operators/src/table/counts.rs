//! `flow.count_by(key)`: how many records each key has had so far,
//! maintained continuously as a differential collection of `(key, count)`
//! (per-site alert counts: `alerts.count_by(|a| a.site.clone())`).
//!
//! The counts are the state of a keyed step of the kit (step kind `count`,
//! named with [`Flow::named`]), so they are checkpointed and restored with
//! any worker count like every step's; its changes become a differential
//! collection, consolidated per epoch: after each epoch a key whose count
//! went from 3 to 5 shows as `(key, 3, -1)` and `(key, 5, +1)`, whatever the
//! order of the epoch's records. Epochs are processing time, so which
//! intermediate counts appear depends on batching; the count a key reaches
//! after the whole input does not.

use std::hash::Hash;
use std::marker::PhantomData;

use differential_dataflow::{AsCollection, VecCollection};
use serde::{Deserialize, Serialize};
use timely::ExchangeData;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use weir_core::Result;
use weir_core::flow::{Ctx, Flow};
use weir_core::record::{EventTime, Meta, Rec};
use weir_core::state::{KeyCx, KeyedLogic, StepInput, keyed_step};
use weir_core::time::Epoch;

/// One change of a key's count: `diff` +1 when the key reached `count`, -1
/// when it left it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountChange<K> {
    /// The key.
    pub key: K,
    /// The count.
    pub count: i64,
    /// +1: the key's count is now `count`; -1: it no longer is.
    pub diff: i64,
}

/// The per-key counts of a flow, as a differential collection.
pub struct Counts<'s, K: 'static> {
    ctx: Ctx<'s>,
    collection: VecCollection<'s, Epoch, (K, i64), isize>,
}

impl<'s, K: Clone + 'static> Counts<'s, K> {
    /// The consolidated collection of `(key, count)`: one `+1` per key with
    /// records, at its current count.
    pub fn collection(&self) -> VecCollection<'s, Epoch, (K, i64), isize> {
        self.collection.clone()
    }

    /// The collection's changes as rows (no event time: `Meta::NO_TIME`),
    /// in the epoch they happened, for a sink.
    pub fn changes(self) -> Flow<'s, CountChange<K>> {
        let stream = self.collection.inner.unary(Pipeline, "CountChanges", |_, _| {
            move |input, output| {
                input.for_each(|cap, data: &mut Vec<((K, i64), Epoch, isize)>| {
                    data.sort_by_key(|d| d.1);
                    for ((key, count), t, diff) in data.drain(..) {
                        let value = CountChange { key, count, diff: diff as i64 };
                        output.session(&cap.delayed(&t, 0)).give(Rec { meta: Meta::derived(Meta::NO_TIME), value });
                    }
                });
            }
        });
        Flow::derived(self.ctx, stream)
    }
}

/// Adds `count_by` to flows.
pub trait CountBy<'s, T> {
    /// Counts the records of each `key(record)`, continuously: a keyed step
    /// (kind `count`, named with [`Flow::named`]) whose counts are
    /// checkpointed like every step's, its changes a differential collection
    /// consolidated per epoch (a key going from 3 to 5 in an epoch shows as
    /// `(key, 3)` -1 and `(key, 5)` +1, whatever the records' order).
    fn count_by<K>(self, key: impl Fn(&T) -> K + 'static) -> Result<Counts<'s, K>>
    where
        K: ExchangeData + Clone + Hash + Eq + Ord + std::fmt::Debug + serde::de::DeserializeOwned;
}

/// The count step's logic: a key's state is its count; each record emits
/// the change it makes.
struct CountLogic<T>(PhantomData<fn(T)>);

impl<K: Clone + 'static, T: 'static> KeyedLogic<K, Rec<T>> for CountLogic<T> {
    type State = i64;
    type Out = (K, i64, isize);

    fn on_record(&mut self, cx: &mut KeyCx<'_, '_, K, i64, (K, i64, isize)>, _: Rec<T>) {
        let before = *cx.state();
        if before > 0 {
            cx.emit(Meta::NO_TIME, (cx.key().clone(), before, -1));
        }
        *cx.state() = before + 1;
        cx.emit(Meta::NO_TIME, (cx.key().clone(), before + 1, 1));
    }

    fn on_timer(&mut self, _: &mut KeyCx<'_, '_, K, i64, (K, i64, isize)>, _: EventTime) {}
}

impl<'s, T: ExchangeData> CountBy<'s, T> for Flow<'s, T> {
    fn count_by<K>(self, key: impl Fn(&T) -> K + 'static) -> Result<Counts<'s, K>>
    where
        K: ExchangeData + Clone + Hash + Eq + Ord + std::fmt::Debug + serde::de::DeserializeOwned,
    {
        let (stream, meta) = self.into_parts();
        let ctx = meta.ctx;
        let id = ctx.step_id("count", meta.name.as_deref())?;
        // Counting needs no watermark: each record counts in its epoch.
        let input = StepInput { records: stream, watermarks: None, partitions: 0 };
        let changes = keyed_step(&ctx, &id, input, move |r: &Rec<T>| key(&r.value), CountLogic(PhantomData))?;
        // Each change as a differential update at its epoch, consolidated per epoch.
        let collection = changes
            .unary(Pipeline, "CountDiffs", |_, _| {
                move |input, output| {
                    input.for_each(|cap, data: &mut Vec<Rec<(K, i64, isize)>>| {
                        let Some(&t) = cap.least() else { return };
                        output
                            .session(&cap)
                            .give_iterator(data.drain(..).map(|r| ((r.value.0, r.value.1), t, r.value.2)));
                    });
                }
            })
            .as_collection()
            .consolidate();
        Ok(Counts { ctx, collection })
    }
}
