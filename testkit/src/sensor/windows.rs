//! Which windows the sensor pipeline aggregates over ([`WindowConfig`]: a
//! [`WindowSpec`] and optional [`Quantiles`]), the command-line forms of both
//! ([`parse_window`], [`parse_percentiles`]) and the Parquet columns of a
//! [`WindowRow`](super::WindowRow) ([`WindowConfig::parquet_fields`]), with a
//! column per quantile named `p` + the quantile in percent (`p50`, `p99.9`)
//! and, with allowed lateness, the change log's `diff`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::datatypes::{DataType, Field, FieldRef};
use weir_core::time::parse_duration;
use weir_operators::prelude::{Session, Sliding, Tumbling, WindowSpec};

/// The accepted forms of `--window`, for error messages.
pub const WINDOW_FORMS: &str = "tumbling:SIZE, sliding:SIZE/SLIDE or session:GAP (e.g. tumbling:1m, sliding:1m/10s, \
                                session:30s; durations in ms, s, m or h)";

/// The accepted form of `--percentiles`, for error messages.
pub const PERCENTILES_FORM: &str = "a comma-separated list of distinct quantiles in [0, 1] (e.g. 0.5,0.99)";

/// The windows and the statistics of a run.
#[derive(Clone, Debug, PartialEq)]
pub struct WindowConfig {
    /// Tumbling, sliding or session windows.
    pub spec: WindowSpec,
    /// Quantiles of the temperature to add to each row (none by default).
    pub percentiles: Quantiles,
    /// Allowed lateness (zero by default: off). With it a late reading
    /// within it corrects its window, and the rows are a change log with a
    /// `diff` column (see [`WindowRow::diff`](super::WindowRow::diff)).
    pub allowed_lateness: Duration,
}

impl Default for WindowConfig {
    /// The workload's windows: tumbling, one minute, no percentiles.
    fn default() -> Self {
        WindowConfig::new(Tumbling::minutes(1))
    }
}

impl WindowConfig {
    /// `spec` windows, no percentiles.
    pub fn new(spec: impl Into<WindowSpec>) -> Self {
        WindowConfig { spec: spec.into(), percentiles: Quantiles::default(), allowed_lateness: Duration::ZERO }
    }

    /// With this allowed lateness (zero: off).
    pub fn allowed_lateness(mut self, lateness: Duration) -> Self {
        self.allowed_lateness = lateness;
        self
    }

    /// Whether the rows are a change log (allowed lateness of at least 1 ms,
    /// as the window operator counts it).
    pub fn has_diff(&self) -> bool {
        self.allowed_lateness.as_millis() > 0
    }

    /// With these quantiles.
    pub fn percentiles(mut self, percentiles: Quantiles) -> Self {
        self.percentiles = percentiles;
        self
    }

    /// The name of the window step: `None` (the kind's default, `window`)
    /// for the default windows, so checkpoints of earlier versions still
    /// resume; else the windows' kind and lengths, and `-p` with percentiles
    /// (`sliding-60000ms-10000ms-p`). A checkpoint taken with other windows
    /// (their state means something else) is then refused at start, naming
    /// its step, instead of being misread. The allowed lateness does not
    /// change the name: the state means the same with or without it.
    pub fn step_name(&self) -> Option<String> {
        let default = WindowConfig::default();
        if self.spec == default.spec && self.percentiles == default.percentiles {
            return None;
        }
        let mut name = match self.spec {
            WindowSpec::Tumbling(t) => format!("tumbling-{}ms", t.size),
            WindowSpec::Sliding(s) => format!("sliding-{}ms-{}ms", s.size, s.slide),
            WindowSpec::Session(s) => format!("session-{}ms", s.gap),
            WindowSpec::Count(c) => format!("count-{}", c.size),
        };
        if !self.percentiles.is_empty() {
            name.push_str("-p");
        }
        Some(name)
    }

    /// The Parquet columns of the rows: `device` (Utf8), `window_start`,
    /// `window_end`, `count` (Int64), `min`, `max`, `mean` and one column
    /// per quantile (Float64), and last, with allowed lateness, `diff`
    /// (Int64: +1 or -1); none nullable.
    pub fn parquet_fields(&self) -> Vec<FieldRef> {
        let mut fields = vec![Field::new("device", DataType::Utf8, false)];
        for name in ["window_start", "window_end", "count"] {
            fields.push(Field::new(name, DataType::Int64, false));
        }
        for name in ["min", "max", "mean"].iter().chain(self.percentiles.columns().iter()) {
            fields.push(Field::new(*name, DataType::Float64, false));
        }
        if self.has_diff() {
            fields.push(Field::new("diff", DataType::Int64, false));
        }
        fields.into_iter().map(Arc::new).collect()
    }
}

/// Distinct quantiles in `[0, 1]`, each with its column name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Quantiles {
    values: Vec<f64>,
    columns: &'static [&'static str],
}

impl Quantiles {
    /// The quantiles `qs`, in this order: an error for an empty list, a
    /// quantile outside `[0, 1]` (or NaN) and a duplicate.
    pub fn new(qs: &[f64]) -> Result<Self, String> {
        if qs.is_empty() {
            return Err("no quantile given".into());
        }
        let mut names = Vec::with_capacity(qs.len());
        for &q in qs {
            if !(0.0..=1.0).contains(&q) {
                return Err(format!("quantile {q} is not in [0, 1]"));
            }
            let name = column_name(q);
            if names.contains(&name) {
                return Err(format!("quantile {q} is given twice"));
            }
            names.push(name);
        }
        Ok(Quantiles { values: qs.to_vec(), columns: interned(names) })
    }

    /// The quantiles, in the order given.
    pub fn values(&self) -> &[f64] {
        &self.values
    }

    /// Their column names (`p50`, `p99`, `p99.9`), in the same order.
    pub fn columns(&self) -> &'static [&'static str] {
        self.columns
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// The column of quantile `q`: `p` and `q` in percent, written shortest
/// (0.5 → `p50`, 0.99 → `p99`, 0.999 → `p99.9`, 1 → `p100`). The percent is
/// made by moving the decimal point of `q`'s shortest decimal form, so no
/// rounding of `q · 100` shows (0.07 → `p7`, not `p7.000000000000001`).
pub fn column_name(q: f64) -> &'static str {
    // Rust's `Display` for f64 is the shortest round-trip form, never with an exponent.
    let text = format!("{q}");
    let (int, frac) = text.split_once('.').unwrap_or((&text, ""));
    let mut digits: String = int.to_string();
    let mut rest = frac.to_string();
    for _ in 0..2 {
        digits.push(if rest.is_empty() { '0' } else { rest.remove(0) });
    }
    let int = digits.trim_start_matches('0');
    let int = if int.is_empty() { "0" } else { int };
    let rest = rest.trim_end_matches('0');
    let name = if rest.is_empty() { format!("p{int}") } else { format!("p{int}.{rest}") };
    intern(name)
}

/// Column names live as long as the process (serde names a struct's fields
/// with `&'static str`); each distinct name and list is stored once.
fn intern(name: String) -> &'static str {
    static NAMES: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    let mut names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(n) = names.iter().find(|n| **n == name) {
        return n;
    }
    let n: &'static str = Box::leak(name.into_boxed_str());
    names.push(n);
    n
}

fn interned(list: Vec<&'static str>) -> &'static [&'static str] {
    static LISTS: Mutex<Vec<&'static [&'static str]>> = Mutex::new(Vec::new());
    let mut lists = LISTS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(l) = lists.iter().find(|l| **l == list.as_slice()) {
        return l;
    }
    let l: &'static [&'static str] = Box::leak(list.into_boxed_slice());
    lists.push(l);
    l
}

/// Parses `--window`: `tumbling:SIZE`, `sliding:SIZE/SLIDE` or
/// `session:GAP`, durations as `--max-out-of-orderness` takes them
/// ([`parse_duration`]), each at least 1 ms, and a sliding window that
/// [`WindowSpec::validate`] accepts.
pub fn parse_window(text: &str) -> Result<WindowSpec, String> {
    let bad = |why: String| format!("{why}; expected {WINDOW_FORMS}");
    let (kind, args) = text.split_once(':').ok_or_else(|| bad("no `:` between the kind and its duration".into()))?;
    let duration = |what: &str, d: &str| -> Result<Duration, String> {
        if d.trim().is_empty() {
            return Err(bad(format!("missing {what}")));
        }
        let d = parse_duration(d).map_err(|e| bad(format!("{what}: {e}")))?;
        if d.as_millis() == 0 {
            return Err(bad(format!("the {what} must be at least 1ms")));
        }
        Ok(d)
    };
    match kind.trim() {
        "tumbling" => Ok(Tumbling::new(duration("size", args)?).into()),
        "sliding" => {
            let (size, slide) = args.split_once('/').ok_or_else(|| bad("missing /SLIDE".into()))?;
            let spec: WindowSpec = Sliding::new(duration("size", size)?, duration("slide", slide)?).into();
            // The window operator's own rules (slide at most the size, a bounded number of panes).
            spec.validate().map_err(|e| bad(e.to_string()))?;
            Ok(spec)
        }
        "session" => Ok(Session::new(duration("gap", args)?).into()),
        other => Err(bad(format!("unknown window kind `{other}`"))),
    }
}

/// Parses `--percentiles`: quantiles separated by commas (`0.5,0.99`), see [`Quantiles::new`].
pub fn parse_percentiles(text: &str) -> Result<Quantiles, String> {
    let bad = |why: String| format!("{why}; expected {PERCENTILES_FORM}");
    let mut qs = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        if part.is_empty() {
            return Err(bad(if text.trim().is_empty() { "no quantile given".into() } else { "an empty entry".into() }));
        }
        qs.push(part.parse::<f64>().map_err(|_| bad(format!("`{part}` is not a number")))?);
    }
    Quantiles::new(&qs).map_err(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_names_are_percent_written_shortest() {
        for (q, name) in [
            (0.5, "p50"),
            (0.99, "p99"),
            (0.999, "p99.9"),
            (0.07, "p7"),
            (0.0, "p0"),
            (1.0, "p100"),
            (0.001, "p0.1"),
            (0.125, "p12.5"),
        ] {
            assert_eq!(column_name(q), name, "{q}");
        }
    }

    #[test]
    fn step_names_tell_windows_apart() {
        let p = parse_percentiles("0.5").expect("valid");
        let names: Vec<Option<String>> = [
            WindowConfig::default(),
            WindowConfig::new(Tumbling::minutes(2)),
            WindowConfig::default().percentiles(p.clone()),
            WindowConfig::new(Sliding::new(Duration::from_secs(60), Duration::from_secs(10))).percentiles(p),
            WindowConfig::new(Session::new(Duration::from_secs(30))),
        ]
        .iter()
        .map(WindowConfig::step_name)
        .collect();
        let want = [None, Some("tumbling-120000ms"), Some("tumbling-60000ms-p"), Some("sliding-60000ms-10000ms-p")];
        let want: Vec<Option<String>> =
            want.iter().map(|n| n.map(String::from)).chain([Some("session-30000ms".to_string())]).collect();
        assert_eq!(names, want);
    }

    #[test]
    fn lateness_adds_a_last_diff_column_and_keeps_the_step_name() {
        let plain = WindowConfig::new(Session::new(Duration::from_secs(30)));
        let late = plain.clone().allowed_lateness(Duration::from_secs(5));
        let names = |w: &WindowConfig| w.parquet_fields().iter().map(|f| f.name().clone()).collect::<Vec<_>>();
        assert!(!names(&plain).contains(&"diff".to_string()));
        assert_eq!(names(&late).last().map(String::as_str), Some("diff"));
        assert_eq!(names(&late).len(), names(&plain).len() + 1);
        assert_eq!(late.step_name(), plain.step_name());
        assert_eq!(WindowConfig::default().allowed_lateness(Duration::from_secs(1)).step_name(), None);
    }

    #[test]
    fn windows_and_their_errors() {
        assert_eq!(parse_window("tumbling:1m"), Ok(Tumbling::minutes(1).into()));
        assert_eq!(
            parse_window("sliding:1m/10s"),
            Ok(Sliding::new(Duration::from_secs(60), Duration::from_secs(10)).into())
        );
        assert_eq!(parse_window("session:30s"), Ok(Session::new(Duration::from_secs(30)).into()));
        for bad in
            ["hopping:1m", "tumbling", "tumbling:", "sliding:1m", "sliding:10s/1m", "session:0s", "sliding:1m/0ms", ""]
        {
            let err = parse_window(bad).expect_err(bad);
            assert!(err.contains("tumbling:SIZE"), "{bad}: {err}");
        }
    }

    #[test]
    fn percentiles_and_their_errors() {
        let q = parse_percentiles("0.5,0.99").expect("valid");
        assert_eq!((q.values(), q.columns()), (&[0.5, 0.99][..], &["p50", "p99"][..]));
        for bad in ["", "0.5,", "1.5", "-0.1", "0.5,0.5", "0.5,0.50", "NaN", "x"] {
            let err = parse_percentiles(bad).expect_err(bad);
            assert!(err.contains("quantiles in [0, 1]"), "{bad}: {err}");
        }
    }
}
