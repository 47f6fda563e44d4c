//! Micro-benchmarks of the sensor-window pipeline's hot paths (the first four
//! on synthetic input from `weir_testkit::sensor::generate`, the sketches on seeded
//! values of their own):
//!
//! - `decode/json`: one JSON line to a `weir_testkit::sensor::Reading` with serde_json
//!   (all lines, malformed ones included; throughput in lines).
//! - `window/update`: adding valid readings to `(Count, Min, Max, Mean)`
//!   accumulators in an `FxHashMap<(device, window_start), Acc>`, keyed the
//!   way the window operator pre-aggregates (key cloned from the reading,
//!   map cleared but not shrunk between batches).
//! - `parquet/to_record_batch`: `WindowRow`s to an Arrow batch with
//!   serde_arrow (schema traced as in `connectors/src/parquet.rs`).
//! - `parquet/encode`: the same plus a Snappy `ArrowWriter` into a `Vec<u8>`.
//! - `sketch/ddsketch_add`: one value into a warmed-up `DDSketch` (lognormal
//!   values, so every add computes a bucket index; no allocation).
//! - `sketch/ddsketch_merge`: merging two sketches of 100,000 such values
//!   (a few hundred buckets each), the per-pane cost of a sliding window.
//! - `sketch/hll_add`: one `u64` key into a dense `DistinctCount` state (hash
//!   and register update), and `sketch/hll_add_str` a borrowed `&str` key.
//! - `sketch/hll_merge`: merging two dense states (16,384 registers).
//!
//! `cargo bench --bench micro` (about 30 s).

use std::hash::Hash;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::{FieldRef, Schema};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use rustc_hash::FxHashMap;
use serde_arrow::schema::{SchemaLike, TracingOptions};
use weir::operators::aggregate::{Aggregator, Count, DDSketch, DistinctCount, Max, Mean, Min};
use weir_testkit::sensor::{self, Reading, TEMP_RANGE, WINDOW_MS, WindowRow};

/// Lines per decode / window batch.
const LINES: u64 = 100_000;
/// Rows per Parquet batch (the sink's default batch size).
const ROWS: usize = 64 * 1024;

fn input(n: u64) -> Vec<u8> {
    let mut buf = Vec::with_capacity(n as usize * 70);
    sensor::generate(n, 42, 10_000, &mut buf).expect("generate");
    buf
}

fn lines(buf: &[u8]) -> Vec<&[u8]> {
    buf.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect()
}

fn decode(c: &mut Criterion) {
    let buf = input(LINES);
    let lines = lines(&buf);
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(lines.len() as u64));
    g.bench_function("json", |b| {
        b.iter(|| {
            let mut ok = 0u64;
            for line in &lines {
                if let Ok(r) = serde_json::from_slice::<Reading>(black_box(line)) {
                    ok += 1;
                    black_box(&r);
                }
            }
            ok
        })
    });
    g.finish();
}

/// One batch into the map, the way the window operator pre-aggregates a step:
/// `key` is the `key_by` function (`|r| r.device.clone()`).
fn update<K: Eq + Hash, A: Aggregator<Reading>>(
    agg: &A,
    key: impl Fn(&Reading) -> K,
    map: &mut FxHashMap<(K, i64), A::Acc>,
    readings: &[Reading],
) {
    for r in readings {
        let start = r.ts - r.ts.rem_euclid(WINDOW_MS);
        let acc = map.entry((key(r), start)).or_insert_with(|| agg.init());
        agg.add(acc, r);
    }
}

fn window(c: &mut Criterion) {
    let buf = input(LINES);
    let readings: Vec<Reading> = lines(&buf)
        .into_iter()
        .filter_map(|l| serde_json::from_slice::<Reading>(l).ok())
        .filter(|r| TEMP_RANGE.contains(&r.temp))
        .collect();
    let agg = (Count, Min(|r: &Reading| r.temp), Max(|r: &Reading| r.temp), Mean(|r: &Reading| r.temp));
    let mut g = c.benchmark_group("window");
    g.throughput(Throughput::Elements(readings.len() as u64));
    let mut map = FxHashMap::default();
    g.bench_function("update", |b| {
        b.iter(|| {
            map.clear();
            update(&agg, |r| r.device.clone(), &mut map, black_box(&readings));
            map.len()
        })
    });
    g.finish();
}

fn parquet(c: &mut Criterion) {
    let buf = input(200_000);
    let (expected, _) = sensor::reference(&buf);
    let rows: Vec<WindowRow> = expected.into_values().take(ROWS).collect();
    let fields = Vec::<FieldRef>::from_type::<WindowRow>(TracingOptions::default().strings_as_large_utf8(false))
        .expect("trace WindowRow");
    let schema = Arc::new(Schema::new(fields.clone()));
    let mut g = c.benchmark_group("parquet");
    g.throughput(Throughput::Elements(rows.len() as u64));
    g.bench_function("to_record_batch", |b| {
        b.iter(|| serde_arrow::to_record_batch(&fields, black_box(&rows)).expect("to_record_batch").num_rows())
    });
    g.bench_function("encode", |b| {
        b.iter(|| {
            let batch = serde_arrow::to_record_batch(&fields, black_box(&rows)).expect("to_record_batch");
            let props = WriterProperties::builder().set_compression(Compression::SNAPPY).build();
            let mut writer =
                ArrowWriter::try_new(Vec::with_capacity(4 << 20), schema.clone(), Some(props)).expect("ArrowWriter");
            writer.write(&batch).expect("write");
            writer.into_inner().expect("close").len()
        })
    });
    g.finish();
}

/// Values for the sketch benchmarks: lognormal-ish (exp of a sum of uniforms),
/// spread over a few hundred buckets, from a fixed seed.
fn sketch_values(n: usize, seed: u64) -> Vec<f64> {
    let mut x = seed;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n).map(|_| (2.0 * (next() + next() + next() - 1.5)).exp() * 20.0).collect()
}

fn sketch(c: &mut Criterion) {
    const N: usize = 100_000;
    let values = sketch_values(N, 0x9e37_79b9_7f4a_7c15);
    let mut g = c.benchmark_group("sketch");
    g.throughput(Throughput::Elements(N as u64));
    let mut warm = DDSketch::new();
    for &v in &values {
        warm.add(v);
    }
    g.bench_function("ddsketch_add", |b| {
        let mut s = warm.clone();
        b.iter(|| {
            for &v in black_box(&values) {
                s.add(v);
            }
        })
    });
    let other = {
        let mut s = DDSketch::new();
        for v in sketch_values(N, 7) {
            s.add(v);
        }
        s
    };
    g.throughput(Throughput::Elements(1));
    // The clone each merge starts from is set up outside the timing.
    g.bench_function("ddsketch_merge", |b| {
        b.iter_batched_ref(|| warm.clone(), |s| s.merge(black_box(&other)), BatchSize::SmallInput)
    });

    let keys: Vec<u64> = (0..N as u64).map(|i| i.wrapping_mul(0x2545_f491_4f6c_dd1d)).collect();
    let names: Vec<String> = (0..N).map(|i| format!("device-{i:05}")).collect();
    let ids = DistinctCount::new(|k: &u64| *k);
    let by_name = DistinctCount::by_ref(|s: &String| s.as_str());
    let mut dense = ids.init();
    for k in &keys {
        ids.add(&mut dense, k);
    }
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("hll_add", |b| {
        let mut acc = dense.clone();
        b.iter(|| {
            for k in black_box(&keys) {
                ids.add(&mut acc, k);
            }
        })
    });
    g.bench_function("hll_add_str", |b| {
        let mut acc = dense.clone();
        b.iter(|| {
            for name in black_box(&names) {
                by_name.add(&mut acc, name);
            }
        })
    });
    let other_dense = {
        let mut acc = ids.init();
        for k in 0..N as u64 {
            ids.add(&mut acc, &k);
        }
        acc
    };
    g.throughput(Throughput::Elements(1));
    g.bench_function("hll_merge", |b| {
        b.iter_batched_ref(|| dense.clone(), |acc| ids.merge(acc, black_box(&other_dense)), BatchSize::SmallInput)
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default().sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = decode, window, parquet, sketch
}
criterion_main!(benches);
