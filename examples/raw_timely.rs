//! Baseline for the throughput suite: the sensor-window job written directly
//! on timely dataflow 0.32, with no Weir code (no checkpoints, no watermarks,
//! no dead-letter output).
//!
//! ```text
//! cargo run --release --example raw_timely -- --input FILE.jsonl --output OUT_DIR --workers 2
//! ```
//!
//! Each worker reads its share of the file's byte ranges (split into
//! `workers * 4` ranges aligned to line starts), parses lines with
//! `serde_json` exactly as Weir's `Json` format does (malformed lines are counted and dropped), keeps
//! `-50 <= temp <= 150`, exchanges readings by a hash of the device, and
//! aggregates count/min/max/sum per (device, one-minute window) in a hash map.
//! When its input is exhausted each worker writes its rows to
//! `OUT_DIR/part-<worker>.parquet` (columns device, window_start, count, min,
//! max, mean) with arrow and parquet directly.

use std::cell::Cell;
use std::collections::VecDeque;
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use arrow::array::{ArrayRef, Float64Builder, Int64Builder, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use rustc_hash::{FxHashMap, FxHasher};
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::generic::operator::source;

// Same allocator as examples/sensor_aggregation.rs, for a fair comparison.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Window length, ms.
const WINDOW_MS: i64 = 60_000;
/// Bytes read per source activation.
const CHUNK_BYTES: usize = 1 << 20;
/// Rows per Arrow record batch.
const ROWS_PER_BATCH: usize = 64 * 1024;

/// One input line (extra keys such as `hum` are ignored).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Reading {
    device: String,
    ts: i64,
    temp: f64,
}

/// count, min, max, sum.
type Acc = (i64, f64, f64, f64);

struct Args {
    input: PathBuf,
    output: PathBuf,
    workers: usize,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut input = None;
    let mut output = None;
    let mut workers = 1usize;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--input" => input = Some(PathBuf::from(value("--input")?)),
            "--output" => output = Some(PathBuf::from(value("--output")?)),
            "--workers" => workers = value("--workers")?.parse().context("--workers must be a number")?,
            "-h" | "--help" => {
                println!("usage: raw_timely --input FILE.jsonl --output OUT_DIR [--workers N]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (usage: --input FILE --output DIR --workers N)"),
        }
    }
    let (Some(input), Some(output)) = (input, output) else { bail!("--input FILE and --output DIR are required") };
    Ok(Args { input, output, workers: workers.max(1) })
}

/// Splits `path` into about `n` byte ranges, each starting at a line start.
fn split_file(path: &Path, n: usize) -> anyhow::Result<Vec<(u64, u64)>> {
    let file = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let size = file.metadata()?.len();
    let nominal = size.div_ceil(n.max(1) as u64).max(1);
    let mut bounds = vec![0u64];
    let mut buf = vec![0u8; 64 * 1024];
    for i in 1..n as u64 {
        let mut pos = (i * nominal).max(*bounds.last().unwrap_or(&0));
        if pos >= size {
            break;
        }
        // The range starts right after the first '\n' at or after pos - 1.
        pos -= 1;
        let start = loop {
            let got = file.read_at(&mut buf, pos)?;
            if got == 0 {
                break size;
            }
            if let Some(j) = buf[..got].iter().position(|&b| b == b'\n') {
                break pos + j as u64 + 1;
            }
            pos += got as u64;
        };
        bounds.push(start);
    }
    bounds.push(size);
    bounds.dedup();
    Ok(bounds.windows(2).map(|w| (w[0], w[1])).filter(|(a, b)| a < b).collect())
}

fn device_hash(device: &str) -> u64 {
    let mut h = FxHasher::default();
    device.hash(&mut h);
    h.finish()
}

/// Per-worker counters, returned from the worker closure.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    lines: u64,
    malformed: u64,
    filtered: u64,
    rows: u64,
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let started = Instant::now();
    std::fs::create_dir_all(&args.output).with_context(|| format!("create {}", args.output.display()))?;
    let splits = Arc::new(split_file(&args.input, args.workers * 4)?);
    let input = Arc::new(args.input.clone());
    let output = Arc::new(args.output.clone());

    let guards = timely::execute(timely::Config::process(args.workers), move |worker| {
        let index = worker.index();
        let peers = worker.peers();
        let mine: VecDeque<(u64, u64)> =
            splits.iter().enumerate().filter(|(i, _)| i % peers == index).map(|(_, s)| *s).collect();
        let file = File::open(input.as_path()).expect("open input");
        let out_path = output.join(format!("part-{index}.parquet"));

        let lines = Rc::new(Cell::new(0u64));
        let malformed = Rc::new(Cell::new(0u64));
        let filtered = Rc::new(Cell::new(0u64));
        let rows = Rc::new(Cell::new(0u64));
        let (l, m, f, r) = (lines.clone(), malformed.clone(), filtered.clone(), rows.clone());

        worker.dataflow::<u64, _, _>(move |scope| {
            let readings = source::<_, CapacityContainerBuilder<Vec<Reading>>, _, _>(
                scope,
                "ReadParseFilter",
                move |cap, info| {
                    let activator = scope.activator_for(info.address);
                    let mut cap = Some(cap);
                    let mut splits = mine;
                    let mut pos = splits.front().map_or(0, |s| s.0);
                    // Bytes read but not yet parsed (a partial last line).
                    let mut buf: Vec<u8> = Vec::with_capacity(CHUNK_BYTES + 4096);
                    move |output| {
                        let Some(c) = cap.as_ref() else { return };
                        let Some(&(_, end)) = splits.front() else {
                            cap = None; // input exhausted: close the stream
                            return;
                        };
                        let want = CHUNK_BYTES.min((end - pos) as usize);
                        let old = buf.len();
                        buf.resize(old + want, 0);
                        let mut got = 0;
                        while got < want {
                            let n = file.read_at(&mut buf[old + got..], pos + got as u64).expect("read input");
                            if n == 0 {
                                break;
                            }
                            got += n;
                        }
                        buf.truncate(old + got);
                        pos += got as u64;
                        let split_done = pos >= end || got == 0;
                        // Parse every complete line (and, at the end of a split, the rest).
                        let complete = if split_done {
                            buf.len()
                        } else {
                            buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)
                        };
                        let (mut n_lines, mut n_bad, mut n_out) = (0u64, 0u64, 0u64);
                        {
                            let mut session = output.session(c);
                            for line in buf[..complete].split(|&b| b == b'\n') {
                                if line.is_empty() {
                                    continue;
                                }
                                n_lines += 1;
                                // The same parse call as Weir's `Json` format: validate the
                                // line's UTF-8 once, then parse it as text.
                                let parsed = match std::str::from_utf8(line) {
                                    Ok(text) => serde_json::from_str::<Reading>(text),
                                    Err(_) => serde_json::from_slice::<Reading>(line),
                                };
                                match parsed {
                                    Ok(r) if (-50.0..=150.0).contains(&r.temp) => session.give(r),
                                    Ok(_) => n_out += 1,
                                    Err(_) => n_bad += 1,
                                }
                            }
                        }
                        buf.drain(..complete);
                        l.set(l.get() + n_lines);
                        m.set(m.get() + n_bad);
                        f.set(f.get() + n_out);
                        if split_done {
                            buf.clear();
                            splits.pop_front();
                            if let Some(&(start, _)) = splits.front() {
                                pos = start;
                            }
                        }
                        activator.activate();
                    }
                },
            );

            let mut windows: FxHashMap<(String, i64), Acc> = FxHashMap::default();
            let mut written = false;
            readings.sink(Exchange::new(|r: &Reading| device_hash(&r.device)), "Window", move |(input, frontier)| {
                input.for_each(|_cap, data: &mut Vec<Reading>| {
                    for rd in data.drain(..) {
                        let start = rd.ts - rd.ts.rem_euclid(WINDOW_MS);
                        let acc =
                            windows.entry((rd.device, start)).or_insert((0, f64::INFINITY, f64::NEG_INFINITY, 0.0));
                        acc.0 += 1;
                        if rd.temp < acc.1 {
                            acc.1 = rd.temp;
                        }
                        if rd.temp > acc.2 {
                            acc.2 = rd.temp;
                        }
                        acc.3 += rd.temp;
                    }
                });
                if !written && frontier.frontier().is_empty() {
                    written = true;
                    let n = write_parquet(&out_path, std::mem::take(&mut windows)).expect("write parquet");
                    r.set(n);
                }
            });
        });

        while worker.step_or_park(None) {}
        Counts { lines: lines.get(), malformed: malformed.get(), filtered: filtered.get(), rows: rows.get() }
    })
    .map_err(|e| anyhow::anyhow!("timely: {e}"))?;

    let mut total = Counts::default();
    for result in guards.join() {
        let c = result.map_err(|e| anyhow::anyhow!("worker failed: {e}"))?;
        total.lines += c.lines;
        total.malformed += c.malformed;
        total.filtered += c.filtered;
        total.rows += c.rows;
    }
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    println!("malformed:     {}", total.malformed);
    println!("filtered:      {}", total.filtered);
    println!("windows out:   {}", total.rows);
    println!("raw-timely: {} events in {:.3} s ({:.0} events/s)", total.lines, secs, total.lines as f64 / secs);
    Ok(())
}

/// Writes one worker's windows to `path`; returns the number of rows.
fn write_parquet(path: &Path, windows: FxHashMap<(String, i64), Acc>) -> anyhow::Result<u64> {
    if windows.is_empty() {
        return Ok(0);
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("device", DataType::Utf8, false),
        Field::new("window_start", DataType::Int64, false),
        Field::new("count", DataType::Int64, false),
        Field::new("min", DataType::Float64, false),
        Field::new("max", DataType::Float64, false),
        Field::new("mean", DataType::Float64, false),
    ]));
    let file = File::create(path).with_context(|| format!("create {}", path.display()))?;
    let props = WriterProperties::builder().set_compression(Compression::SNAPPY).build();
    let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(props))?;
    let total = windows.len() as u64;
    let mut rows = windows.into_iter().peekable();
    while rows.peek().is_some() {
        let mut device = StringBuilder::new();
        let mut start = Int64Builder::new();
        let mut count = Int64Builder::new();
        let mut min = Float64Builder::new();
        let mut max = Float64Builder::new();
        let mut mean = Float64Builder::new();
        for ((d, ws), (c, mn, mx, sum)) in rows.by_ref().take(ROWS_PER_BATCH) {
            device.append_value(&d);
            start.append_value(ws);
            count.append_value(c);
            min.append_value(mn);
            max.append_value(mx);
            mean.append_value(sum / c as f64);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(device.finish()),
            Arc::new(start.finish()),
            Arc::new(count.finish()),
            Arc::new(min.finish()),
            Arc::new(max.finish()),
            Arc::new(mean.finish()),
        ];
        writer.write(&RecordBatch::try_new(schema.clone(), columns)?)?;
    }
    writer.close()?;
    Ok(total)
}
