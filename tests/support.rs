//! Shared fixtures of the end-to-end tests: reading Parquet output (rows, or
//! a change log with allowed lateness) and dead letters back, and comparing
//! them with the reference exactly.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use anyhow::{Context, bail};
use arrow::array::{Array, Float64Array, Int64Array, StringArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use weir_testkit::sensor::{QuantileValues, WindowRow};

/// Watches `child` until it exits (its status), `done()` holds or
/// `deadline` passes (`None`), looking every 100 µs: how the kill tests wait
/// for the moment to kill.
pub fn watch(
    child: &mut std::process::Child,
    deadline: Option<std::time::Instant>,
    mut done: impl FnMut() -> bool,
) -> std::io::Result<Option<std::process::ExitStatus>> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if done() || deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            return Ok(None);
        }
        std::thread::sleep(std::time::Duration::from_micros(100));
    }
}

/// Visible files of a directory (names not starting with `.` or `_`), sorted.
pub fn visible_files(dir: &Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    if !dir.exists() {
        return Ok(out);
    }
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().to_string();
        if !(name.starts_with('.') || name.starts_with('_')) {
            out.push(e.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Window rows by (device, window start).
pub type Rows = BTreeMap<(String, i64), WindowRow>;

/// Reads every row of the Parquet files in `dir`; fails on a duplicate key
/// and on a `diff` column (a change log: see [`read_change_log`]).
pub fn read_rows(dir: &Path) -> anyhow::Result<Rows> {
    let mut rows = BTreeMap::new();
    for row in read_change_log(dir)? {
        if let Some(diff) = row.diff {
            bail!("a diff column (diff {diff} in {row:?}) without allowed lateness");
        }
        let key = (row.device.to_string(), row.window_start);
        if rows.insert(key.clone(), row).is_some() {
            bail!("duplicate row for {key:?} (in {})", dir.display());
        }
    }
    Ok(rows)
}

/// The epoch a sink file is named after (`...w000-EPOCH-SEQ-RUN.parquet`, 10 digits).
fn epoch_of(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    name.split('-').find(|part| part.len() == 10 && part.bytes().all(|b| b.is_ascii_digit()))?.parse().ok()
}

/// Every row of the Parquet files in `dir`, in the order they were written
/// for each key: files by epoch (a key's rows of one epoch are in one
/// file), rows in file order. A `diff` column, if any, is each row's `diff`.
pub fn read_change_log(dir: &Path) -> anyhow::Result<Vec<WindowRow>> {
    let mut files = visible_files(dir)?;
    files.sort_by_key(|path| (epoch_of(path), path.clone()));
    let mut rows = Vec::new();
    for path in files {
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&path)?)?.build()?;
        for batch in reader {
            let batch = batch?;
            let col = |name: &str| {
                batch.column_by_name(name).with_context(|| format!("{}: no column {name}", path.display()))
            };
            let device = col("device")?.as_any().downcast_ref::<StringArray>().context("device is not Utf8")?;
            let ws = col("window_start")?.as_any().downcast_ref::<Int64Array>().context("window_start is not Int64")?;
            let count = col("count")?.as_any().downcast_ref::<Int64Array>().context("count is not Int64")?;
            let min = col("min")?.as_any().downcast_ref::<Float64Array>().context("min")?;
            let max = col("max")?.as_any().downcast_ref::<Float64Array>().context("max")?;
            let mean = col("mean")?.as_any().downcast_ref::<Float64Array>().context("mean")?;
            let end = col("window_end")?.as_any().downcast_ref::<Int64Array>().context("window_end is not Int64")?;
            let schema = batch.schema();
            // The change log's `diff`, if any: the last column.
            let diff = match schema.index_of("diff") {
                Ok(i) => {
                    anyhow::ensure!(i + 1 == batch.num_columns(), "{}: diff is not the last column", path.display());
                    Some(batch.column(i).as_any().downcast_ref::<Int64Array>().context("diff is not Int64")?)
                }
                Err(_) => None,
            };
            // The quantile columns: every column after `mean` (before `diff`), in schema order.
            let after = schema.index_of("mean")? + 1;
            let quantiles = (after..batch.num_columns() - usize::from(diff.is_some()))
                .map(|i| {
                    let name = schema.field(i).name();
                    anyhow::ensure!(name.starts_with('p'), "{}: unexpected column {name}", path.display());
                    batch
                        .column(i)
                        .as_any()
                        .downcast_ref::<Float64Array>()
                        .with_context(|| format!("{name} is not Float64"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            for i in 0..batch.num_rows() {
                rows.push(WindowRow {
                    device: device.value(i).into(),
                    window_start: ws.value(i),
                    window_end: end.value(i),
                    count: count.value(i),
                    min: min.value(i),
                    max: max.value(i),
                    mean: mean.value(i),
                    percentiles: QuantileValues {
                        columns: &[],
                        values: quantiles.iter().map(|q| q.value(i)).collect(),
                    },
                    diff: diff.map(|d| d.value(i)),
                });
            }
        }
    }
    Ok(rows)
}

/// Applies a change log strictly: a row with diff -1 must retract the live
/// row of its window (device, start, end) exactly, one with +1 must not
/// replace a live one. The net rows, keyed like [`read_rows`]'s; with the
/// number of retractions.
pub fn net_rows(log: &[WindowRow]) -> anyhow::Result<(Rows, usize)> {
    let mut live: BTreeMap<(String, i64, i64), WindowRow> = BTreeMap::new();
    let mut retractions = 0;
    for row in log {
        let w = (row.device.to_string(), row.window_start, row.window_end);
        let mut value = row.clone();
        value.diff = None;
        match row.diff {
            Some(1) => {
                if let Some(old) = live.insert(w.clone(), value) {
                    bail!("{w:?}: a second live row {row:?} over {old:?}");
                }
            }
            Some(-1) => {
                retractions += 1;
                let live_row = live.remove(&w);
                let same = live_row.as_ref().is_some_and(|l| {
                    (l.count, l.min.to_bits(), l.max.to_bits(), l.mean.to_bits())
                        == (value.count, value.min.to_bits(), value.max.to_bits(), value.mean.to_bits())
                });
                anyhow::ensure!(same, "{w:?}: {row:?} retracts a row that is not live (live: {live_row:?})");
            }
            other => bail!("{w:?}: diff {other:?} in a change log"),
        }
    }
    let mut rows = BTreeMap::new();
    for ((device, start, _), row) in live {
        if rows.insert((device.clone(), start), row).is_some() {
            bail!("two live rows of {device} starting at {start}");
        }
    }
    Ok((rows, retractions))
}

/// Compares output rows with the reference under the workload's rule, plus
/// each window's end, and each quantile within 1 % (relative) of the exact one.
pub fn compare(
    expected: &BTreeMap<(String, i64), WindowRow>,
    got: &BTreeMap<(String, i64), WindowRow>,
) -> anyhow::Result<()> {
    let missing: Vec<_> = expected.keys().filter(|k| !got.contains_key(*k)).take(5).collect();
    let extra: Vec<_> = got.keys().filter(|k| !expected.contains_key(*k)).take(5).collect();
    if !missing.is_empty() || !extra.is_empty() {
        bail!("expected {} rows, got {}; missing e.g. {missing:?}, extra e.g. {extra:?}", expected.len(), got.len());
    }
    for (k, e) in expected {
        let g = &got[k];
        let mean_ok =
            (g.mean - e.mean).abs() <= 1e-9 * e.mean.abs().max(g.mean.abs()) || (g.mean - e.mean).abs() <= 1e-12;
        let (gq, eq) = (&g.percentiles.values, &e.percentiles.values);
        let quantiles_ok = gq.len() == eq.len() && gq.iter().zip(eq).all(|(g, e)| (g - e).abs() <= 0.01 * e.abs());
        if g.count != e.count
            || g.window_end != e.window_end
            || g.min.to_bits() != e.min.to_bits()
            || g.max.to_bits() != e.max.to_bits()
            || !mean_ok
            || !quantiles_ok
        {
            bail!("row {k:?}: expected {e:?}, got {g:?}");
        }
    }
    Ok(())
}

/// Reads every dead letter (one JSON object per line) of the files in `dir`.
pub fn read_dead_letters(dir: &Path) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut out = Vec::new();
    for path in visible_files(dir)? {
        for line in std::fs::read_to_string(&path)?.lines() {
            out.push(serde_json::from_str(line).with_context(|| format!("{}: bad line {line}", path.display()))?);
        }
    }
    Ok(out)
}
