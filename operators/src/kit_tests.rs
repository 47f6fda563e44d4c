//! The stateful kit's processing-time timers in a real pipeline.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir_core::Pipeline;
use weir_core::record::{EventTime, Rec};
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
