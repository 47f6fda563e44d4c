//! Tables against a plain reference that applies the same updates in
//! version order: randomized updates (inserts, updates, deletes and
//! reinserts) out of order within the update flow's bound, readings at random
//! times, one to three workers; unknown keys as dead letters; as-of by event
//! time, not arrival; a run restored with another worker count; counts.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use weir_core::record::{DeadLetter, EventTime};
use weir_core::{Dataflow, Pipeline};

use super::{CountBy, CountChange, JoinTable, Joined, Op, Table, TableUpdate};
use crate::prelude::*;
use crate::testing::{Collect, Memory, Record};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Dev {
    site: String,
    lo: f64,
}

/// A reading: device, time, and a number that names it in the results.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Ev {
    d: String,
    ts: i64,
    n: u64,
}

type Update = TableUpdate<String, Dev>;

/// A reading as the reference sees it: device, time, number.
type Event = (String, EventTime, u64);

/// The allowed disorder of both flows.
const DELAY: i64 = 300;

const KEYS: [&str; 4] = ["a", "b", "c", "d"];

fn reading(d: &str, ts: i64, n: u64) -> Record {
    (None, serde_json::to_vec(&Ev { d: d.to_string(), ts, n }).unwrap_or_default())
}

fn update(u: &Update) -> Record {
    (None, serde_json::to_vec(u).unwrap_or_default())
}

fn dev(site: usize) -> Dev {
    Dev { site: format!("s{site}"), lo: site as f64 / 2.0 }
}

fn lock<T>(m: &Mutex<T>) -> anyhow::Result<std::sync::MutexGuard<'_, T>> {
    m.lock().map_err(|_| anyhow::anyhow!("poisoned"))
}

/// The plain reference: the value of `key` as of `t`, from the updates in
/// version order (valid from, then the initial load by index before the
/// update flow by partition and offset).
fn as_of(initial: &[Update], stream: &[Vec<Update>], key: &str, t: EventTime) -> Option<String> {
    type Versioned<'a> = ((EventTime, u8, usize, usize), &'a Update);
    let mut all: Vec<Versioned<'_>> = initial.iter().enumerate().map(|(i, u)| ((u.valid_from, 0, 0, i), u)).collect();
    for (p, part) in stream.iter().enumerate() {
        all.extend(part.iter().enumerate().map(|(o, u)| ((u.valid_from, 1, p, o), u)));
    }
    all.retain(|(v, u)| u.key == key && v.0 <= t);
    all.sort_by_key(|a| a.0);
    let last = all.last()?.1;
    match last.op {
        Op::Delete => None,
        _ => last.value.as_ref().map(|v| v.site.clone()),
    }
}

/// What a run gives: joined readings `(n, site)` sorted, and the readings
/// that were dead letters (`n`, sorted), with their errors.
struct Got {
    joined: Vec<(u64, String)>,
    unknown: Vec<u64>,
    errors: Vec<String>,
}

fn got(rows: Vec<(u64, String)>, dead: Vec<DeadLetter>) -> Got {
    let mut joined = rows;
    joined.sort();
    let mut unknown: Vec<u64> =
        dead.iter().filter_map(|d| serde_json::from_slice::<Ev>(&d.payload).ok()).map(|e| e.n).collect();
    unknown.sort();
    let errors = dead.iter().map(|d| format!("{}: {}", d.stage, d.error)).collect();
    Got { joined, unknown, errors }
}

/// The table `devices` of the update flow `updates` (event times their
/// `valid_from`, disorder up to `DELAY`).
fn devices<'s>(p: &mut Dataflow<'s>, updates: &Memory) -> weir_core::Result<Table<'s, String, Dev>> {
    let flow = p.source(updates.clone())?.decode::<Update>(Json);
    Table::from_updates("devices", flow.event_time(|u| u.valid_from, Duration::from_millis(DELAY as u64))?)
}

/// Joins `readings` against a table of `initial` plus the update flow
/// `stream` (none: a loaded table).
fn run(
    initial: Vec<Update>,
    stream: Option<Vec<Vec<Update>>>,
    readings: Memory,
    (workers, epoch): (usize, u64),
) -> anyhow::Result<Got> {
    let rows = Arc::new(Mutex::new(Vec::new()));
    let dead = Arc::new(Mutex::new(Vec::new()));
    let (r, dl) = (rows.clone(), dead.clone());
    let updates =
        stream.map(|s| Memory::new(s.iter().map(|p| p.iter().map(update).collect()).collect(), 2).named("updates"));
    Pipeline::new("table").workers(workers).bounded(true).epoch_records(epoch, 2).run(move |p| {
        let table = match &updates {
            Some(u) => devices(p, u)?,
            None => Table::load(p.ctx(), "devices", Vec::new())?,
        }
        .with_initial(initial.clone())?;
        p.source(readings.clone())?
            .decode::<Ev>(Json)
            .event_time(|e| e.ts, Duration::from_millis(DELAY as u64))?
            .join_table(&table, |e| e.d.clone())?
            .map(|j: Joined<Ev, Dev>| (j.record.n, j.value.site))
            .sink(Collect(r.clone()))?;
        p.dead_letters().sink(Collect(dl.clone()))
    })?;
    let rows = std::mem::take(&mut *lock(&rows)?);
    let dead = std::mem::take(&mut *lock(&dead)?);
    Ok(got(rows, dead))
}

/// The reference's joined readings and unknown ones.
fn reference(initial: &[Update], stream: &[Vec<Update>], readings: &[Event]) -> (Vec<(u64, String)>, Vec<u64>) {
    let mut joined = Vec::new();
    let mut unknown = Vec::new();
    for (d, t, n) in readings {
        match as_of(initial, stream, d, *t) {
            Some(site) => joined.push((*n, site)),
            None => unknown.push(*n),
        }
    }
    joined.sort();
    unknown.sort();
    (joined, unknown)
}

/// One generated update: step from the partition's largest time, how far
/// behind it (within the bound), key, op (0 insert, 1 update, 2 delete), site.
type UStep = (i64, i64, usize, u8, usize);
/// One generated reading: step, how far behind (any), key.
type RStep = (i64, i64, usize);

fn gen_updates(parts: &[Vec<UStep>]) -> Vec<Vec<Update>> {
    parts
        .iter()
        .map(|part| {
            let mut t = 1_000i64;
            part.iter()
                .map(|&(step, behind, key, op, site)| {
                    t += step;
                    let (k, at) = (KEYS[key].to_string(), t - behind);
                    match op {
                        0 => Update::insert(k, dev(site), at),
                        1 => Update::update(k, dev(site), at),
                        _ => Update::delete(k, at),
                    }
                })
                .collect()
        })
        .collect()
}

fn gen_readings(parts: &[Vec<RStep>]) -> (Vec<Vec<Record>>, Vec<Event>) {
    let mut input = Vec::new();
    let mut events = Vec::new();
    let mut n = 0u64;
    for part in parts {
        let mut t = 1_000i64;
        let mut recs = Vec::new();
        for &(step, behind, key) in part {
            t += step;
            recs.push(reading(KEYS[key], t - behind, n));
            events.push((KEYS[key].to_string(), t - behind, n));
            n += 1;
        }
        input.push(recs);
    }
    (input, events)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Every reading gets the reference's value as of its time, or is an
    /// unknown-key dead letter when the reference has none.
    #[test]
    fn joins_as_the_reference_applies_the_updates(
        initial in prop::collection::vec((0i64..2_000, 0usize..4, 0u8..3, 0usize..3), 0..6),
        updates in prop::collection::vec(
            prop::collection::vec((0i64..150, 0i64..=DELAY, 0usize..4, 0u8..3, 0usize..3), 0..30), 1..3),
        readings in prop::collection::vec(
            prop::collection::vec((0i64..150, 0i64..1_000, 0usize..4), 0..40), 1..3),
        workers in 1usize..4,
        epoch in 1u64..8,
    ) {
        let initial: Vec<Update> = initial
            .into_iter()
            .map(|(t, k, op, site)| match op {
                0 => Update::insert(KEYS[k].to_string(), dev(site), t),
                1 => Update::update(KEYS[k].to_string(), dev(site), t),
                _ => Update::delete(KEYS[k].to_string(), t),
            })
            .collect();
        let stream = gen_updates(&updates);
        let (input, events) = gen_readings(&readings);
        let (joined, unknown) = reference(&initial, &stream, &events);
        let g = run(initial, Some(stream), Memory::new(input, 3).named("readings"), (workers, epoch))
            .map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
        prop_assert_eq!(g.joined, joined);
        prop_assert_eq!(g.unknown, unknown);
        prop_assert!(g.errors.iter().all(|e| e == "join_table: unknown key"), "{:?}", g.errors);
    }
}

/// A loaded table: a key never inserted, or deleted as of the reading's time,
/// is a dead letter with reason `unknown key`; a key deleted later, or
/// reinserted, joins.
#[test]
fn an_unknown_key_is_a_dead_letter() -> anyhow::Result<()> {
    let initial = vec![
        Update::insert("a".into(), dev(1), 0),
        Update::insert("b".into(), dev(2), 0),
        Update::delete("b".into(), 1_000),
        Update::insert("b".into(), dev(3), 2_000),
    ];
    let readings = vec![vec![
        reading("a", 100, 0),
        reading("zz", 100, 1),
        reading("b", 500, 2),
        reading("b", 1_500, 3),
        reading("b", 2_500, 4),
        reading("a", -5, 5),
    ]];
    for workers in 1..=2 {
        let g = run(initial.clone(), None, Memory::new(readings.clone(), 2).named("readings"), (workers, 2))?;
        anyhow::ensure!(g.joined == vec![(0, "s1".into()), (2, "s2".into()), (4, "s3".into())], "{:?}", g.joined);
        anyhow::ensure!(g.unknown == vec![1, 3, 5], "{:?}", g.unknown);
        anyhow::ensure!(g.errors.iter().all(|e| e == "join_table: unknown key"), "{:?}", g.errors);
    }
    Ok(())
}

/// Updates that arrive before readings of earlier times do not apply to
/// them: the value is the one valid at the reading's event time, not the
/// newest one when it arrives (as-of by processing time fails this).
#[test]
fn as_of_is_by_event_time_not_arrival() -> anyhow::Result<()> {
    let stream = vec![vec![
        Update::insert("a".into(), dev(1), 0),
        Update::update("a".into(), dev(2), 1_000),
        Update::update("a".into(), dev(3), 2_000),
        Update::delete("a".into(), 3_000),
    ]];
    // Every reading is read after all updates (the readings' source waits).
    let readings = Memory::new(
        vec![vec![reading("a", 2_500, 0), reading("a", 500, 1), reading("a", 1_000, 2), reading("a", 3_500, 3)]],
        1,
    )
    .named("readings")
    .pause_after(0, Duration::from_millis(300));
    let g = run(Vec::new(), Some(stream), readings, (2, 1))?;
    anyhow::ensure!(g.joined == vec![(0, "s3".into()), (1, "s1".into()), (2, "s2".into())], "{:?}", g.joined);
    anyhow::ensure!(g.unknown == vec![3], "{:?}", g.unknown);
    Ok(())
}

/// An update behind the update flow's watermark when it arrives is counted
/// (`<step>.late_updates`); one out of order within the bound is not.
#[test]
fn late_updates_are_counted() -> anyhow::Result<()> {
    let mut updates: Vec<Update> = (0..=20).map(|i| Update::update("a".into(), dev(i % 3), i as i64 * 1_000)).collect();
    updates[0] = Update::insert("a".into(), dev(0), 0);
    // Far behind the watermark (about 20,000 - DELAY): late. Then out of order within the bound.
    updates.push(Update::update("a".into(), dev(1), 100));
    updates.push(Update::update("a".into(), dev(2), 20_000 - DELAY / 3));
    let memory = Memory::new(vec![updates.iter().map(update).collect()], 1).named("updates");
    let readings = Memory::new(vec![vec![reading("a", 50, 0), reading("a", 25_000, 1)]], 1).named("readings");
    for workers in 1..=2 {
        let (u, r) = (memory.clone(), readings.clone());
        let summary = Pipeline::new("table").workers(workers).bounded(true).epoch_records(1, 2).run(move |p| {
            let table = devices(p, &u)?;
            p.source(r.clone())?
                .decode::<Ev>(Json)
                .event_time(|e| e.ts, Duration::from_millis(DELAY as u64))?
                .join_table(&table, |e| e.d.clone())?
                .map(|j: Joined<Ev, Dev>| (j.record.n, j.value.site))
                .sink(Collect(Arc::new(Mutex::new(Vec::new()))))?;
            p.dead_letters().sink(Collect(Arc::new(Mutex::new(Vec::new()))))
        })?;
        let late = summary.counter("table-devices.late_updates");
        anyhow::ensure!(late == 1, "{workers} workers: {late} late updates, want 1: {:?}", summary.counters);
    }
    Ok(())
}

/// Ops parse as an updates file spells them.
#[test]
fn ops_parse() {
    assert_eq!("Insert".parse::<Op>(), Ok(Op::Insert));
    assert_eq!(" update".parse::<Op>(), Ok(Op::Update));
    assert_eq!("DELETE".parse::<Op>(), Ok(Op::Delete));
    assert!("upsert".parse::<Op>().is_err());
}

/// A flow without event times cannot join; an initial row without a value
/// is a config error.
#[test]
fn config_errors() {
    let no_time = Pipeline::new("t").bounded(true).run(|p| {
        let table = Table::<String, Dev>::load(p.ctx(), "devices", Vec::new())?;
        p.source(Memory::new(vec![vec![reading("a", 1, 0)]], 1))?
            .decode::<Ev>(Json)
            .join_table(&table, |e| e.d.clone())?
            .sink(Collect(Arc::new(Mutex::new(Vec::new()))))?;
        p.dead_letters().sink(Collect(Arc::new(Mutex::new(Vec::new()))))
    });
    assert!(no_time.is_err_and(|e| e.to_string().contains("event times")));
    let no_value = Pipeline::new("t").bounded(true).run(|p| {
        let bad = TableUpdate { op: Op::Insert, key: "a".to_string(), value: None::<Dev>, valid_from: 0 };
        Table::load(p.ctx(), "devices", vec![bad])?;
        Ok(())
    });
    assert!(no_value.is_err_and(|e| e.to_string().contains("without a value")));
}

/// A sink of `(n, site)` rows that fails at a row whose reading is `fail_from`
/// or later in its partition (of 300).
#[derive(Clone)]
struct FailFrom {
    rows: Arc<Mutex<Vec<(u64, String)>>>,
    fail_from: Option<u64>,
}

impl weir_core::sink::Sink<(u64, String)> for FailFrom {
    fn kind(&self) -> &str {
        "fail-from"
    }

    fn rejects_rows(&self) -> bool {
        false
    }

    fn open(
        &self,
        _: &weir_core::sink::SinkContext,
    ) -> weir_core::Result<Box<dyn weir_core::sink::SinkWriter<(u64, String)>>> {
        Ok(Box::new(self.clone()))
    }
}

impl weir_core::sink::SinkWriter<(u64, String)> for FailFrom {
    fn write(
        &mut self,
        rows: &mut Vec<(u64, String)>,
        _: &mut Vec<weir_core::sink::Rejected<(u64, String)>>,
    ) -> weir_core::Result<()> {
        if let Some(from) = self.fail_from
            && rows.iter().any(|r| r.0 % 300 >= from)
        {
            return Err(weir_core::Error::config("test", "the sink fails here"));
        }
        self.rows.lock().map_err(|_| weir_core::Error::config("test", "poisoned"))?.append(rows);
        Ok(())
    }

    fn stage(&mut self, _: weir_core::time::Epoch) -> weir_core::Result<Vec<weir_core::checkpoint::Publish>> {
        Ok(Vec::new())
    }
}

/// A run that fails after a checkpoint, restarted from it with 3 workers
/// instead of 1, joins every later reading as the reference does: the
/// table (initial load and updates) and the waiting readings come back from
/// the checkpoint, by key group.
#[test]
fn a_run_restored_with_another_worker_count_joins_as_the_reference() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut rng = crate::testing::Rng::new(11);
    let initial: Vec<Update> = KEYS.iter().take(3).map(|k| Update::insert(k.to_string(), dev(0), 0)).collect();
    let mut stream = vec![Vec::new()];
    let mut t = 1_000;
    for _ in 0..200 {
        t += 50;
        let k = KEYS[rng.below(4) as usize].to_string();
        let behind = rng.below(DELAY as u64) as i64;
        stream[0].push(match rng.below(5) {
            0 => Update::delete(k, t - behind),
            _ => Update::update(k, dev(rng.below(3) as usize), t - behind),
        });
    }
    let steps: Vec<Vec<RStep>> =
        (0..2).map(|_| (0..300).map(|_| (33, rng.below(600) as i64, rng.below(4) as usize)).collect()).collect();
    let (input, events) = gen_readings(&steps);
    let (want, unknown) = reference(&initial, &stream, &events);
    let updates = Memory::new(stream.iter().map(|p| p.iter().map(update).collect()).collect(), 5).named("updates");
    let readings = Memory::new(input, 5).named("readings").pause_after(150, Duration::from_millis(800));
    let state = dir.path().join("state");
    let run_with = |workers: usize, sink: FailFrom| {
        let (updates, readings, state, initial) = (updates.clone(), readings.clone(), state.clone(), initial.clone());
        Pipeline::new("restore").workers(workers).bounded(true).state(state).epoch_records(20, 2).run(move |p| {
            let table = devices(p, &updates)?.with_initial(initial.clone())?;
            p.source(readings.clone())?
                .decode::<Ev>(Json)
                .event_time(|e| e.ts, Duration::from_millis(DELAY as u64))?
                .named("registry")
                .join_table(&table, |e| e.d.clone())?
                .map(|j: Joined<Ev, Dev>| (j.record.n, j.value.site))
                .sink(sink.clone())?;
            p.dead_letters().sink(Collect(Arc::new(Mutex::new(Vec::new()))))
        })
    };
    // A partition's readings from the 150th on come after the pause, by when a checkpoint committed.
    let first = Arc::new(Mutex::new(Vec::new()));
    let failed = run_with(1, FailFrom { rows: first.clone(), fail_from: Some(150) });
    anyhow::ensure!(failed.is_err(), "the first run should fail");
    let second = Arc::new(Mutex::new(Vec::new()));
    run_with(3, FailFrom { rows: second.clone(), fail_from: None })?;
    let mut rows = std::mem::take(&mut *lock(&second)?);
    rows.sort();
    anyhow::ensure!(
        !rows.is_empty() && rows.len() < want.len(),
        "{} of {} rows after the restore",
        rows.len(),
        want.len()
    );
    let want_of: BTreeMap<u64, String> = want.iter().cloned().collect();
    for r in &rows {
        anyhow::ensure!(want_of.get(&r.0) == Some(&r.1), "{r:?}: the reference has {:?}", want_of.get(&r.0));
    }
    let mut all: Vec<u64> = lock(&first)?.iter().chain(rows.iter()).map(|r| r.0).collect();
    all.sort();
    all.dedup();
    anyhow::ensure!(
        all.len() == want.len(),
        "{} of {} readings joined ({} unknown)",
        all.len(),
        want.len(),
        unknown.len()
    );
    Ok(())
}

/// `count_by` after a join: the collection's final contents are each site's
/// count of joined readings, one `(site, count)` per site, whatever the
/// worker count and epochs.
#[test]
fn count_by_maintains_the_counts_as_a_collection() -> anyhow::Result<()> {
    let initial = vec![
        Update::insert("a".into(), dev(1), 0),
        Update::insert("b".into(), dev(1), 0),
        Update::insert("c".into(), dev(2), 0),
    ];
    let mut rng = crate::testing::Rng::new(3);
    let steps: Vec<Vec<RStep>> =
        (0..2).map(|_| (0..100).map(|_| (10, rng.below(50) as i64, rng.below(4) as usize)).collect()).collect();
    let (input, events) = gen_readings(&steps);
    let (joined, _) = reference(&initial, &[], &events);
    let mut want: BTreeMap<String, i64> = BTreeMap::new();
    for (_, site) in &joined {
        *want.entry(site.clone()).or_default() += 1;
    }
    for (workers, epoch) in [(1, 7), (2, 3), (3, 1)] {
        let changes = Arc::new(Mutex::new(Vec::new()));
        let c = changes.clone();
        let (initial, readings) = (initial.clone(), Memory::new(input.clone(), 3).named("readings"));
        Pipeline::new("counts").workers(workers).bounded(true).epoch_records(epoch, 2).run(move |p| {
            let table = Table::load(p.ctx(), "devices", initial.clone())?;
            p.source(readings.clone())?
                .decode::<Ev>(Json)
                .event_time(|e| e.ts, Duration::from_millis(DELAY as u64))?
                .join_table(&table, |e| e.d.clone())?
                .count_by(|j: &Joined<Ev, Dev>| j.value.site.clone())?
                .changes()
                .sink(Collect(c.clone()))?;
            p.dead_letters().sink(Collect(Arc::new(Mutex::new(Vec::new()))))
        })?;
        let mut net: BTreeMap<(String, i64), i64> = BTreeMap::new();
        for ch in lock(&changes)?.iter() {
            let ch: &CountChange<String> = ch;
            *net.entry((ch.key.clone(), ch.count)).or_default() += ch.diff;
        }
        net.retain(|_, d| *d != 0);
        let got: BTreeMap<String, i64> = net.iter().map(|((k, c), _)| (k.clone(), *c)).collect();
        anyhow::ensure!(net.values().all(|&d| d == 1), "{net:?}");
        anyhow::ensure!(got == want, "{workers} workers: {got:?} != {want:?}");
    }
    Ok(())
}

/// A window after the join: the updates arrive late in processing time (their
/// source pauses), so readings wait in the join while their own watermark
/// moves on; the joined flow's watermark is held back to the table's, so no
/// joined reading is late for the window and every window counts what the
/// reference says.
#[test]
fn a_window_after_the_join_sees_no_waiting_reading_as_late() -> anyhow::Result<()> {
    let stream =
        vec![(0..40).map(|i| Update::update(KEYS[i % 3].to_string(), dev(i % 2), i as i64 * 100)).collect::<Vec<_>>()];
    let mut rng = crate::testing::Rng::new(5);
    let steps: Vec<Vec<RStep>> =
        (0..2).map(|_| (0..120).map(|_| (30, rng.below(100) as i64, rng.below(3) as usize)).collect()).collect();
    let (input, events) = gen_readings(&steps);
    let (joined, _) = reference(&[], &stream, &events);
    let time_of: BTreeMap<u64, EventTime> = events.iter().map(|e| (e.2, e.1)).collect();
    let mut want: BTreeMap<(String, EventTime), u64> = BTreeMap::new();
    for (n, site) in &joined {
        *want.entry((site.clone(), time_of[n].div_euclid(1_000) * 1_000)).or_default() += 1;
    }
    let updates = Memory::new(stream.iter().map(|p| p.iter().map(update).collect()).collect(), 2)
        .named("updates")
        .pause_after(4, Duration::from_millis(300));
    let readings = Memory::new(input, 4).named("readings");
    let rows = Arc::new(Mutex::new(Vec::new()));
    let dead = Arc::new(Mutex::new(Vec::new()));
    let (r, dl) = (rows.clone(), dead.clone());
    Pipeline::new("window").workers(2).bounded(true).epoch_records(3, 2).run(move |p| {
        let table = devices(p, &updates)?;
        p.source(readings.clone())?
            .decode::<Ev>(Json)
            .event_time(|e| e.ts, Duration::from_millis(DELAY as u64))?
            .join_table(&table, |e| e.d.clone())?
            .key_by(|j: &Joined<Ev, Dev>| j.value.site.clone())
            .window(Tumbling::seconds(1))
            .aggregate(Count)?
            .map(|w: crate::window::WindowResult<String, u64>| ((w.key, w.start), w.value))
            .sink(Collect(r.clone()))?;
        p.dead_letters().sink(Collect(dl.clone()))
    })?;
    let late: Vec<String> = lock(&dead)?.iter().filter(|d| d.stage != "join_table").map(|d| d.error.clone()).collect();
    anyhow::ensure!(late.is_empty(), "{} dead letters besides unknown keys: {late:?}", late.len());
    let got: BTreeMap<(String, EventTime), u64> = lock(&rows)?.iter().cloned().collect();
    anyhow::ensure!(got == want, "{got:?}\n!= {want:?}");
    Ok(())
}

/// An update of the flow that inserts without a value is a dead letter of
/// stage `table` (its input line as the payload); the rest of the table works.
#[test]
fn an_insert_without_a_value_is_a_dead_letter() -> anyhow::Result<()> {
    let lines = vec![vec![
        update(&Update::insert("a".into(), dev(1), 0)),
        (None, br#"{"op":"insert","key":"b","value":null,"valid_from":0}"#.to_vec()),
    ]];
    let updates = Memory::new(lines, 1).named("updates");
    let readings = Memory::new(vec![vec![reading("a", 10, 0), reading("b", 10, 1)]], 1).named("readings");
    let rows = Arc::new(Mutex::new(Vec::new()));
    let dead = Arc::new(Mutex::new(Vec::new()));
    let (r, dl) = (rows.clone(), dead.clone());
    Pipeline::new("bad-update").bounded(true).epoch_records(1, 2).run(move |p| {
        let table = Table::from_updates(
            "devices",
            p.source(updates.clone())?.decode::<Update>(Json).event_time(|u| u.valid_from, Duration::ZERO)?,
        )?;
        p.source(readings.clone())?
            .decode::<Ev>(Json)
            .event_time(|e| e.ts, Duration::ZERO)?
            .join_table(&table, |e| e.d.clone())?
            .map(|j: Joined<Ev, Dev>| (j.record.n, j.value.site))
            .sink(Collect(r.clone()))?;
        p.dead_letters().sink(Collect(dl.clone()))
    })?;
    anyhow::ensure!(*lock(&rows)? == vec![(0, "s1".to_string())], "{:?}", lock(&rows)?);
    let mut dead: Vec<(String, String, Vec<u8>)> =
        lock(&dead)?.iter().map(|d| (d.stage.clone(), d.error.clone(), d.payload.clone())).collect();
    dead.sort();
    anyhow::ensure!(dead.len() == 2, "{dead:?}");
    anyhow::ensure!(dead[0].0 == "join_table" && dead[0].1 == "unknown key", "{:?}", dead[0]);
    anyhow::ensure!(dead[1].0 == "table" && dead[1].1 == "an insert or update without a value", "{:?}", dead[1]);
    anyhow::ensure!(dead[1].2.starts_with(br#"{"op":"insert","key":"b""#), "{:?}", dead[1]);
    Ok(())
}

/// The z-scores of `readings` (of `n`) after a join with a loaded table of
/// every key: keyed after the join (`keyed`: `join_table_keyed`, no second
/// exchange) or re-keyed with `key_by`.
fn scores_after_join(readings: Memory, workers: usize, keyed: bool) -> anyhow::Result<Vec<(String, EventTime, u64)>> {
    let rows = Arc::new(Mutex::new(Vec::new()));
    let r = rows.clone();
    Pipeline::new("keyed").workers(workers).bounded(true).epoch_records(3, 2).run(move |p| {
        let all = KEYS.iter().map(|k| Update::insert(k.to_string(), dev(0), 0)).collect();
        let table = Table::load(p.ctx(), "devices", Vec::new())?.with_initial(all)?;
        let joined =
            p.source(readings.clone())?.decode::<Ev>(Json).event_time(|e| e.ts, Duration::from_millis(DELAY as u64))?;
        let zscore = ZScore::new(|j: &Joined<Ev, Dev>| j.record.n as f64).window(4).min_samples(2);
        let scored = if keyed {
            joined.join_table_keyed(&table, |e| e.d.clone())?.detect(zscore)?
        } else {
            joined.join_table(&table, |e| e.d.clone())?.key_by(|j| j.record.d.clone()).detect(zscore)?
        };
        scored.map(|s| (s.key, s.event_time, s.score.to_bits())).sink(Collect(r.clone()))?;
        p.dead_letters().sink(Collect(Arc::new(Mutex::new(Vec::<DeadLetter>::new()))))
    })?;
    let mut rows = std::mem::take(&mut *lock(&rows)?);
    rows.sort();
    Ok(rows)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// A detector after `join_table_keyed` (the join's records scored where
    /// the join left them) scores as after `join_table` and `key_by`, with
    /// any worker count: the join put every record on its key's worker.
    #[test]
    fn a_keyed_join_scores_as_a_rekeyed_one(
        readings in prop::collection::vec(
            prop::collection::vec((0i64..150, 0i64..=DELAY, 0usize..4), 1..60), 1..4),
        workers in 1usize..4,
    ) {
        let (input, _) = gen_readings(&readings);
        let fail = |e: anyhow::Error| TestCaseError::fail(format!("{e:#}"));
        let keyed = scores_after_join(Memory::new(input.clone(), 3), workers, true).map_err(fail)?;
        let rekeyed = scores_after_join(Memory::new(input, 3), workers, false).map_err(fail)?;
        prop_assert_eq!(keyed, rekeyed);
    }
}
