//! Anomaly scores of a CSV time series, through the streaming detectors.
//!
//! ```text
//! anomaly_scores --input SERIES.csv --detector zscore [--output SCORES.csv]
//! anomaly_scores --list-detectors
//! ```
//!
//! The input's first column is `timestamp` (`2014-02-14 14:30:00`, or with a
//! `T`, optionally with fractional seconds, read as UTC) and the others are
//! numbers: one column is a univariate series; with several, a univariate
//! detector scores each column and the row takes the largest score
//! (`mahalanobis` takes the columns together). The output has one row per
//! input row: `timestamp`, the value columns as given, `anomaly_score` and
//! `alert` (0/1, the detector's own decision). A value that is not a number
//! gives its row score 0 and alert 0 (it is skipped for the detector's
//! state); such rows are counted on stderr and never stop the run. A
//! silence alert marks the row that ends the silence.
//!
//! The file is read by a pipeline (`LinesFile` source, a CSV format, event
//! times from the timestamp, `.detect(...)`) like any other input; the only
//! pass of its own is over the first 100 rows, for the defaults that need a
//! scale (`threshold`'s bounds, `rate`'s largest rate, the `flatline` and
//! `silence` durations, ten intervals: see `Calibration`).

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use serde::{Deserialize, Serialize};
use weir::core::checkpoint::Publish;
use weir::core::sink::{Rejected, Sink, SinkContext, SinkWriter};
use weir::core::time::Epoch;
use weir::operators::decode::Format;
use weir::operators::detect::{Detector, NAMES};
use weir::prelude::*;

/// Scores a CSV time series with one of Weir's streaming anomaly detectors.
#[derive(Parser, Debug)]
#[command(name = "anomaly_scores", version)]
struct Args {
    /// The input CSV: `timestamp` then one or more numeric columns.
    #[arg(long, required_unless_present = "list_detectors")]
    input: Option<PathBuf>,
    /// The detector (see --list-detectors).
    #[arg(long, default_value = "zscore")]
    detector: String,
    /// The output CSV (default: standard output).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Prints the detectors' names, one a line, and exits.
    #[arg(long)]
    list_detectors: bool,
}

/// One CSV row: its time (ms since the Unix epoch, UTC), its values (NaN
/// for one that is not a number) and whether any was not a number.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Line {
    ts: i64,
    values: Vec<f64>,
    bad: bool,
}

/// The CSV format: a line is a timestamp and numbers, comma-separated. A
/// line whose timestamp does not parse (the header) is a dead letter.
#[derive(Clone, Copy)]
struct Csv;

impl Format<Line> for Csv {
    fn decode(&self, bytes: &[u8]) -> Result<Line, String> {
        let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?;
        let mut fields = text.trim_end_matches(['\r', '\n']).split(',');
        let ts = parse_time(fields.next().unwrap_or("")).ok_or_else(|| format!("no timestamp in `{text}`"))?;
        let values: Vec<f64> = fields.map(|f| f.trim().parse::<f64>().unwrap_or(f64::NAN)).collect();
        let bad = values.iter().any(|v| !v.is_finite());
        Ok(Line { ts, values, bad })
    }
}

/// `YYYY-MM-DD HH:MM:SS[.fff]` (or with `T`) as ms since the Unix epoch, UTC.
fn parse_time(s: &str) -> Option<i64> {
    let s = s.trim().trim_matches('"');
    let (date, time) = s.split_once([' ', 'T'])?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (h, min, sec) = (t.next()??, t.next()??, t.next().unwrap_or(Some(0))?);
    let ms = if frac.is_empty() { 0 } else { format!("{:0<3}", &frac[..frac.len().min(3)]).parse::<i64>().ok()? };
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || h > 23 || min > 59 || sec > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + h) * 60 + min) * 60_000 + sec * 1000 + ms)
}

/// A sink that collects rows in memory (the scores are written in input order at the end).
struct Rows<T>(Arc<Mutex<Vec<T>>>);

impl<T> Clone for Rows<T> {
    fn clone(&self) -> Self {
        Rows(self.0.clone())
    }
}

impl<T: Send + 'static> Sink<T> for Rows<T> {
    fn kind(&self) -> &str {
        "rows"
    }

    fn rejects_rows(&self) -> bool {
        false
    }

    fn open(&self, _: &SinkContext) -> weir::Result<Box<dyn SinkWriter<T>>> {
        Ok(Box::new(self.clone()))
    }
}

impl<T> SinkWriter<T> for Rows<T> {
    fn write(&mut self, rows: &mut Vec<T>, _: &mut Vec<Rejected<T>>) -> weir::Result<()> {
        self.0.lock().map_err(|_| weir::Error::config("rows", "a worker panicked"))?.append(rows);
        Ok(())
    }

    fn stage(&mut self, _: Epoch) -> weir::Result<Vec<Publish>> {
        Ok(Vec::new())
    }
}

/// A scored row: event time, score, alert, and whether it is a silence's own row.
type ScoreRow = (i64, f64, bool, bool);

/// Column `i` of a line (NaN when the line has fewer).
fn column(i: usize) -> impl Fn(&Line) -> f64 + Clone + 'static {
    move |l: &Line| l.values.get(i).copied().unwrap_or(f64::NAN)
}

/// Runs `detector` over the CSV through a pipeline: the scored rows and the dead letters.
fn score<D>(input: &Path, detector: D) -> anyhow::Result<(Vec<ScoreRow>, Vec<DeadLetter>)>
where
    D: Detector<Line> + Clone + Send + Sync,
{
    let rows = Arc::new(Mutex::new(Vec::new()));
    let dead = Arc::new(Mutex::new(Vec::new()));
    let (r, dl, path) = (rows.clone(), dead.clone(), input.to_path_buf());
    Pipeline::new("anomaly-scores").workers(1).run(move |p| {
        p.source(LinesFile::open(&path)?)?
            .decode::<Line>(Csv)
            .event_time(|l| l.ts, Duration::ZERO)?
            .key_by(|_| 0u8)
            .detect(detector.clone())?
            .map(|s| {
                let silence = s.alert.as_ref().is_some_and(|a| a.detector == "silence");
                (s.event_time, s.score, s.alert.is_some(), silence)
            })
            .sink(Rows(r.clone()))?;
        p.dead_letters().sink(Rows(dl.clone()))
    })?;
    let rows = rows.lock().map(|mut v| std::mem::take(&mut *v)).map_err(|_| anyhow::anyhow!("poisoned"))?;
    let dead = dead.lock().map(|mut v| std::mem::take(&mut *v)).map_err(|_| anyhow::anyhow!("poisoned"))?;
    Ok((rows, dead))
}

/// Scales the defaults need, from the first 100 rows: the median interval
/// between rows and, per column, the mean and standard deviation of its
/// values and of its change per second.
struct Calibration {
    interval_ms: i64,
    columns: Vec<Scale>,
}

/// One column's scales (see [`Calibration`]).
#[derive(Clone, Copy)]
struct Scale {
    mean: f64,
    sd: f64,
    rate_sd: f64,
}

fn calibrate(input: &Path, columns: usize) -> anyhow::Result<Calibration> {
    let file = std::fs::File::open(input).with_context(|| format!("opening {}", input.display()))?;
    let lines: Vec<Line> = BufReader::new(file)
        .lines()
        .take(101)
        .filter_map(|l| l.ok())
        .filter_map(|l| Csv.decode(l.as_bytes()).ok())
        .collect();
    let mut gaps: Vec<i64> = lines.windows(2).map(|w| w[1].ts - w[0].ts).filter(|g| *g > 0).collect();
    gaps.sort_unstable();
    let interval_ms = gaps.get(gaps.len() / 2).copied().unwrap_or(60_000);
    let sd_of = |v: &[f64]| {
        let n = v.len().max(1) as f64;
        let mean = v.iter().sum::<f64>() / n;
        (mean, (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt())
    };
    let positive = |x: f64| if x > 0.0 && x.is_finite() { x } else { 1.0 };
    let columns = (0..columns)
        .map(|i| {
            let points: Vec<(i64, f64)> =
                lines.iter().filter_map(|l| l.values.get(i).filter(|v| v.is_finite()).map(|v| (l.ts, *v))).collect();
            let values: Vec<f64> = points.iter().map(|p| p.1).collect();
            let rates: Vec<f64> = points
                .windows(2)
                .filter(|w| w[1].0 > w[0].0)
                .map(|w| (w[1].1 - w[0].1) / ((w[1].0 - w[0].0) as f64 / 1000.0))
                .collect();
            let ((mean, sd), (_, rate_sd)) = (sd_of(&values), sd_of(&rates));
            Scale { mean, sd: positive(sd), rate_sd: positive(rate_sd) }
        })
        .collect();
    Ok(Calibration { interval_ms, columns })
}

/// The value columns' names.
fn header(input: &Path) -> anyhow::Result<Vec<String>> {
    let file = std::fs::File::open(input).with_context(|| format!("opening {}", input.display()))?;
    let Some(first) = BufReader::new(file).lines().next().transpose()? else { bail!("{} is empty", input.display()) };
    let cols: Vec<String> = first.trim_end().split(',').map(|c| c.trim().to_string()).collect();
    if cols.first().map(String::as_str) != Some("timestamp") || cols.len() < 2 {
        bail!("{}: the header must be `timestamp` and at least one value column, not `{first}`", input.display());
    }
    Ok(cols[1..].to_vec())
}

/// Runs detector `name` over `columns` columns.
fn run(name: &str, input: &Path, columns: usize, c: &Calibration) -> anyhow::Result<(Vec<ScoreRow>, Vec<DeadLetter>)> {
    let duration = Duration::from_millis((c.interval_ms * 10).max(1) as u64);
    match name {
        "threshold" => score(
            input,
            Ensemble::max(
                c.columns
                    .iter()
                    .enumerate()
                    .map(|(i, s)| Threshold::new(column(i)).min(s.mean - 6.0 * s.sd).max(s.mean + 6.0 * s.sd))
                    .collect::<Vec<_>>(),
            ),
        ),
        "rate" => score(
            input,
            Ensemble::max(
                c.columns
                    .iter()
                    .enumerate()
                    .map(|(i, s)| RateOfChange::new(column(i), 6.0 * s.rate_sd))
                    .collect::<Vec<_>>(),
            ),
        ),
        "zscore" => score(input, Ensemble::max((0..columns).map(|i| ZScore::new(column(i))).collect::<Vec<_>>())),
        "ewma" => score(input, Ensemble::max((0..columns).map(|i| Ewma::new(column(i))).collect::<Vec<_>>())),
        "mad" => score(input, Ensemble::max((0..columns).map(|i| Mad::new(column(i))).collect::<Vec<_>>())),
        "flatline" => {
            score(input, Ensemble::max((0..columns).map(|i| FlatLine::new(column(i), duration)).collect::<Vec<_>>()))
        }
        "silence" => score(input, Silence::new(column(0), duration)),
        "mahalanobis" => score(input, Mahalanobis::new(|l: &Line| l.values.clone())),
        "ensemble" => score(
            input,
            Ensemble::max(
                (0..columns).map(|i| Ensemble::max((ZScore::new(column(i)), Mad::new(column(i))))).collect::<Vec<_>>(),
            ),
        ),
        "knn" => score(input, Ensemble::max((0..columns).map(|i| Knn::new(column(i))).collect::<Vec<_>>())),
        other => bail!("no detector `{other}`: one of {}", NAMES.join(", ")),
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.list_detectors {
        for name in NAMES {
            println!("{name}");
        }
        return Ok(());
    }
    let input = args.input.context("--input is required")?;
    if !NAMES.contains(&args.detector.as_str()) {
        bail!("no detector `{}`: one of {}", args.detector, NAMES.join(", "));
    }
    let columns = header(&input)?;
    let calibration = calibrate(&input, columns.len())?;
    let (rows, dead) = run(&args.detector, &input, columns.len(), &calibration)?;

    // The readings' rows by time (in the order they were scored), and the silences' times.
    let mut by_time: BTreeMap<i64, VecDeque<(f64, bool)>> = BTreeMap::new();
    let mut silences: Vec<i64> = Vec::new();
    for (t, score, alert, silence) in rows {
        if silence {
            silences.push(t);
        } else {
            by_time.entry(t).or_default().push_back((score, alert));
        }
    }
    silences.sort_unstable();

    let mut out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    writeln!(out, "timestamp,{},anomaly_score,alert", columns.join(","))?;
    let file = std::fs::File::open(&input).with_context(|| format!("opening {}", input.display()))?;
    let (mut bad_rows, mut rows_out, mut alerts, mut prev) = (0u64, 0u64, 0u64, i64::MIN);
    let mut next_silence = silences.iter().peekable();
    for line in BufReader::new(file).lines().skip(1) {
        let line = line?;
        let text = line.trim_end_matches('\r');
        if text.is_empty() {
            continue;
        }
        let decoded = Csv.decode(text.as_bytes());
        let (mut score, mut alert) = match &decoded {
            Ok(l) => by_time.get_mut(&l.ts).and_then(|q| q.pop_front()).unwrap_or((0.0, false)),
            Err(_) => (0.0, false),
        };
        if let Ok(l) = &decoded {
            // A silence that ended at this row.
            while next_silence.peek().is_some_and(|&&s| s <= l.ts) {
                if next_silence.next().is_some_and(|&s| s > prev) {
                    (score, alert) = (1.0, true);
                }
            }
            prev = l.ts;
        }
        if decoded.as_ref().map_or(true, |l| l.bad) {
            bad_rows += 1;
            (score, alert) = (0.0, false);
        }
        let (ts, values) = text.split_once(',').unwrap_or((text, ""));
        writeln!(out, "{ts},{values},{score},{}", u8::from(alert))?;
        rows_out += 1;
        alerts += u64::from(alert);
    }
    out.flush()?;
    // The header is the one dead letter every file has.
    let unreadable = dead.len().saturating_sub(1);
    eprintln!(
        "{}: {rows_out} rows, {alerts} alerts ({}); {bad_rows} rows with a value that is not a number or no \
         timestamp (scored 0){}",
        input.display(),
        args.detector,
        if unreadable > 0 { format!(", {unreadable} without a timestamp") } else { String::new() }
    );
    Ok(())
}
