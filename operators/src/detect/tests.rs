//! Every detector against a plain reference on randomized input: readings
//! out of order within the watermark's bound, several partitions, one to
//! three workers, any epoch boundaries, bad values among them; and a run
//! restored from a mid-way checkpoint with another worker count.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use weir_core::Pipeline;
use weir_core::record::{DeadLetter, EventTime};

use super::knn::tail_score;
use super::mad::median_spread;
use super::zscore::deviation;
use super::{Detector, Scored, Verdict, Why, score};
use crate::prelude::*;
use crate::testing::{Collect, Memory, Record};

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Ev {
    k: String,
    v: f64,
    w: f64,
}

/// A value that the field functions read as NaN (JSON has no NaN).
const BAD: f64 = 999.0;

fn v(e: &Ev) -> f64 {
    if e.v == BAD { f64::NAN } else { e.v }
}

fn vw(e: &Ev) -> [f64; 2] {
    [v(e), e.w]
}

/// The allowed disorder.
const DELAY: i64 = 300;

/// A row as the tests compare them: key, time, value, score, alert.
type Row = (String, EventTime, f64, f64, bool);

/// An input reading: key, time, v, w, (partition, offset).
type Event = (String, EventTime, f64, f64, (u32, u64));

/// One generated reading: the step from the partition's largest time so far,
/// how far behind it the reading is, its key (0..3), v and w.
type Step = (i64, i64, usize, i64, i64);

fn record(t: EventTime, k: &str, v: f64, w: f64) -> Record {
    (Some(t), format!(r#"{{"k":"{k}","v":{v:?},"w":{w:?}}}"#).into_bytes())
}

/// The records of generated partitions and the same events for the
/// reference. `levels`: values from a few levels (stuck runs, ties), else
/// spread out. Each key gets a last reading after every other one, at the
/// end of partition 0, so no silence is left for the end of input to decide.
fn inputs(parts: &[Vec<Step>], levels: bool) -> (Vec<Vec<Record>>, Vec<Event>) {
    let mut input = Vec::new();
    let mut events = Vec::new();
    for (p, part) in parts.iter().enumerate() {
        let mut t = 1_700_000_000_000i64;
        let mut recs = Vec::new();
        for (offset, &(step, jitter, key, a, b)) in part.iter().enumerate() {
            t += step;
            let k = ["a", "b", "c"][key];
            let value = if a % 19 == 0 {
                BAD
            } else if levels {
                (a.rem_euclid(3)) as f64
            } else {
                a as f64 / 10.0
            };
            let w = b as f64 / 10.0 + value.min(100.0) * 0.5;
            recs.push(record(t - jitter, k, value, w));
            events.push((k.to_string(), t - jitter, value, w, (p as u32, offset as u64)));
        }
        input.push(recs);
    }
    let end = events.iter().map(|e| e.1).max().unwrap_or(0) + 1;
    for k in ["a", "b", "c"] {
        input[0].push(record(end, k, 1.0, 1.0));
        events.push((k.to_string(), end, 1.0, 1.0, (0, (input[0].len() - 1) as u64)));
    }
    (input, events)
}

fn lock<T>(m: &Mutex<T>) -> anyhow::Result<std::sync::MutexGuard<'_, T>> {
    m.lock().map_err(|_| anyhow::anyhow!("poisoned"))
}

/// Runs `d` over `parts` and returns its rows, sorted, and the dead letters.
fn run<D>(
    parts: Vec<Vec<Record>>,
    d: D,
    shown: fn(&D::Out) -> f64,
    (workers, epoch): (usize, u64),
) -> anyhow::Result<(Vec<Row>, Vec<DeadLetter>)>
where
    D: Detector<Ev> + Clone + Send + Sync,
    D::Out: Send,
{
    let rows = Arc::new(Mutex::new(Vec::new()));
    let dead = Arc::new(Mutex::new(Vec::new()));
    let source = Memory::new(parts, 3);
    let (r, dl) = (rows.clone(), dead.clone());
    Pipeline::new("detect").workers(workers).bounded(true).epoch_records(epoch, 2).run(move |p| {
        p.source(source.clone())?
            .decode::<Ev>(Json)
            .source_time(Duration::from_millis(DELAY as u64))?
            .key_by(|e| e.k.clone())
            .detect(d.clone())?
            .map(move |s: Scored<String, D::Out>| (s.key, s.event_time, shown(&s.value), s.score, s.alert.is_some()))
            .sink(Collect(r.clone()))?;
        p.dead_letters().sink(Collect(dl.clone()))
    })?;
    let mut rows = std::mem::take(&mut *lock(&rows)?);
    sort(&mut rows);
    let dead = std::mem::take(&mut *lock(&dead)?);
    Ok((rows, dead))
}

fn sort(rows: &mut [Row]) {
    rows.sort_by(|a, b| {
        (&a.0, a.1).cmp(&(&b.0, b.1)).then(a.2.total_cmp(&b.2)).then(a.3.total_cmp(&b.3)).then(a.4.cmp(&b.4))
    });
}

/// Whether `got` equals `want` (scores within 1e-9).
fn same(got: &[Row], want: &[Row]) -> std::result::Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("{} rows, want {}", got.len(), want.len()));
    }
    for (g, w) in got.iter().zip(want) {
        let value_eq = g.2 == w.2 || (g.2.is_nan() && w.2.is_nan());
        if g.0 != w.0 || g.1 != w.1 || !value_eq || (g.3 - w.3).abs() > 1e-9 || g.4 != w.4 {
            return Err(format!("got {g:?}\nwant {w:?}"));
        }
    }
    Ok(())
}

/// Each key's events in the order the detectors take them.
fn by_key(events: &[Event]) -> BTreeMap<String, Vec<Event>> {
    let mut keys: BTreeMap<String, Vec<Event>> = BTreeMap::new();
    for e in events {
        keys.entry(e.0.clone()).or_default().push(e.clone());
    }
    for evs in keys.values_mut() {
        evs.sort_by_key(|e| (e.1, e.4));
    }
    keys
}

/// The reference rows of a univariate detector: `judge(previous valid values
/// with times, time, value)` for each valid value, score 0 for the others;
/// key by key, each in the order scored (so members' rows line up).
fn univariate(events: &[Event], mut judge: impl FnMut(&[(EventTime, f64)], EventTime, f64) -> Verdict) -> Vec<Row> {
    let mut rows = Vec::new();
    for (k, evs) in by_key(events) {
        let mut seen: Vec<(EventTime, f64)> = Vec::new();
        for (_, t, x, _, _) in evs {
            let x = if x == BAD { f64::NAN } else { x };
            if !x.is_finite() {
                rows.push((k.clone(), t, x, 0.0, false));
                continue;
            }
            let v = judge(&seen, t, x);
            rows.push((k.clone(), t, x, v.score, v.alert));
            seen.push((t, x));
        }
    }
    rows
}

/// The last `n` values of `seen`.
fn last(seen: &[(EventTime, f64)], n: usize) -> Vec<f64> {
    seen[seen.len().saturating_sub(n)..].iter().map(|s| s.1).collect()
}

fn zscore_ref(events: &[Event], window: usize, min: usize, th: f64) -> Vec<Row> {
    univariate(events, |seen, _, x| {
        let w = last(seen, window);
        if w.len() < min.min(window).max(2) {
            return Verdict::NONE;
        }
        let n = w.len() as f64;
        let mean = w.iter().sum::<f64>() / n;
        let sd = (w.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
        deviation(x, mean, sd, w.len() as u64, th)
    })
}

fn mad_ref(events: &[Event], window: usize, min: usize, th: f64) -> Vec<Row> {
    univariate(events, |seen, _, x| {
        let w = last(seen, window);
        if w.len() < min.min(window).max(2) {
            return Verdict::NONE;
        }
        let (med, spread) = median_spread(w.iter().copied());
        deviation(x, med, spread, w.len() as u64, th)
    })
}

fn ewma_ref(events: &[Event], alpha: f64, min: u64, th: f64) -> Vec<Row> {
    univariate(events, |seen, _, x| {
        let n = seen.len();
        if (n as u64) < min.max(2) {
            return Verdict::NONE;
        }
        // Weights: (1 - alpha)^(n-1) for the first value, alpha (1 - alpha)^(n-1-i) for the others.
        let weight = |i: usize| {
            let decay = (1.0 - alpha).powi((n - 1 - i) as i32);
            if i == 0 { decay } else { alpha * decay }
        };
        let mean: f64 = (0..n).map(|i| weight(i) * seen[i].1).sum();
        let var: f64 = (0..n).map(|i| weight(i) * (seen[i].1 - mean).powi(2)).sum();
        deviation(x, mean, var.sqrt(), n as u64, th)
    })
}

fn threshold_ref(events: &[Event], lo: f64, hi: f64) -> Vec<Row> {
    univariate(events, |_, _, x| {
        if x >= lo && x <= hi {
            return Verdict::NONE;
        }
        let d = if x < lo { lo - x } else { x - hi };
        Verdict::new(0.5 + 0.5 * d / (d + (hi - lo)), 0.5, Why::Bounds { low: lo, high: hi })
    })
}

fn rate_ref(events: &[Event], max: f64) -> Vec<Row> {
    univariate(events, |seen, t, x| {
        let Some(&(t0, x0)) = seen.last() else { return Verdict::NONE };
        let r = if x == x0 {
            0.0
        } else if t > t0 {
            ((x - x0) / ((t - t0) as f64 / 1000.0)).abs()
        } else {
            f64::INFINITY
        };
        let score = if r.is_infinite() { 1.0 } else { r / (r + max) };
        Verdict::new(score, 0.5, Why::Nothing)
    })
}

fn flatline_ref(events: &[Event], duration: i64) -> Vec<Row> {
    univariate(events, |seen, t, x| {
        // The run: the latest readings equal to x, back to the first change.
        let since = seen.iter().rev().take_while(|s| s.1 == x).last().map(|s| s.0);
        match since {
            Some(since) if seen.len() + 1 >= 2 && since < t => {
                Verdict::new((t - since) as f64 / duration as f64, 1.0, Why::Nothing)
            }
            _ => Verdict::NONE,
        }
    })
}

fn silence_ref(events: &[Event], quiet: i64) -> Vec<Row> {
    let mut rows = Vec::new();
    for (k, evs) in by_key(events) {
        let mut prev: Option<(EventTime, f64)> = None;
        for (_, t, x, _, _) in evs {
            let x = if x == BAD { f64::NAN } else { x };
            if let Some((t0, x0)) = prev
                && t - t0 >= quiet
            {
                rows.push((k.clone(), t0 + quiet, x0, 1.0, true));
            }
            rows.push((k.clone(), t, x, 0.0, false));
            prev = Some((t, x));
        }
    }
    sort(&mut rows);
    rows
}

/// Solves `a y = b` by Gaussian elimination with partial pivoting (indices as in the textbook).
#[allow(clippy::needless_range_loop)]
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Vec<f64> {
    let d = b.len();
    for c in 0..d {
        let p = (c..d).max_by(|&i, &j| a[i][c].abs().total_cmp(&a[j][c].abs())).unwrap_or(c);
        a.swap(c, p);
        b.swap(c, p);
        for r in c + 1..d {
            let f = a[r][c] / a[c][c];
            for k in c..d {
                a[r][k] -= f * a[c][k];
            }
            b[r] -= f * b[c];
        }
    }
    let mut y = vec![0.0; d];
    for r in (0..d).rev() {
        y[r] = (b[r] - (r + 1..d).map(|k| a[r][k] * y[k]).sum::<f64>()) / a[r][r];
    }
    y
}

fn mahalanobis_ref(events: &[Event], min: u64, th: f64) -> Vec<Row> {
    let mut rows = Vec::new();
    for (k, evs) in by_key(events) {
        let mut seen: Vec<[f64; 2]> = Vec::new();
        for (_, t, x, w, _) in evs {
            let x = if x == BAD { f64::NAN } else { x };
            if !x.is_finite() {
                rows.push((k.clone(), t, x, 0.0, false));
                continue;
            }
            let n = seen.len();
            let mut verdict = Verdict::NONE;
            if n as u64 >= min.max(3) {
                let mean: Vec<f64> = (0..2).map(|i| seen.iter().map(|s| s[i]).sum::<f64>() / n as f64).collect();
                let cov = |i: usize, j: usize| {
                    seen.iter().map(|s| (s[i] - mean[i]) * (s[j] - mean[j])).sum::<f64>() / (n - 1) as f64
                };
                let ridge = 1e-9 * ((cov(0, 0) + cov(1, 1)) / 2.0).max(1e-300);
                let a = vec![vec![cov(0, 0) + ridge, cov(0, 1)], vec![cov(1, 0), cov(1, 1) + ridge]];
                let diff = vec![x - mean[0], w - mean[1]];
                let y = solve(a, diff.clone());
                let d2 = diff[0] * y[0] + diff[1] * y[1];
                verdict = Verdict::new(score::chi_squared(d2, 2), th, Why::Nothing);
            }
            rows.push((k.clone(), t, x, verdict.score, verdict.alert));
            seen.push([x, w]);
        }
    }
    sort(&mut rows);
    rows
}

/// The knn detector's reference: every pattern compared with every earlier
/// one in plain loops, the statistics recomputed from the values each time.
fn knn_ref(events: &[Event], lag: usize, history: usize, window: usize, min: usize, suppress: usize) -> Vec<Row> {
    // The tests' scale: 20 decades, so that few scores are capped at 1.
    let (mut dists, mut raws): (Vec<f64>, Vec<f64>) = (Vec::new(), Vec::new());
    let mean_sd = |w: &[f64]| {
        let n = w.len() as f64;
        let mean = w.iter().sum::<f64>() / n;
        let sd = if w.len() < 2 { 0.0 } else { (w.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt() };
        (mean, sd)
    };
    univariate(events, |seen, _, x| {
        if seen.is_empty() {
            // A new key.
            (dists, raws) = (Vec::new(), Vec::new());
        }
        let mut vals: Vec<f64> = seen.iter().map(|s| s.1).collect();
        vals.push(x);
        let (mean, sd) = mean_sd(&vals[vals.len().saturating_sub(window)..]);
        let mut raw = 0.0;
        let j = vals.len() - 1;
        if sd > 1e-9 * mean.abs().max(1e-12) && j > lag {
            let current = &vals[j + 1 - lag..=j];
            let mut best: Option<f64> = None;
            for e in j.saturating_sub(history).max(lag - 1)..=j - lag - 1 {
                let d2: f64 = vals[e + 1 - lag..=e].iter().zip(current).map(|(a, b)| (a - b) * (a - b)).sum();
                best = Some(best.map_or(d2, |b: f64| b.min(d2)));
            }
            if let Some(best) = best {
                let d = best.sqrt() / (sd * (lag as f64).sqrt());
                if dists.len() >= min.min(window) {
                    let (m, s) = mean_sd(&dists[dists.len().saturating_sub(window)..]);
                    raw = tail_score(d, m, s, 20.0).0;
                }
                dists.push(d);
            }
        }
        let before = raws[raws.len().saturating_sub(suppress)..].iter().copied().fold(0.0, f64::max);
        raws.push(raw);
        let kept = if raw > before + super::knn::BEATS { raw } else { 0.0 };
        Verdict::new(kept, 0.5, Why::Nothing)
    })
}

/// The max of two members' rows (the same readings in the same order).
fn max_of(a: Vec<Row>, b: Vec<Row>) -> Vec<Row> {
    a.into_iter().zip(b).map(|(a, b)| (a.0, a.1, a.2, a.3.max(b.3), a.4 || b.4)).collect()
}

/// Runs detector number `which` (with parameters from `p`) and its reference.
fn check_detector(
    which: usize,
    p: (usize, usize),
    parts: Vec<Vec<Record>>,
    events: &[Event],
    run_as: (usize, u64),
) -> anyhow::Result<()> {
    let (window, min) = (p.0.max(2), p.1);
    let th = 0.99;
    let id = |x: &f64| *x;
    let (got, want) = match which {
        0 => (
            run(parts, ZScore::new(v).window(window).min_samples(min).threshold(th), id, run_as)?,
            zscore_ref(events, window, min, th),
        ),
        1 => (
            run(parts, Mad::new(v).window(window).min_samples(min).threshold(th), id, run_as)?,
            mad_ref(events, window, min, th),
        ),
        2 => {
            let alpha = 1.0 / window as f64;
            (
                run(parts, Ewma::new(v).alpha(alpha).min_samples(min as u64).threshold(th), id, run_as)?,
                ewma_ref(events, alpha, min as u64, th),
            )
        }
        3 => (run(parts, Threshold::new(v).min(-20.0).max(30.0), id, run_as)?, threshold_ref(events, -20.0, 30.0)),
        4 => (run(parts, RateOfChange::new(v, 50.0), id, run_as)?, rate_ref(events, 50.0)),
        5 => {
            let d = Duration::from_millis(window as u64 * 40);
            (run(parts, FlatLine::new(v, d), id, run_as)?, flatline_ref(events, window as i64 * 40))
        }
        6 => {
            let q = Duration::from_millis(window as u64 * 30);
            (run(parts, Silence::new(v, q), id, run_as)?, silence_ref(events, window as i64 * 30))
        }
        7 => {
            let first = |x: &[f64; 2]| x[0];
            (
                run(parts, Mahalanobis::new(vw).min_samples(min as u64).threshold(th), first, run_as)?,
                mahalanobis_ref(events, min as u64, th),
            )
        }
        9 => {
            // The mean of a Vec of members of one type: z-scores over two windows.
            let members = vec![
                ZScore::new(v).window(window).min_samples(min).threshold(th),
                ZScore::new(v).window(window + 3).min_samples(min).threshold(th),
            ];
            let a = zscore_ref(events, window, min, th);
            let b = zscore_ref(events, window + 3, min, th);
            let want: Vec<Row> =
                a.into_iter().zip(b).map(|(a, b)| (a.0, a.1, a.2, (a.3 + b.3) / 2.0, a.4 || b.4)).collect();
            let first = |x: &Vec<f64>| x[0];
            (run(parts, Ensemble::mean(members), first, run_as)?, want)
        }
        10 => {
            let (lag, suppress, min) = (1 + p.1 % 3, p.0 % 4, min.max(2));
            let d = Knn::new(v)
                .lag(lag)
                .history(window)
                .window(window + 5)
                .min_samples(min)
                .suppress(suppress)
                .scale(20.0)
                .threshold(0.5);
            (run(parts, d, id, run_as)?, knn_ref(events, lag, window, window + 5, min, suppress))
        }
        _ => {
            let ens = Ensemble::max((
                ZScore::new(v).window(window).min_samples(min).threshold(th),
                Mad::new(v).window(window).min_samples(min).threshold(th),
            ));
            (
                run(parts, ens, id, run_as)?,
                max_of(zscore_ref(events, window, min, th), mad_ref(events, window, min, th)),
            )
        }
    };
    let (rows, dead) = got;
    let mut want = want;
    sort(&mut want);
    anyhow::ensure!(dead.is_empty(), "{:?}", dead.first());
    same(&rows, &want).map_err(|e| anyhow::anyhow!("detector {which}: {e}"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Out-of-order input within the bound gives exactly the reference's
    /// rows, with any worker count and any epoch boundaries.
    #[test]
    fn every_detector_equals_the_reference(
        parts in prop::collection::vec(
            prop::collection::vec((0i64..120, 0i64..=DELAY, 0usize..3, -400i64..400, -300i64..300), 1..80),
            1..4,
        ),
        which in 0usize..11,
        params in (2usize..12, 0usize..10),
        levels in any::<bool>(),
        workers in 1usize..=3,
        epoch in 1u64..30,
    ) {
        let (input, events) = inputs(&parts, levels);
        check_detector(which, params, input, &events, (workers, epoch)).map_err(|e| TestCaseError::fail(e.to_string()))?;
    }
}

/// The silence rows (time, key) of `rows`: those with an alert and score 1 at no reading's time.
fn silences(rows: &[Row], events: &[Event]) -> Vec<(EventTime, String)> {
    let mut out: Vec<_> = rows
        .iter()
        .filter(|r| r.4 && !events.iter().any(|e| e.0 == r.0 && e.1 == r.1))
        .map(|r| (r.1, r.0.clone()))
        .collect();
    out.sort();
    out
}

/// A key that stops reporting gets its alert from the watermark (it never
/// reports again); a gap between two readings gets one; the end of a
/// bounded input is no silence, though every key is silent then.
#[test]
fn silence_fires_by_the_watermark_and_not_at_the_end_of_input() -> anyhow::Result<()> {
    let mut part = Vec::new();
    let mut events = Vec::new();
    let mut add = |k: &str, t: EventTime| {
        part.push(record(t, k, t as f64, 0.0));
        events.push((k.to_string(), t, t as f64, 0.0, (0, 0)));
    };
    for t in (0..=10_000).step_by(1000) {
        if t <= 2000 {
            add("a", t);
        }
        add("b", t);
        if t == 0 || t == 8000 {
            add("c", t);
        }
    }
    for workers in [1, 2] {
        let (rows, dead) = run(vec![part.clone()], Silence::new(v, Duration::from_secs(3)), |x| *x, (workers, 1))?;
        anyhow::ensure!(dead.is_empty());
        let got = silences(&rows, &events);
        let want = vec![(3000, "c".to_string()), (5000, "a".to_string())];
        anyhow::ensure!(got == want, "{workers} workers: {got:?}");
        anyhow::ensure!(rows.len() == events.len() + 2, "{rows:?}");
    }
    Ok(())
}

/// A sink that collects rows and fails the run once it gets a row at or
/// after `fail_from` (rows after the input's pause), if set.
#[derive(Clone)]
struct FailFrom {
    rows: Arc<Mutex<Vec<Row>>>,
    fail_from: Option<EventTime>,
}

impl weir_core::sink::Sink<Row> for FailFrom {
    fn kind(&self) -> &str {
        "fail-from"
    }

    fn rejects_rows(&self) -> bool {
        false
    }

    fn open(&self, _: &weir_core::sink::SinkContext) -> weir_core::Result<Box<dyn weir_core::sink::SinkWriter<Row>>> {
        Ok(Box::new(self.clone()))
    }
}

impl weir_core::sink::SinkWriter<Row> for FailFrom {
    fn write(&mut self, rows: &mut Vec<Row>, _: &mut Vec<weir_core::sink::Rejected<Row>>) -> weir_core::Result<()> {
        if let Some(from) = self.fail_from
            && rows.iter().any(|r| r.1 >= from)
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

/// A run that fails after a checkpoint, restarted from it with another
/// worker count, emits exactly the reference's rows for what follows: the
/// restored windows hold what the first run put in them.
#[test]
fn a_run_restored_with_another_worker_count_continues_the_scores() -> anyhow::Result<()> {
    let detector = ZScore::new(v).window(30).min_samples(10).threshold(0.999);
    restored(detector, |events| zscore_ref(events, 30, 10, 0.999))
}

/// The knn detector's state (patterns, statistics, raw scores) survives a restore with another worker count.
#[test]
fn a_knn_run_restored_with_another_worker_count_continues_the_scores() -> anyhow::Result<()> {
    let detector = Knn::new(v).lag(3).history(40).window(60).min_samples(10).suppress(5).scale(20.0).threshold(0.5);
    restored(detector, |events| knn_ref(events, 3, 40, 60, 10, 5))
}

/// The restore check of `detector` against `reference`.
fn restored<D>(detector: D, reference: impl Fn(&[Event]) -> Vec<Row>) -> anyhow::Result<()>
where
    D: Detector<Ev, Out = f64> + Clone + Send + Sync,
{
    let dir = tempfile::tempdir()?;
    // Two partitions of 300 readings of three keys; values wander, with spikes.
    let mut rng = crate::testing::Rng::new(7);
    let mut parts = Vec::new();
    let mut events = Vec::new();
    for p in 0..2u32 {
        let mut recs = Vec::new();
        for o in 0..300u64 {
            let t = 1_000_000 + o as i64 * 100 - rng.below(200) as i64;
            let k = ["a", "b", "c"][rng.below(3) as usize];
            let x = ((rng.normal() * 10.0 + if rng.below(40) == 0 { 80.0 } else { 0.0 }) * 100.0).round() / 100.0;
            recs.push(record(t, k, x, 0.0));
            events.push((k.to_string(), t, x, 0.0, (p, o)));
        }
        parts.push(recs);
    }
    let want = reference(&events);
    let source = Memory::new(parts, 5).pause_after(150, Duration::from_millis(800));
    let state = dir.path().join("state");
    let run_with = |workers: usize, sink: FailFrom| {
        let (source, state, d) = (source.clone(), state.clone(), detector.clone());
        Pipeline::new("restore").workers(workers).bounded(true).state(state).epoch_records(20, 2).run(move |p| {
            p.source(source.clone())?
                .decode::<Ev>(Json)
                .source_time(Duration::from_millis(DELAY as u64))?
                .named("z")
                .key_by(|e| e.k.clone())
                .detect(d.clone())?
                .map(|s: Scored<String, f64>| (s.key, s.event_time, s.value, s.score, s.alert.is_some()))
                .sink(sink.clone())?;
            p.dead_letters().sink(Collect(Arc::new(Mutex::new(Vec::new()))))
        })
    };
    // Rows at 1,020,000 and later come only after the pause, by when a checkpoint committed.
    let first = Arc::new(Mutex::new(Vec::new()));
    let failed = run_with(1, FailFrom { rows: first.clone(), fail_from: Some(1_020_000) });
    anyhow::ensure!(failed.is_err(), "the first run should fail");
    let second = Arc::new(Mutex::new(Vec::new()));
    run_with(3, FailFrom { rows: second.clone(), fail_from: None })?;
    let mut rows = std::mem::take(&mut *lock(&second)?);
    sort(&mut rows);
    anyhow::ensure!(
        !rows.is_empty() && rows.len() < want.len(),
        "{} of {} rows after the restore",
        rows.len(),
        want.len()
    );
    // Every row the restored run emits is the reference's row for that reading.
    let mut left: BTreeMap<(String, EventTime, u64), Vec<(f64, bool)>> = BTreeMap::new();
    for w in &want {
        left.entry((w.0.clone(), w.1, w.2.to_bits())).or_default().push((w.3, w.4));
    }
    for r in &rows {
        let Some(scores) = left.get_mut(&(r.0.clone(), r.1, r.2.to_bits())) else {
            anyhow::bail!("{r:?}: no such reading");
        };
        let Some(i) = scores.iter().position(|s| (s.0 - r.3).abs() <= 1e-9 && s.1 == r.4) else {
            anyhow::bail!("{r:?}: the reference scores it {scores:?}");
        };
        scores.swap_remove(i);
    }
    // Between them the two runs scored every reading.
    let first = lock(&first)?.len();
    anyhow::ensure!(first + rows.len() >= want.len(), "{first} + {} < {}", rows.len(), want.len());
    Ok(())
}

/// [`super::NAMES`] lists every built-in detector's name, in order.
#[test]
fn the_names_are_the_detectors_names() {
    let q = Duration::from_secs(1);
    let names = [
        Detector::<Ev>::name(&Threshold::new(v).max(1.0)),
        Detector::<Ev>::name(&RateOfChange::new(v, 1.0)),
        Detector::<Ev>::name(&ZScore::new(v)),
        Detector::<Ev>::name(&Ewma::new(v)),
        Detector::<Ev>::name(&Mad::new(v)),
        Detector::<Ev>::name(&FlatLine::new(v, q)),
        Detector::<Ev>::name(&Silence::new(v, q)),
        Detector::<Ev>::name(&Mahalanobis::new(vw)),
        Detector::<Ev>::name(&Ensemble::max(vec![ZScore::new(v)])),
        Detector::<Ev>::name(&Knn::new(v)),
    ];
    assert_eq!(names, super::NAMES);
}

/// Parameters are checked when the step is built, naming the parameter;
/// a flow without event times is refused; `alerts` keeps the alerts.
#[test]
fn bad_parameters_are_config_errors_and_alerts_are_the_alerting_rows() -> anyhow::Result<()> {
    let build = |d: ZScore<fn(&Ev) -> f64>, times: bool| {
        Pipeline::new("refused")
            .run(move |p| {
                let flow = p.source(Memory::new(vec![vec![record(1, "a", 1.0, 0.0)]], 1))?.decode::<Ev>(Json);
                let flow = if times { flow.source_time(Duration::ZERO)? } else { flow };
                flow.key_by(|e| e.k.clone()).detect(d.clone())?.sink(Collect(Arc::new(Mutex::new(Vec::new()))))?;
                p.dead_letters().sink(Collect(Arc::new(Mutex::new(Vec::new()))))
            })
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let err = build(ZScore::new(v as fn(&Ev) -> f64).window(1), true);
    anyhow::ensure!(err.contains("zscore.window"), "{err}");
    let err = build(ZScore::new(v as fn(&Ev) -> f64).threshold(1.5), true);
    anyhow::ensure!(err.contains("zscore.threshold"), "{err}");
    let err = build(ZScore::new(v as fn(&Ev) -> f64), false);
    anyhow::ensure!(err.contains("event times"), "{err}");

    let parts = vec![(0..40).map(|i| record(i * 10, "a", if i == 30 { 100.0 } else { (i % 3) as f64 }, 0.0)).collect()];
    let alerts = Arc::new(Mutex::new(Vec::new()));
    let a = alerts.clone();
    Pipeline::new("alerts").bounded(true).run(move |p| {
        p.source(Memory::new(parts.clone(), 4))?
            .decode::<Ev>(Json)
            .source_time(Duration::ZERO)?
            .key_by(|e| e.k.clone())
            .detect(ZScore::new(v).min_samples(10))?
            .alerts()
            .sink(Collect(a.clone()))?;
        p.dead_letters().sink(Collect(Arc::new(Mutex::new(Vec::new()))))
    })?;
    let alerts = std::mem::take(&mut *lock(&alerts)?);
    anyhow::ensure!(alerts.len() == 1, "{alerts:?}");
    let a = &alerts[0];
    anyhow::ensure!(a.event_time == 300 && a.value == 100.0 && a.detector == "zscore" && a.score > 0.99999, "{a:?}");
    anyhow::ensure!(a.reason.contains("30 readings"), "{}", a.reason);
    Ok(())
}

/// A reading later than the allowed disorder (behind the watermark when it
/// arrives) scores 0 and leaves the state alone: the readings after it score
/// as if it had never come.
#[test]
fn a_reading_behind_the_watermark_scores_0_and_changes_nothing() -> anyhow::Result<()> {
    let times: Vec<EventTime> = (0..30).map(|i| 1000 + i * 100).collect();
    let values = |i: usize| (i % 4) as f64;
    let mut with_late: Vec<Record> = times.iter().enumerate().map(|(i, &t)| record(t, "a", values(i), 0.0)).collect();
    let plain = with_late.clone();
    // After 3000 (watermark 2700) a reading at 1050 is 1650 late.
    with_late.insert(21, record(1050, "a", 500.0, 0.0));
    let d = || ZScore::new(v).window(10).min_samples(5);
    let (late_rows, _) = run(vec![with_late], d(), |x| *x, (1, 1))?;
    let (rows, _) = run(vec![plain], d(), |x| *x, (1, 1))?;
    let late: Vec<_> = late_rows.iter().filter(|r| r.1 == 1050).collect();
    anyhow::ensure!(late.len() == 1 && late[0].3 == 0.0 && !late[0].4, "{late:?}");
    let others: Vec<Row> = late_rows.into_iter().filter(|r| r.1 != 1050).collect();
    same(&others, &rows).map_err(anyhow::Error::msg)
}

/// An alert as the panel test compares them: key, time, detector, value, score.
type AlertKey = (String, EventTime, String, f64, f64);

/// Runs `d` with `detect_alerts` over `parts`: its alerts, sorted.
fn run_alerts<D>(parts: Vec<Vec<Record>>, d: D, (workers, epoch): (usize, u64)) -> anyhow::Result<Vec<AlertKey>>
where
    D: Detector<Ev, Out = f64> + Clone + Send + Sync,
{
    let rows = Arc::new(Mutex::new(Vec::new()));
    let source = Memory::new(parts, 3);
    let r = rows.clone();
    Pipeline::new("panel").workers(workers).bounded(true).epoch_records(epoch, 2).run(move |p| {
        p.source(source.clone())?
            .decode::<Ev>(Json)
            .source_time(Duration::from_millis(DELAY as u64))?
            .key_by(|e| e.k.clone())
            .detect_alerts(d.clone())?
            .map(|a: super::Alert<String>| (a.key, a.event_time, a.detector, a.value, a.score))
            .sink(Collect(r.clone()))?;
        p.dead_letters().sink(Collect(Arc::new(Mutex::new(Vec::<DeadLetter>::new()))))
    })?;
    let mut rows = std::mem::take(&mut *lock(&rows)?);
    sort_alerts(&mut rows);
    Ok(rows)
}

fn sort_alerts(rows: &mut [AlertKey]) {
    rows.sort_by(|a, b| (&a.0, a.1, &a.2).cmp(&(&b.0, b.1, &b.2)).then(a.3.total_cmp(&b.3)));
}

/// The alerts of a reference's rows, under `name`.
fn alerts_of(rows: Vec<Row>, name: &str) -> impl Iterator<Item = AlertKey> + '_ {
    rows.into_iter().filter(|r| r.4).map(move |r| (r.0, r.1, name.to_string(), r.2, r.3))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// A panel's alerts (`detect_alerts`) are its members' own, each as in a
    /// step of its own, silences (due alerts) included, with any worker
    /// count and epoch boundaries.
    #[test]
    fn a_panel_alerts_as_each_member_would_alone(
        parts in prop::collection::vec(
            prop::collection::vec((0i64..400, 0i64..=DELAY, 0usize..3, -400i64..400, -300i64..300), 1..80),
            1..4,
        ),
        window in 2usize..12,
        workers in 1usize..=3,
        epoch in 1u64..30,
    ) {
        let (input, events) = inputs(&parts, false);
        let quiet = window as i64 * 100;
        let panel = Panel::new((
            ZScore::new(v).window(window).min_samples(2).threshold(0.99),
            Threshold::new(v).min(-20.0).max(30.0),
            Silence::new(v, Duration::from_millis(quiet as u64)),
        ));
        let got = run_alerts(input, panel, (workers, epoch)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut want: Vec<AlertKey> = alerts_of(zscore_ref(&events, window, 2, 0.99), "zscore")
            .chain(alerts_of(threshold_ref(&events, -20.0, 30.0), "threshold"))
            .chain(alerts_of(silence_ref(&events, quiet), "silence"))
            .collect();
        sort_alerts(&mut want);
        prop_assert_eq!(got.len(), want.len(), "got {:?}\nwant {:?}", got, want);
        for (g, w) in got.iter().zip(&want) {
            let value_eq = g.3 == w.3 || (g.3.is_nan() && w.3.is_nan());
            prop_assert!(g.0 == w.0 && g.1 == w.1 && g.2 == w.2 && value_eq && (g.4 - w.4).abs() < 1e-9, "got {:?}\nwant {:?}", g, w);
        }
    }
}
