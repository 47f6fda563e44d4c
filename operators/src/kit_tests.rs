//! The stateful kit's processing-time timers in a real pipeline.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir_core::Pipeline;
use weir_core::record::{DeadLetter, EventTime, Rec};
use weir_core::state::{KeyCx, KeyedLogic, ProcessingTime};

use crate::prelude::*;
use crate::testing::{Collect, Memory, Record};

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Ev {
    k: String,
}

fn record(k: &str) -> Record {
    (None, format!(r#"{{"k":"{k}"}}"#).into_bytes())
}

/// Emits a key's record count once it has been quiet for `quiet_ms` of
/// processing time (each record moves the key's timer).
struct Quiet {
    quiet_ms: i64,
}

#[derive(Default, Serialize, Deserialize)]
struct Seen {
    count: u64,
    timer: Option<ProcessingTime>,
}

impl KeyedLogic<String, Rec<Ev>> for Quiet {
    type State = Seen;
    type Out = (String, u64);

    fn on_record(&mut self, cx: &mut KeyCx<'_, '_, String, Seen, (String, u64)>, _: Rec<Ev>) {
        let at = cx.processing_time() + self.quiet_ms;
        if let Some(old) = cx.state().timer.replace(at) {
            cx.delete_processing_timer(old);
        }
        cx.state().count += 1;
        cx.set_processing_timer(at);
    }

    fn on_timer(&mut self, _: &mut KeyCx<'_, '_, String, Seen, (String, u64)>, _: EventTime) {}

    fn on_processing_timer(&mut self, cx: &mut KeyCx<'_, '_, String, Seen, (String, u64)>, _: ProcessingTime) {
        let row = (cx.key().clone(), cx.state().count);
        cx.emit(0, row);
        cx.state().timer = None;
    }
}

/// While the input pauses for 400 ms, each key's 50 ms timer fires once (the
/// deleted earlier timer of `a` never does); a timer still pending when a
/// bounded input ends does not fire.
#[test]
fn processing_time_timers_fire_while_the_input_pauses() -> anyhow::Result<()> {
    for workers in [1, 2] {
        let parts = vec![vec![record("a"), record("b"), record("a"), record("a"), record("b")]];
        let source = Memory::new(parts, 1).pause_after(3, Duration::from_millis(400));
        let rows = Arc::new(Mutex::new(Vec::new()));
        let r = rows.clone();
        Pipeline::new("quiet").workers(workers).bounded(true).epoch_records(1, 1).run(move |p| {
            p.source(source.clone())?
                .decode::<Ev>(Json)
                .stateful("quiet", |e: &Ev| e.k.clone(), Quiet { quiet_ms: 50 })?
                .sink(Collect(r.clone()))?;
            p.dead_letters().sink(Collect(Arc::new(Mutex::new(Vec::new()))))
        })?;
        let mut rows = std::mem::take(&mut *rows.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
        rows.sort();
        anyhow::ensure!(rows == vec![("a".to_string(), 2), ("b".to_string(), 1)], "{workers} workers: {rows:?}");
    }
    Ok(())
}

/// At its event-time timer (the end of the input), each key emits `ROWS`
/// numbered rows: more than two [`Emit::BATCH`](weir_core::state::Emit::BATCH)es
/// from one call.
struct Burst;

/// Rows per key, from one timer.
const ROWS: u64 = 2 * weir_core::state::Emit::<()>::BATCH as u64 + 377;

impl KeyedLogic<String, Rec<Ev>> for Burst {
    type State = bool;
    type Out = (String, u64);

    fn on_record(&mut self, cx: &mut KeyCx<'_, '_, String, bool, (String, u64)>, _: Rec<Ev>) {
        if !std::mem::replace(cx.state(), true) {
            cx.set_timer(EventTime::MAX);
        }
    }

    fn on_timer(&mut self, cx: &mut KeyCx<'_, '_, String, bool, (String, u64)>, _: EventTime) {
        for i in 0..ROWS {
            let row = (cx.key().clone(), i);
            cx.emit(0, row);
        }
    }
}

/// Rows emitted in batches reach the next step all, once, in the order they
/// were emitted, and the step's `emitted` counter counts each once.
#[test]
fn a_call_emitting_many_batches_hands_on_every_row_in_order() -> anyhow::Result<()> {
    for workers in [1, 2] {
        let parts = vec![vec![record("a"), record("b"), record("a"), record("c")]];
        let source = Memory::new(parts, 1);
        let rows = Arc::new(Mutex::new(Vec::new()));
        let r = rows.clone();
        let summary = Pipeline::new("burst").workers(workers).bounded(true).run(move |p| {
            p.source(source.clone())?
                .decode::<Ev>(Json)
                .stateful("burst", |e: &Ev| e.k.clone(), Burst)?
                .sink(Collect(r.clone()))?;
            p.dead_letters().sink(Collect(Arc::new(Mutex::new(Vec::new()))))
        })?;
        let rows = std::mem::take(&mut *rows.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
        for key in ["a", "b", "c"] {
            let seq: Vec<u64> = rows.iter().filter(|(k, _)| k == key).map(|(_, i)| *i).collect();
            anyhow::ensure!(seq == (0..ROWS).collect::<Vec<_>>(), "{workers} workers, key {key}: {} rows", seq.len());
        }
        anyhow::ensure!(rows.len() as u64 == 3 * ROWS, "{workers} workers: {} rows", rows.len());
        let emitted = summary.counters.iter().find(|(k, _)| k.as_str() == "burst.emitted").map(|(_, v)| *v);
        anyhow::ensure!(emitted == Some(3 * ROWS), "{workers} workers: emitted {emitted:?}");
    }
    Ok(())
}

/// Sends the records of keys starting with `x` as dead letters, counts the others.
struct Picky {
    /// Whether it names its dead-letter stage.
    names_stage: bool,
}

impl KeyedLogic<String, Rec<Ev>> for Picky {
    type State = u64;
    type Out = (String, u64);

    fn on_record(&mut self, cx: &mut KeyCx<'_, '_, String, u64, (String, u64)>, r: Rec<Ev>) {
        if r.value.k.starts_with('x') {
            cx.dead_letter(DeadLetter::as_json("picky", "test", &r.meta, "bad key".into(), &r.value));
        } else {
            *cx.state() += 1;
            let row = (cx.key().clone(), *cx.state());
            cx.emit(r.meta.event_time, row);
        }
    }

    fn on_timer(&mut self, _: &mut KeyCx<'_, '_, String, u64, (String, u64)>, _: EventTime) {}

    fn dead_letter_stage(&self) -> Option<&'static str> {
        self.names_stage.then_some("picky")
    }
}

/// A keyed step's dead letters reach the pipeline's dead-letter stream, each
/// once, counted under the stage its logic names, with 1 and 2 workers; a
/// step whose logic sends one without naming a stage fails the run with an
/// error naming the step instead of losing it.
#[test]
fn a_keyed_step_sends_dead_letters_and_one_without_a_stage_is_an_error() -> anyhow::Result<()> {
    let input = || vec![vec![record("a"), record("x1"), record("b"), record("x2"), record("a")]];
    for workers in [1, 2] {
        let (rows, dead) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(Vec::new())));
        let (r, d) = (rows.clone(), dead.clone());
        let source = Memory::new(input(), 1);
        let summary = Pipeline::new("picky").workers(workers).bounded(true).run(move |p| {
            p.source(source.clone())?
                .decode::<Ev>(Json)
                .stateful("picky", |e: &Ev| e.k.clone(), Picky { names_stage: true })?
                .sink(Collect(r.clone()))?;
            p.dead_letters().sink(Collect(d.clone()))
        })?;
        let mut rows = std::mem::take(&mut *rows.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
        rows.sort();
        anyhow::ensure!(rows == [("a".to_string(), 1), ("a".to_string(), 2), ("b".to_string(), 1)], "{rows:?}");
        let dead: Vec<DeadLetter> = std::mem::take(&mut *dead.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
        let mut keys: Vec<String> = dead.iter().map(|l| String::from_utf8_lossy(&l.payload).into_owned()).collect();
        keys.sort();
        anyhow::ensure!(keys == [r#"{"k":"x1"}"#, r#"{"k":"x2"}"#], "{workers} workers: {dead:?}");
        anyhow::ensure!(dead.iter().all(|l| l.stage == "picky" && l.error == "bad key"), "{dead:?}");
        let counted = summary.counters.iter().find(|(k, _)| k.as_str() == "dead_letters.picky").map(|(_, v)| *v);
        anyhow::ensure!(counted == Some(2), "{workers} workers: counted {counted:?}");
    }
    let source = Memory::new(input(), 1);
    let run = Pipeline::new("picky").workers(1).bounded(true).run(move |p| {
        p.source(source.clone())?
            .decode::<Ev>(Json)
            .stateful("picky", |e: &Ev| e.k.clone(), Picky { names_stage: false })?
            .sink(Collect(Arc::new(Mutex::new(Vec::new()))))?;
        p.dead_letters().sink(Collect(Arc::new(Mutex::new(Vec::new()))))
    });
    let err = run.err().map(|e| format!("{e:#}")).unwrap_or_default();
    anyhow::ensure!(err.contains("picky") && err.contains("dead_letter_stage"), "{err}");
    Ok(())
}
