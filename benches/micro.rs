//! Micro-benchmarks of the sensor-window pipeline's hot paths, each on
//! synthetic input from `weir_testkit::sensor::generate`:
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
//!
//! `cargo bench --bench micro` (about 30 s).

use std::hash::Hash;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::{FieldRef, Schema};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use rustc_hash::FxHashMap;
use serde_arrow::schema::{SchemaLike, TracingOptions};
use weir::operators::aggregate::{Aggregator, Count, Max, Mean, Min};
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

fn config() -> Criterion {
    Criterion::default().sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = decode, window, parquet
}
criterion_main!(benches);
