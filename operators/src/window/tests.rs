//! Every window kind against a plain reference on randomized input: records
//! out of order within the watermark's bound, several partitions, one to
//! three workers, any epoch boundaries.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use weir_core::Pipeline;
use weir_core::record::{DeadLetter, EventTime};

use super::{CountWindow, Session, Sliding, Tumbling, WindowSpec};
use crate::prelude::*;
use crate::testing::{Collect, Memory, Record};

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Ev {
    k: String,
    v: f64,
}

/// `(key, window start, window end, n)` → `(count, sum)`. `n` numbers the
/// windows of a key with the same start and end (count windows over records
/// of equal times) in the order of their values; it is 0 for every other kind.
type Rows = BTreeMap<(String, EventTime, EventTime, usize), (u64, f64)>;

/// Rows from windows, numbering those with the same key, start and end.
fn rows_of(windows: impl IntoIterator<Item = ((String, EventTime, EventTime), (u64, f64))>) -> Rows {
    let mut by_window: BTreeMap<(String, EventTime, EventTime), Vec<(u64, f64)>> = BTreeMap::new();
    for (w, v) in windows {
        by_window.entry(w).or_default().push(v);
    }
    let mut rows = Rows::new();
    for ((k, start, end), mut vs) in by_window {
        vs.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        for (n, v) in vs.into_iter().enumerate() {
            rows.insert((k.clone(), start, end, n), v);
        }
    }
    rows
}

fn record(time: EventTime, k: &str, v: f64) -> Record {
    (Some(time), format!(r#"{{"k":"{k}","v":{v:?}}}"#).into_bytes())
}

/// Runs `spec` windows of count and sum over `parts` (`epoch` records per epoch, chunks of 3).
fn run(
    parts: Vec<Vec<Record>>,
    spec: WindowSpec,
    workers: usize,
    epoch: u64,
) -> anyhow::Result<(Rows, Vec<DeadLetter>)> {
    run_in_chunks(parts, spec, workers, epoch, 3)
}

/// A window row as the tests collect it: key, start, end, diff, count, sum.
type Emitted = (String, EventTime, EventTime, i64, u64, f64);

/// Runs `spec` windows of count and sum (with `lateness` ms of allowed
/// lateness, if any) and returns every row emitted, in order, and the dead letters.
fn collect(
    parts: Vec<Vec<Record>>,
    spec: WindowSpec,
    (workers, epoch, per_read): (usize, u64, usize),
    lateness: Option<u64>,
) -> anyhow::Result<(Vec<Emitted>, Vec<DeadLetter>)> {
    let rows = Arc::new(Mutex::new(Vec::new()));
    let dead = Arc::new(Mutex::new(Vec::new()));
    let source = Memory::new(parts, per_read);
    let (r, d) = (rows.clone(), dead.clone());
    Pipeline::new("windows").workers(workers).bounded(true).epoch_records(epoch, 2).run(move |p| {
        let windowed = p
            .source(source.clone())?
            .decode::<Ev>(Json)
            .source_time(Duration::from_millis(DELAY))?
            .key_by(|e| e.k.clone())
            .window(spec);
        let windowed = match lateness {
            Some(ms) => windowed.allowed_lateness(Duration::from_millis(ms)),
            None => windowed,
        };
        windowed
            .aggregate((Count, Sum(|e: &Ev| e.v)))?
            .map(|w| (w.key, w.start, w.end, w.diff, w.value.0, w.value.1))
            .sink(Collect(r.clone()))?;
        p.dead_letters().sink(Collect(d.clone()))
    })?;
    let rows = std::mem::take(&mut *rows.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    let dead = std::mem::take(&mut *dead.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    Ok((rows, dead))
}

fn run_in_chunks(
    parts: Vec<Vec<Record>>,
    spec: WindowSpec,
    workers: usize,
    epoch: u64,
    per_read: usize,
) -> anyhow::Result<(Rows, Vec<DeadLetter>)> {
    let (rows, dead) = collect(parts, spec, (workers, epoch, per_read), None)?;
    anyhow::ensure!(rows.iter().all(|r| r.3 == 1), "a retraction without allowed lateness");
    let windows: Vec<_> =
        rows.into_iter().map(|(k, start, end, _, count, sum)| ((k, start, end), (count, sum))).collect();
    let out = rows_of(windows);
    if !matches!(spec, WindowSpec::Count(_)) {
        anyhow::ensure!(out.keys().all(|w| w.3 == 0), "a window fired twice");
    }
    Ok((out, dead))
}

/// The allowed disorder.
const DELAY: u64 = 300;

/// One generated record: the step from the partition's largest time so far,
/// how far behind it the record is, its key (0..3) and value.
type Step = (i64, i64, usize, i64);

/// The records of generated partitions and the same events for the reference.
fn inputs(parts: &[Vec<Step>]) -> (Vec<Vec<Record>>, Vec<Event>) {
    let mut input = Vec::new();
    let mut events = Vec::new();
    for (p, part) in parts.iter().enumerate() {
        let mut t = 1_700_000_000_000i64;
        let mut recs = Vec::new();
        for (offset, &(step, jitter, key, v)) in part.iter().enumerate() {
            t += step;
            let k = ["a", "b", "c"][key];
            recs.push(record(t - jitter, k, v as f64));
            events.push((k.to_string(), t - jitter, v as f64, (p as u32, offset as u64)));
        }
        input.push(recs);
    }
    (input, events)
}

/// An input event: key, time, value, and its (partition, offset).
type Event = (String, EventTime, f64, (u32, u64));

/// The rows of `events` computed directly.
fn reference(events: &[Event], spec: WindowSpec) -> Rows {
    let mut rows = BTreeMap::new();
    let mut ties = Vec::new();
    let mut add = |k: &str, start, end, v: f64| {
        let r = rows.entry((k.to_string(), start, end)).or_insert((0, 0.0));
        r.0 += 1;
        r.1 += v;
    };
    match spec {
        WindowSpec::Tumbling(w) => {
            for (k, t, v, _) in events {
                let start = t - t.rem_euclid(w.size);
                add(k, start, start + w.size, *v);
            }
        }
        WindowSpec::Sliding(w) => {
            for (k, t, v, _) in events {
                // Every start s, a multiple of the slide, with s <= t < s + size.
                let mut s = t - t.rem_euclid(w.slide);
                while s + w.size > *t {
                    add(k, s, s + w.size, *v);
                    s -= w.slide;
                }
            }
        }
        WindowSpec::Session(w) => {
            let mut by_key: BTreeMap<&str, Vec<(EventTime, f64)>> = BTreeMap::new();
            for (k, t, v, _) in events {
                by_key.entry(k).or_default().push((*t, *v));
            }
            for (k, mut evs) in by_key {
                evs.sort_by_key(|e| e.0);
                let mut first = evs[0].0;
                let mut last = first;
                let mut acc = (0u64, 0.0);
                for (t, v) in evs {
                    if t - last >= w.gap {
                        rows.insert((k.to_string(), first, last + w.gap), acc);
                        first = t;
                        acc = (0, 0.0);
                    }
                    last = t;
                    acc.0 += 1;
                    acc.1 += v;
                }
                rows.insert((k.to_string(), first, last + w.gap), acc);
            }
        }
        WindowSpec::Count(w) => {
            let mut by_key: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
            for e in events {
                by_key.entry(&e.0).or_default().push(e);
            }
            for (k, mut evs) in by_key {
                evs.sort_by_key(|e| (e.1, e.3));
                // Full windows only: the last, incomplete one waits for more records.
                for chunk in evs.chunks_exact(w.size as usize) {
                    let (first, last) = (chunk[0].1, chunk[chunk.len() - 1].1);
                    ties.push(((k.to_string(), first, last + 1), (w.size, chunk.iter().map(|e| e.2).sum())));
                }
            }
        }
    }
    rows_of(rows.into_iter().chain(ties))
}

fn specs() -> impl Strategy<Value = WindowSpec> {
    prop_oneof![
        (1u64..4).prop_map(|s| Tumbling::new(Duration::from_millis(s * 500)).into()),
        (1u64..4, 1u64..4).prop_map(|(a, b)| {
            let (slide, size) = (a.min(b) * 250, a.max(b) * 250 + if a == b { 0 } else { 125 });
            Sliding::new(Duration::from_millis(size), Duration::from_millis(slide)).into()
        }),
        (1u64..6).prop_map(|g| Session::new(Duration::from_millis(g * 80)).into()),
        (1u64..5).prop_map(|n| CountWindow::new(n).into()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Out-of-order input within the bound gives exactly the reference's rows,
    /// with any worker count and any epoch boundaries, and nothing is late.
    #[test]
    fn every_window_kind_equals_the_reference(
        parts in prop::collection::vec(
            prop::collection::vec((0i64..120, 0i64..=DELAY as i64, 0usize..3, -50i64..50), 1..80),
            1..4,
        ),
        spec in specs(),
        workers in 1usize..=3,
        epoch in 1u64..30,
    ) {
        let (input, events) = inputs(&parts);
        let (rows, dead) = run(input, spec, workers, epoch).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(dead.is_empty(), "{:?}", dead.first());
        prop_assert_eq!(rows, reference(&events, spec));
    }
}

#[test]
fn a_late_record_bridging_two_sessions_merges_them_and_one_behind_the_watermark_is_late() -> anyhow::Result<()> {
    let gap = Session::new(Duration::from_millis(100));
    // 1000 and 1150 are two sessions until 1075 (within the bound) bridges them.
    let parts =
        vec![vec![record(1000, "a", 1.0), record(1150, "a", 2.0), record(1075, "a", 4.0), record(9000, "a", 8.0)]];
    let (rows, dead) = run(parts, gap.into(), 2, 1)?;
    anyhow::ensure!(dead.is_empty(), "{dead:?}");
    let want: Rows =
        [(("a".to_string(), 1000, 1250, 0), (3, 7.0)), (("a".to_string(), 9000, 9100, 0), (1, 8.0))].into();
    anyhow::ensure!(rows == want, "{rows:?}");
    // Behind the watermark (9000 - 300) by more than the bound: late.
    let parts = vec![vec![record(9000, "a", 8.0), record(1000, "a", 1.0)]];
    let (rows, dead) = run_in_chunks(parts, gap.into(), 1, 1, 1)?;
    anyhow::ensure!(dead.len() == 1 && dead[0].stage == "late", "{dead:?}");
    anyhow::ensure!(rows.len() == 1, "{rows:?}");
    Ok(())
}

/// Allowed lateness on top of the watermark's bound.
const LATENESS: u64 = 400;

/// Runs `spec` windows with [`LATENESS`] and applies the change log (a row
/// with diff -1 must retract the live row exactly, a row with +1 must not
/// replace one); returns the net rows and the dead letters.
fn run_with_lateness(
    parts: Vec<Vec<Record>>,
    spec: WindowSpec,
    workers: usize,
    epoch: u64,
    per_read: usize,
) -> anyhow::Result<(Rows, Vec<DeadLetter>)> {
    let (rows, dead) = collect(parts, spec, (workers, epoch, per_read), Some(LATENESS))?;
    let mut live: BTreeMap<(String, EventTime, EventTime), (u64, f64)> = BTreeMap::new();
    for (k, start, end, diff, count, sum) in rows {
        let w = (k, start, end);
        match diff {
            1 => anyhow::ensure!(live.insert(w.clone(), (count, sum)).is_none(), "{w:?}: a second live row"),
            -1 => anyhow::ensure!(live.remove(&w) == Some((count, sum)), "{w:?}: retracts a row it did not emit"),
            _ => anyhow::bail!("diff {diff}"),
        }
    }
    Ok((rows_of(live), dead))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Records behind the watermark by up to the allowed lateness update
    /// their windows (tumbling, sliding, sessions): the change log's net rows
    /// are exactly the reference's.
    #[test]
    fn late_records_within_the_allowed_lateness_correct_their_windows(
        parts in prop::collection::vec(
            prop::collection::vec((0i64..120, 0i64..=(DELAY + LATENESS) as i64, 0usize..3, -50i64..50), 1..60),
            1..4,
        ),
        kind in 0u8..3,
        gap in 1u64..6,
        workers in 1usize..=3,
        epoch in 1u64..20,
    ) {
        let spec: WindowSpec = match kind {
            0 => Tumbling::new(Duration::from_millis(500)).into(),
            1 => Sliding::new(Duration::from_millis(750), Duration::from_millis(250)).into(),
            // Late records extend fired sessions and bridge them (a gap up to the lateness and beyond).
            _ => Session::new(Duration::from_millis(gap * 100)).into(),
        };
        let (input, events) = inputs(&parts);
        let (rows, dead) = run_with_lateness(input, spec, workers, epoch, 3).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(dead.is_empty(), "{:?}", dead.first());
        prop_assert_eq!(rows, reference(&events, spec));
    }
}

#[test]
fn a_record_later_than_the_allowed_lateness_is_a_dead_letter() -> anyhow::Result<()> {
    // After 5000 the watermark is 4700; 4000 - 4500 closed at 4500, and 4500 + 400 > 4700:
    // 4200 corrects it. After 6000 (watermark 5700) 4300 is 800 late: a dead letter.
    let parts = vec![vec![
        record(4100, "a", 1.0),
        record(5000, "a", 2.0),
        record(4200, "a", 4.0),
        record(6000, "a", 8.0),
        record(4300, "a", 16.0),
    ]];
    let (rows, dead) = run_with_lateness(parts, Tumbling::new(Duration::from_millis(500)).into(), 1, 1, 1)?;
    anyhow::ensure!(dead.len() == 1 && dead[0].stage == "late", "{dead:?}");
    anyhow::ensure!(dead[0].error.contains("watermark 5700"), "{}", dead[0].error);
    let want: Rows = [
        (("a".to_string(), 4000, 4500, 0), (2, 5.0)),
        (("a".to_string(), 5000, 5500, 0), (1, 2.0)),
        (("a".to_string(), 6000, 6500, 0), (1, 8.0)),
    ]
    .into();
    anyhow::ensure!(rows == want, "{rows:?}");
    Ok(())
}

/// A late record within the lateness that bridges two fired sessions
/// retracts both and emits the merged one at once (it is closed already);
/// one beyond the lateness is a dead letter naming the watermark.
#[test]
fn a_late_record_bridging_two_fired_sessions_retracts_both_and_one_beyond_the_lateness_is_late() -> anyhow::Result<()> {
    let gap: WindowSpec = Session::new(Duration::from_millis(100)).into();
    // 1000 and 1150: two sessions, fired once 1600 makes the watermark 1300.
    // 1075 (within 400 of it) bridges them into [1000, 1250), closed at 1300.
    // After 2500 (watermark 2200) the fired sessions up to 1800 are dropped,
    // and 1700 is more than 400 behind: late.
    let times = [(1000, 1.0), (1150, 2.0), (1600, 16.0), (1075, 4.0), (2500, 32.0), (1700, 64.0)];
    let parts = vec![times.iter().map(|&(t, v)| record(t, "a", v)).collect()];
    let (rows, dead) = collect(parts.clone(), gap, (1, 1, 1), Some(LATENESS))?;
    let a = |start, end, diff, count, sum| ("a".to_string(), start, end, diff, count, sum);
    let want = vec![
        a(1000, 1100, 1, 1, 1.0),
        a(1150, 1250, 1, 1, 2.0),
        a(1000, 1100, -1, 1, 1.0),
        a(1150, 1250, -1, 1, 2.0),
        a(1000, 1250, 1, 3, 7.0),
        a(1600, 1700, 1, 1, 16.0),
        a(2500, 2600, 1, 1, 32.0),
    ];
    anyhow::ensure!(rows == want, "\n got {rows:?}\nwant {want:?}");
    anyhow::ensure!(dead.len() == 1 && dead[0].stage == "late", "{dead:?}");
    anyhow::ensure!(
        dead[0].error.contains("time 1700") && dead[0].error.contains("watermark 2200"),
        "{}",
        dead[0].error
    );
    // A late record that extends a fired session past the watermark opens it
    // again: retracted now, its new row when the watermark reaches the new end.
    // 1400 makes the watermark 1100: [1000, 1100) fires; 1050 extends it to 1150.
    let parts =
        vec![vec![record(1000, "a", 1.0), record(1400, "a", 2.0), record(1050, "a", 4.0), record(9000, "a", 8.0)]];
    let (rows, dead) = collect(parts, gap, (2, 1, 1), Some(LATENESS))?;
    anyhow::ensure!(dead.is_empty(), "{dead:?}");
    let want = vec![
        a(1000, 1100, 1, 1, 1.0),
        a(1000, 1100, -1, 1, 1.0),
        a(1000, 1150, 1, 2, 5.0),
        a(1400, 1500, 1, 1, 2.0),
        a(9000, 9100, 1, 1, 8.0),
    ];
    anyhow::ensure!(rows == want, "\n got {rows:?}\nwant {want:?}");
    Ok(())
}

#[test]
fn count_windows_refuse_allowed_lateness() {
    let err = collect(vec![vec![record(1, "a", 1.0)]], CountWindow::new(2).into(), (1, 1, 1), Some(LATENESS))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("allowed_lateness") && err.contains("count windows"), "{err}");
}

/// A record behind the watermark whose earlier windows fired counts in its
/// later ones, also once the window stage merged its pane (sliding windows
/// keep merged panes: see `panes::Stacks`).
#[test]
fn a_sliding_record_behind_the_watermark_counts_in_its_windows_that_have_not_fired() -> anyhow::Result<()> {
    let spec: WindowSpec = Sliding::new(Duration::from_millis(1000), Duration::from_millis(250)).into();
    // After 5000 the watermark is 4700: [3500, 4500) has fired with the pane [4250, 4500)
    // of 4300; 4350 then falls in that pane, behind the watermark but in unfired windows.
    let times = [2000, 4300, 5000, 4350, 6000, 4800, 9000];
    let parts = vec![times.iter().map(|&t| record(t, "a", t as f64)).collect()];
    for workers in 1..=2 {
        let (rows, dead) = run_in_chunks(parts.clone(), spec, workers, 1, 1)?;
        anyhow::ensure!(dead.is_empty(), "{dead:?}");
        let events: Vec<_> = times.iter().zip(0..).map(|(&t, o)| ("a".to_string(), t, t as f64, (0, o))).collect();
        let mut want = reference(&events, spec);
        // What the reference cannot know: the windows that fired before a record came.
        for (start, t) in [(3500, 4350), (4000, 4800), (4250, 4800), (4500, 4800)] {
            let key = ("a".to_string(), start, start + 1000, 0);
            if let Some(row) = want.get_mut(&key) {
                row.0 -= 1;
                row.1 -= t as f64;
            }
        }
        want.retain(|_, row| row.0 > 0);
        anyhow::ensure!(rows == want, "{workers} workers:\n got {rows:?}\nwant {want:?}");
    }
    Ok(())
}

/// Early firings: while the input pauses, the open window emits its rows so
/// far, marked partial; the final rows are those of a run without them.
#[test]
fn early_firings_emit_partial_rows_then_the_final_ones() -> anyhow::Result<()> {
    let parts =
        vec![vec![record(1000, "a", 1.0), record(1200, "a", 2.0), record(1300, "b", 4.0), record(9000, "a", 8.0)]];
    let rows = Arc::new(Mutex::new(Vec::new()));
    let source = Memory::new(parts, 1).pause_after(2, Duration::from_millis(300));
    let r = rows.clone();
    Pipeline::new("early").bounded(true).epoch_records(1, 2).run(move |p| {
        p.source(source.clone())?
            .decode::<Ev>(Json)
            .source_time(Duration::from_millis(DELAY))?
            .key_by(|e| e.k.clone())
            .window(Tumbling::new(Duration::from_secs(2)))
            .early_firings(Duration::from_millis(20))
            .aggregate((Count, Sum(|e: &Ev| e.v)))?
            .map(|w| (w.partial, w.key, w.start, w.value.0, w.value.1))
            .sink(Collect(r.clone()))?;
        p.dead_letters().sink(Collect(Arc::new(Mutex::new(Vec::new()))))
    })?;
    let rows = std::mem::take(&mut *rows.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    let finals: Vec<_> = rows.iter().filter(|r| !r.0).cloned().collect();
    let want = [
        (false, "a".to_string(), 0, 2, 3.0),
        (false, "b".to_string(), 0, 1, 4.0),
        (false, "a".to_string(), 8000, 1, 8.0),
    ];
    anyhow::ensure!(finals.len() == 3 && want.iter().all(|w| finals.contains(w)), "{finals:?}");
    // During the pause, the window [0, 2000) of a held the first two records.
    anyhow::ensure!(rows.contains(&(true, "a".to_string(), 0, 2, 3.0)), "{rows:?}");
    // A partial row is of a window that gets a final row, and has counted no more than it
    // (a later window may fire early too, if its timer comes before the end of input).
    let partial_ok = |p: &(bool, String, i64, u64, f64)| finals.iter().any(|f| f.1 == p.1 && f.2 == p.2 && p.3 <= f.3);
    anyhow::ensure!(rows.iter().filter(|r| r.0).all(partial_ok), "{rows:?}");
    Ok(())
}

#[test]
fn early_firings_of_a_session_window_are_refused() {
    let err = Pipeline::new("early")
        .run(|p| {
            p.source(Memory::new(vec![vec![record(1, "a", 1.0)]], 1))?
                .decode::<Ev>(Json)
                .source_time(Duration::ZERO)?
                .key_by(|e| e.k.clone())
                .window(Session::new(Duration::from_secs(1)))
                .early_firings(Duration::from_millis(20))
                .aggregate(Count)?;
            Ok(())
        })
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("early_firings") && err.contains("tumbling and sliding"), "{err}");
}

#[test]
fn a_sliding_slide_longer_than_the_size_is_refused() {
    let spec = Sliding::new(Duration::from_secs(1), Duration::from_secs(2));
    let err = run(vec![vec![record(1, "a", 1.0)]], spec.into(), 1, 1).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("slide"), "{err}");
}
