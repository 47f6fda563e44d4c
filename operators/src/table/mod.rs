//! Tables: reference data that changes (a device registry: device -> site,
//! thresholds), held as a differential-dataflow collection, and
//! `flow.join_table(&table, key)`, which enriches each reading with the
//! table's value **as of the reading's event time**.
//!
//! ```text
//! let table = Table::from_updates("devices", updates_flow)?   // Flow<TableUpdate<K, V>> with event times
//!     .with_initial(registry_rows)?;                           // loaded before any reading joins
//! readings.event_time(|r| r.ts, delay)?
//!     .join_table(&table, |r| r.device.clone())?               // Flow<Joined<Reading, Device>>
//! ```
//!
//! A table is fed by [`TableUpdate`]s (insert, update or delete of a key,
//! each with the event time it is `valid_from`): an initial load (a `Vec`,
//! e.g. read from a CSV before the pipeline starts) and/or a flow of updates
//! (a file or topic decoded like any flow, whose event times are the
//! updates' `valid_from`: `.event_time(|u| u.valid_from, delay)`). The
//! updates become a differential collection of [`Version`]s (key, version,
//! value; diff +1 each), consolidated (`Collection::consolidate`) and fed,
//! epoch by epoch, into the join step.
//!
//! **The join** is a keyed step of the kit (`keyed_step`, keyed by the
//! table's key, step kind `table-<table name>`, named with
//! [`Flow::named`]): per key it keeps the consolidated versions, sorted by
//! `(valid_from, origin, partition, offset)`, and the readings that wait. A
//! reading at event time `t` is joined once the table is known up to `t`:
//! when the watermark of the update flow has passed `t` (an initial load
//! alone is known in full at the first epoch, after it was applied). It then
//! takes the newest version with `valid_from <= t`; none, or a delete, makes
//! it a dead letter (stage `join_table`, error `unknown key`), never dropped.
//! Epochs (processing time) never decide a result, so a restarted run
//! enriches exactly as an uninterrupted one, with any worker count.
//!
//! **Checkpoints**: the step's state, through the kit, by key group: a
//! key's consolidated versions (the table's consolidated input) and its
//! waiting readings; a snapshot for epoch `e` holds exactly the effect of
//! epochs `<= e`. The initial load is applied in a run that restores no state
//! of the step; a restored run takes the table from its checkpoint.
//!
//! **Watermarks**: the joined flow's per-partition watermarks are the
//! readings' clamped to the table's watermark, so a stage after the join
//! (`.detect`, a window) never sees a reading that waited in the join as late.
//!
//! An update behind the update flow's watermark when it arrives (later than
//! the flow's allowed disorder) is applied to readings joined after it
//! arrives, not to those already joined: give the update flow the disorder
//! it has. Such updates are counted (counter `table-<name>.late_updates`, or
//! `<step name>.late_updates`, in the run's summary), so a bound that is too
//! tight shows.
//!
//! [`CountBy::count_by`] maintains per-key counts of a flow continuously as
//! a differential collection (per-site alert counts), emitted as changes.

mod clamp;
mod counts;
mod join;
#[cfg(test)]
mod tests;

use std::hash::Hash;
use std::rc::Rc;

use differential_dataflow::{AsCollection, VecCollection};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use timely::ExchangeData;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::ToStream;
use weir_core::flow::{Ctx, Flow, WatermarkUpdate, with_dead_letters};
use weir_core::record::{EventTime, Offset, PartitionId, Rec};
use weir_core::time::Epoch;
use weir_core::{Error, Result};

pub use counts::{CountBy, CountChange, Counts};
pub use join::{JoinTable, Joined};

/// What a [`TableUpdate`] does to its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// The key gets a value (an insert of a key the table has is an update).
    Insert,
    /// The key's value changes (an update of a key the table lacks is an insert).
    Update,
    /// The key leaves the table.
    Delete,
}

impl std::str::FromStr for Op {
    type Err = String;

    /// `insert`, `update` or `delete` (any case), as an updates file spells them.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "insert" => Ok(Op::Insert),
            "update" => Ok(Op::Update),
            "delete" => Ok(Op::Delete),
            other => Err(format!("unknown table op {other:?}: expected insert, update or delete")),
        }
    }
}

/// One change to a table: from `valid_from` (event time, ms) on, `key` has
/// `value` (insert, update) or is absent (delete).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TableUpdate<K, V> {
    /// Insert, update or delete.
    pub op: Op,
    /// The key.
    pub key: K,
    /// The value (`None` for a delete; required for an insert or update).
    pub value: Option<V>,
    /// The event time from which the change holds.
    pub valid_from: EventTime,
}

impl<K, V> TableUpdate<K, V> {
    /// `key` has `value` from `valid_from` on.
    pub fn insert(key: K, value: V, valid_from: EventTime) -> Self {
        TableUpdate { op: Op::Insert, key, value: Some(value), valid_from }
    }

    /// `key`'s value is `value` from `valid_from` on.
    pub fn update(key: K, value: V, valid_from: EventTime) -> Self {
        TableUpdate { op: Op::Update, key, value: Some(value), valid_from }
    }

    /// `key` is absent from `valid_from` on.
    pub fn delete(key: K, valid_from: EventTime) -> Self {
        TableUpdate { op: Op::Delete, key, value: None, valid_from }
    }

    /// What the update sets: the value, or `None` for a delete; an error
    /// message for an insert or update without a value.
    fn effect(self) -> std::result::Result<(K, EventTime, Option<V>), &'static str> {
        match (self.op, self.value) {
            (Op::Delete, _) => Ok((self.key, self.valid_from, None)),
            (_, Some(v)) => Ok((self.key, self.valid_from, Some(v))),
            (_, None) => Err("an insert or update without a value"),
        }
    }
}

/// Where an update comes from, the last tie-breaker between versions of a
/// key with the same `valid_from`: the initial load (by index) before the
/// update flow (by partition and offset).
pub type Seq = (u8, PartitionId, Offset);

/// One update as the table's differential collection holds it: key, version
/// (`valid_from`, then [`Seq`]) and value (`None`: deleted). Equality, order
/// and hash are those of `(key, valid_from, seq)`, which identify an update,
/// so values need not be ordered (a registry of `f64` thresholds).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Version<K, V> {
    /// The key.
    pub key: K,
    /// From when the version holds.
    pub valid_from: EventTime,
    /// Where the update came from.
    pub seq: Seq,
    /// The value, `None` for a delete.
    pub value: Option<V>,
}

impl<K: Ord, V> Version<K, V> {
    fn id(&self) -> (&K, EventTime, Seq) {
        (&self.key, self.valid_from, self.seq)
    }
}

impl<K: Ord, V> PartialEq for Version<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.id() == other.id()
    }
}

impl<K: Ord, V> Eq for Version<K, V> {}

impl<K: Ord, V> PartialOrd for Version<K, V> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<K: Ord, V> Ord for Version<K, V> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.id().cmp(&other.id())
    }
}

impl<K: Ord + Hash, V> Hash for Version<K, V> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.id().hash(state)
    }
}

/// What a table's key needs: sent between workers, hashed to its key group,
/// ordered in the differential collection.
pub trait TableKey: ExchangeData + Clone + Hash + Eq + Ord + std::fmt::Debug + DeserializeOwned {}
impl<K: ExchangeData + Clone + Hash + Eq + Ord + std::fmt::Debug + DeserializeOwned> TableKey for K {}

/// What a table's value needs: sent between workers and checkpointed.
pub trait TableValue: ExchangeData + Clone + std::fmt::Debug + DeserializeOwned {}
impl<V: ExchangeData + Clone + std::fmt::Debug + DeserializeOwned> TableValue for V {}

/// The update flow of a table, as a differential collection.
struct Updates<'s, K: 'static, V: 'static> {
    collection: VecCollection<'s, Epoch, Version<K, V>, isize>,
    watermarks: StreamVec<'s, Epoch, WatermarkUpdate>,
    partitions: u32,
}

impl<K: Clone + 'static, V: Clone + 'static> Clone for Updates<'_, K, V> {
    fn clone(&self) -> Self {
        Updates {
            collection: self.collection.clone(),
            watermarks: self.watermarks.clone(),
            partitions: self.partitions,
        }
    }
}

/// A table of reference data keyed by `K` with values `V`, to join flows
/// against with [`JoinTable::join_table`] (see the [module docs](self)).
pub struct Table<'s, K: 'static, V: 'static> {
    name: String,
    ctx: Ctx<'s>,
    initial: Rc<Vec<(K, EventTime, Option<V>)>>,
    updates: Option<Updates<'s, K, V>>,
}

impl<K: Clone + 'static, V: Clone + 'static> Clone for Table<'_, K, V> {
    fn clone(&self) -> Self {
        Table {
            name: self.name.clone(),
            ctx: self.ctx.clone(),
            initial: self.initial.clone(),
            updates: self.updates.clone(),
        }
    }
}

/// Checks an initial load: every insert and update has a value.
fn initial_rows<K, V>(name: &str, rows: Vec<TableUpdate<K, V>>) -> Result<Vec<(K, EventTime, Option<V>)>> {
    rows.into_iter()
        .enumerate()
        .map(|(i, u)| u.effect().map_err(|e| Error::config(format!("table {name}: initial row {i}"), e)))
        .collect()
}

impl<'s, K: TableKey, V: TableValue> Table<'s, K, V> {
    /// A table that holds `rows` (applied in the first epoch, before any
    /// reading joins) and never changes. An insert or update without a value
    /// is a config error naming the row.
    pub fn load(ctx: &Ctx<'s>, name: &str, rows: Vec<TableUpdate<K, V>>) -> Result<Self> {
        Ok(Table {
            name: name.to_string(),
            ctx: ctx.clone(),
            initial: Rc::new(initial_rows(name, rows)?),
            updates: None,
        })
    }

    /// A table fed by the flow `updates`, which must have event times (the
    /// updates' `valid_from`: `.event_time(|u| u.valid_from, delay)`): its
    /// watermark says up to when the table is known. An insert or update
    /// without a value is a dead letter (stage `table`).
    pub fn from_updates(name: &str, updates: Flow<'s, TableUpdate<K, V>>) -> Result<Self> {
        let (stream, meta) = updates.into_parts();
        let (Some(watermarks), Some(info)) = (meta.watermarks, meta.input) else {
            return Err(Error::config(
                format!("table {name}"),
                "its updates need event times: call .event_time(|u| u.valid_from, delay) on the update flow",
            ));
        };
        let origin = info.origin.clone();
        let versions = with_dead_letters(
            &meta.ctx,
            format!("TableUpdates({name})"),
            "table",
            stream,
            move |batch: &mut Vec<Rec<TableUpdate<K, V>>>, emit| {
                for r in batch.drain(..) {
                    let seq = (1, r.meta.partition, r.meta.offset);
                    match r.value.clone().effect() {
                        Ok((key, valid_from, value)) => emit.give(Version { key, valid_from, seq, value }),
                        Err(e) => emit.dead_letter(origin.dead_letter(&r.meta, "table", e.to_string(), &r.value)),
                    }
                }
            },
        );
        let collection = stamped(versions).as_collection();
        Ok(Table {
            name: name.to_string(),
            ctx: meta.ctx,
            initial: Rc::new(Vec::new()),
            updates: Some(Updates { collection, watermarks, partitions: info.partitions }),
        })
    }

    /// Adds an initial load: `rows`, applied in the first epoch of a run
    /// that restores no state of the join (a restored run has them in its
    /// checkpoint). An insert or update without a value is a config error.
    pub fn with_initial(mut self, rows: Vec<TableUpdate<K, V>>) -> Result<Self> {
        let mut all: Vec<_> = self.initial.iter().cloned().collect();
        all.extend(initial_rows(&self.name, rows)?);
        self.initial = Rc::new(all);
        Ok(self)
    }

    /// The table's name (its join step's kind is `table-<name>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The table's consolidated collection of versions as this worker sees
    /// it, including the initial load when `load` (a join builds its own
    /// with the load only when nothing was restored): for differential
    /// operators over the table itself (devices per site).
    pub fn collection(&self, load: bool) -> VecCollection<'s, Epoch, Version<K, V>, isize> {
        let scope = self.ctx.scope();
        let start = self.ctx.start_epoch();
        let rows: Vec<(Version<K, V>, Epoch, isize)> = if load && self.ctx.worker() == 0 && !self.ctx.planning() {
            self.initial
                .iter()
                .enumerate()
                .map(|(i, (key, valid_from, value))| {
                    let seq = (0, 0, i as Offset);
                    (Version { key: key.clone(), valid_from: *valid_from, seq, value: value.clone() }, start, 1)
                })
                .collect()
        } else {
            Vec::new()
        };
        let initial = at_epoch(rows.to_stream(scope), start).as_collection();
        match &self.updates {
            Some(u) => initial.concat(u.collection.clone()).consolidate(),
            None => initial.consolidate(),
        }
    }
}

/// `stream`'s records at the epoch of their batch, as differential updates (diff +1).
fn stamped<'s, D: Clone + 'static>(stream: StreamVec<'s, Epoch, D>) -> StreamVec<'s, Epoch, (D, Epoch, isize)> {
    stream.unary(Pipeline, "Stamp", |_, _| {
        move |input, output| {
            input.for_each(|cap, data: &mut Vec<D>| {
                let Some(&t) = cap.least() else { return };
                output.session(&cap).give_iterator(data.drain(..).map(|d| (d, t, 1)));
            });
        }
    })
}

/// `stream` moved to epoch `at` (from epoch 0, where `to_stream` puts it).
fn at_epoch<'s, D: Clone + 'static>(stream: StreamVec<'s, Epoch, D>, at: Epoch) -> StreamVec<'s, Epoch, D> {
    stream.unary(Pipeline, "AtEpoch", move |_, _| {
        move |input, output| {
            input.for_each(|cap, data: &mut Vec<D>| {
                let Some(&t) = cap.least() else { return };
                let t = at.max(t);
                output.session(&cap.delayed(&t, 0)).give_container(data);
            });
        }
    })
}
