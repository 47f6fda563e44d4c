//! `flow.join_table(&table, key)`: the join step's keyed logic and the
//! trait that builds it (see the [table module](super)).

use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use timely::ExchangeData;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Concat;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::{Map, ToStream};
use weir_core::flow::{Flow, FlowMeta, Origin, WatermarkUpdate};
use weir_core::record::{DeadLetter, EventTime, Rec};
use weir_core::state::{KeyCx, KeyedLogic, StepInput, keyed_step};
use weir_core::time::Epoch;
use weir_core::{Error, Result};

use super::{Seq, Table, TableKey, TableValue, Version, at_epoch, clamp};
use crate::window::Keyed;

/// A reading enriched with the table's value for its key as of its event time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Joined<T, V> {
    /// The reading.
    pub record: T,
    /// The table's value.
    pub value: V,
}

/// What the join step gets: a change to the table (a version and its diff)
/// or a reading (its key is computed where it is needed, not carried
/// through the exchange).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum JoinInput<K, T, V> {
    Update(Version<K, V>, isize),
    Reading(Rec<T>),
}

/// One consolidated version of a key: valid from, seq, value (`None`: a delete), multiplicity.
type Versioned<V> = (EventTime, Seq, Option<V>, isize);

/// A key's state: its consolidated versions in version order (valid from,
/// seq, value, multiplicity) and its readings the table is not yet known for.
/// The versions are inline up to one (most keys have one: a look-up touches
/// the state entry only, not a second allocation); they serialize as a list.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct KeyTable<T, V> {
    versions: SmallVec<[Versioned<V>; 1]>,
    waiting: Vec<Rec<T>>,
}

impl<T, V> Default for KeyTable<T, V> {
    fn default() -> Self {
        KeyTable { versions: SmallVec::new(), waiting: Vec::new() }
    }
}

impl<T, V: Clone> KeyTable<T, V> {
    /// The value as of `t`: the newest present version valid from `t` or
    /// before, unless it is a delete.
    fn as_of(&self, t: EventTime) -> Option<V> {
        let upto = self.versions.partition_point(|v| v.0 <= t);
        self.versions[..upto].iter().rev().find(|v| v.3 > 0).and_then(|v| v.2.clone())
    }

    fn apply(&mut self, v: Version<impl Sized, V>, diff: isize) {
        let at = (v.valid_from, v.seq);
        match self.versions.binary_search_by(|x| (x.0, x.1).cmp(&at)) {
            Ok(i) => {
                self.versions[i].3 += diff;
                if self.versions[i].3 == 0 {
                    self.versions.remove(i);
                }
            }
            Err(i) => self.versions.insert(i, (v.valid_from, v.seq, v.value, diff)),
        }
    }
}

/// The join step's logic: it emits each reading (with its own metadata)
/// joined with its value, or, for an unknown key, a dead letter.
pub(crate) struct JoinLogic<T, V> {
    /// Updates that came behind the table's watermark (counter `<step>.late_updates`).
    late: Arc<AtomicU64>,
    /// Where the readings came from (their dead letters re-read the input bytes).
    origin: Option<Origin>,
    _types: PhantomData<fn(T, V)>,
}

/// The time of the timer for a reading at `t`: once the watermark passes `t`
/// (a watermark `w` still admits updates at `w`).
fn due(t: EventTime) -> EventTime {
    t.saturating_add(1)
}

type Cx<'c, 'v, K, T, V> = KeyCx<'c, 'v, K, KeyTable<T, V>, Joined<T, V>>;

fn join<K: Clone, T: Serialize, V: Clone>(cx: &mut Cx<'_, '_, K, T, V>, origin: Option<&Origin>, r: Rec<T>) {
    let Rec { meta, value: record } = r;
    match cx.state().as_of(meta.event_time) {
        Some(value) => cx.emit_rec(Rec { meta, value: Joined { record, value } }),
        None => cx.dead_letter(match origin {
            Some(o) => o.dead_letter(&meta, STAGE, "unknown key".into(), &record),
            None => DeadLetter::as_json(STAGE, STAGE, &meta, "unknown key".into(), &record),
        }),
    }
}

/// The stage of the join's dead letters.
const STAGE: &str = "join_table";

impl<K, T, V> KeyedLogic<K, JoinInput<K, T, V>> for JoinLogic<T, V>
where
    K: Clone + 'static,
    T: Serialize + serde::de::DeserializeOwned + 'static,
    V: Clone + Serialize + serde::de::DeserializeOwned + 'static,
{
    type State = KeyTable<T, V>;
    type Out = Joined<T, V>;

    fn dead_letter_stage(&self) -> Option<&'static str> {
        Some(STAGE)
    }

    fn on_record(&mut self, cx: &mut Cx<'_, '_, K, T, V>, input: JoinInput<K, T, V>) {
        match input {
            JoinInput::Update(v, diff) => {
                // Readings up to the watermark may have joined without it: it counts as late.
                if diff > 0 && v.valid_from < cx.watermark() {
                    self.late.fetch_add(1, Ordering::Relaxed);
                }
                cx.state().apply(v, diff)
            }
            // The table is known up to the watermark: no update at or before
            // `t` is to come (updates of this epoch are later than it).
            JoinInput::Reading(r) if r.meta.event_time < cx.watermark() => join(cx, self.origin.as_ref(), r),
            JoinInput::Reading(r) => {
                cx.set_timer(due(r.meta.event_time));
                cx.state().waiting.push(r);
            }
        }
        let s = cx.state();
        if s.versions.is_empty() && s.waiting.is_empty() {
            cx.remove();
        }
    }

    fn on_timer(&mut self, cx: &mut Cx<'_, '_, K, T, V>, _: EventTime) {
        let wm = cx.watermark();
        let mut waiting = std::mem::take(&mut cx.state().waiting);
        waiting.sort_by_key(|r| (r.meta.event_time, r.meta.partition, r.meta.offset));
        let ready =
            if wm == EventTime::MAX { waiting.len() } else { waiting.partition_point(|r| r.meta.event_time < wm) };
        let rest = waiting.split_off(ready);
        for r in waiting {
            join(cx, self.origin.as_ref(), r);
        }
        cx.state().waiting = rest;
        let s = cx.state();
        if s.versions.is_empty() && s.waiting.is_empty() {
            cx.remove();
        }
    }
}

/// Adds `join_table` to flows.
pub trait JoinTable<'s, T> {
    /// Enriches each record with `table`'s value for `key(record)` as of the
    /// record's event time: the newest update with `valid_from <=` it. A
    /// record waits until the table is known up to its time (the update
    /// flow's watermark passed it). A key the table does not have at that
    /// time (never inserted, or deleted) makes the record a dead letter
    /// (stage `join_table`, error `unknown key`). Needs event times
    /// (`.event_time(...)` before it). The step's kind is `table-<table
    /// name>`; name it with [`Flow::named`]. The output keeps the records'
    /// metadata and source; its watermarks are the records' held back to
    /// the table's.
    fn join_table<K, V>(
        self,
        table: &Table<'s, K, V>,
        key: impl Fn(&T) -> K + 'static,
    ) -> Result<Flow<'s, Joined<T, V>>>
    where
        K: TableKey,
        V: TableValue;

    /// [`join_table`](Self::join_table), the result keyed by the same
    /// `key` (of the joined record): the join leaves each record on the
    /// worker that owns its key, so a `.detect(...)` or
    /// `.detect_alerts(...)` after it scores them there, without a second
    /// exchange (`.join_table(&t, key)?.key_by(|j| key(&j.record))` would
    /// shuffle them again). A window after it re-keys as usual.
    #[allow(clippy::type_complexity, reason = "an `impl Fn` in return position cannot be a type alias")]
    fn join_table_keyed<K, V>(
        self,
        table: &Table<'s, K, V>,
        key: impl Fn(&T) -> K + 'static,
    ) -> Result<Keyed<'s, Joined<T, V>, impl Fn(&Joined<T, V>) -> K + 'static>>
    where
        Self: Sized,
        T: 'static,
        K: TableKey,
        V: TableValue,
    {
        let key = Rc::new(key);
        let route = key.clone();
        let joined = self.join_table(table, move |r: &T| route(r))?;
        Ok(Keyed::local(joined, move |j: &Joined<T, V>| key(&j.record)))
    }
}

impl<'s, T: ExchangeData + serde::de::DeserializeOwned> JoinTable<'s, T> for Flow<'s, T> {
    fn join_table<K, V>(
        self,
        table: &Table<'s, K, V>,
        key: impl Fn(&T) -> K + 'static,
    ) -> Result<Flow<'s, Joined<T, V>>>
    where
        K: TableKey,
        V: TableValue,
    {
        let (stream, meta) = self.into_parts();
        let Some(reading_wms) = meta.watermarks else {
            return Err(Error::config(
                "join_table",
                "needs event times: call .event_time(...) on the flow before .join_table(...)",
            ));
        };
        let ctx = meta.ctx;
        let id = ctx.step_id(&format!("table-{}", table.name), meta.name.as_deref())?;
        let scope = ctx.scope();
        let start = ctx.start_epoch();
        // The initial load only into a step that starts empty.
        let versions = table.collection(ctx.restored_state(&id).is_empty());
        // Each consolidated change at the epoch it belongs to.
        let updates = versions.inner.unary(Pipeline, "TableChanges", |_, _| {
            move |input, output| {
                input.for_each(|cap, data: &mut Vec<(Version<K, V>, Epoch, isize)>| {
                    data.sort_by_key(|d| d.1);
                    for (v, t, diff) in data.drain(..) {
                        output.session(&cap.delayed(&t, 0)).give(JoinInput::<K, T, V>::Update(v, diff));
                    }
                });
            }
        });
        let readings = stream.map(JoinInput::<K, T, V>::Reading);
        // The table is known up to its update flow's watermark; a table
        // without one is known in full once the first epoch applied its load.
        // (An update flow of no partitions is the same: nothing will come.)
        let (table_wms, partitions) = match &table.updates {
            Some(u) if u.partitions > 0 => (u.watermarks.clone(), u.partitions),
            _ => {
                let done = vec![WatermarkUpdate { partition: 0, watermark: EventTime::MAX, idle: false }];
                (at_epoch(done.to_stream(scope), start), 1)
            }
        };
        let input = StepInput { records: updates.concat(readings), watermarks: Some(table_wms.clone()), partitions };
        let origin = meta.input.as_ref().map(|i| i.origin.clone());
        let logic = JoinLogic { late: ctx.counter(&format!("{id}.late_updates")), origin, _types: PhantomData };
        let key_of = move |d: &JoinInput<K, T, V>| match d {
            JoinInput::Update(v, _) => v.key.clone(),
            JoinInput::Reading(r) => key(&r.value),
        };
        // Joined readings with their own metadata; unknown keys are the step's dead letters.
        let joined = keyed_step(&ctx, &id, input, key_of, logic)?;
        let watermarks = clamp::clamp(reading_wms, table_wms, partitions);
        Ok(FlowMeta { ctx, input: meta.input, watermarks: Some(watermarks), name: None }.flow(joined))
    }
}
