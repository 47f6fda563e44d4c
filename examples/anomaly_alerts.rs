//! The anomaly-alerts example: sensor-window readings joined with a device
//! registry (site, normal temperature range), three detectors per device
//! (the registry's bounds, a rolling z-score, silence), alerts and per-site
//! one-minute alert counts as Parquet, exactly once under kills and restarts.
//!
//! ```text
//! cargo run --release --example anomaly_alerts            # demo on a generated feed and registry
//! anomaly_alerts --input FILE.jsonl --registry devices.csv [--registry-updates UPDATES.csv]
//!     --output OUT --dead-letter DLQ --workers 2 [--state DIR] [--silence-after 5m]
//! anomaly_alerts --log-dir DIR --topic sensors --group G --bounded --registry devices.csv --output OUT --dead-letter DLQ
//! ```
//!
//! The registry is a CSV file `device,site,min_temp,max_temp`, a
//! differential table that an updates file (`op,device,site,min_temp,
//! max_temp,valid_from`) changes; a reading is joined with it as of its
//! event time (`join_table`). Output:
//! `OUT/alerts/*.parquet` (`device`, `site`, `event_time`, `value`, `score`,
//! `detector`, `reason`) and `OUT/site_counts/*.parquet` (`site`,
//! `window_start`, `window_end`, `count`). Dead letters (malformed lines,
//! devices the registry lacks: `unknown key`) go to DLQ. The pipeline is
//! `weir_testkit::alerts::build`; the options it shares with
//! `sensor_aggregation` are `weir_testkit::cli::RunArgs`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use weir::core::time::parse_duration;
use weir_testkit::alerts::{self, AlertsConfig, Registry};
use weir_testkit::cli::{self, Demo, RunArgs};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The default consumer group (`--group`).
const GROUP: &str = "anomaly-alerts";

/// Devices of the demo's generated feed and registry.
const DEMO_DEVICES: u64 = 10_000;

/// Alerts on sensor readings: registry bounds, z-score and silence per
/// device; alerts and per-site one-minute counts as Parquet. With no input
/// options, generates a feed into an embedded log and a registry under
/// ./weir-data/ and runs on them.
#[derive(Parser, Debug)]
#[command(name = "anomaly_alerts", version)]
struct Args {
    #[command(flatten)]
    run: RunArgs,
    /// The device registry, a CSV file `device,site,min_temp,max_temp`
    /// (required with an input; the demo writes its own).
    #[arg(long)]
    registry: Option<PathBuf>,
    /// Changes to the registry while running: a CSV file
    /// `op,device,site,min_temp,max_temp,valid_from` (op insert, update or
    /// delete; valid_from in ms of event time, in order); each reading is
    /// joined with the registry as of its own event time.
    #[arg(long, value_name = "FILE")]
    registry_updates: Option<PathBuf>,
    /// A device that sends nothing for this long (event time) alerts (`silence`).
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    silence_after: Duration,
    /// Readings the z-score's mean and standard deviation are taken over.
    #[arg(long, default_value_t = 100)]
    zscore_window: usize,
    /// The score at which the z-score alerts, in (0, 1] (0.99999: about 4.4 standard deviations).
    #[arg(long, default_value_t = 0.99999)]
    zscore_threshold: f64,
    /// How far a reading's event time may be behind the largest its partition has shown.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    max_out_of_orderness: Duration,
}

fn main() -> anyhow::Result<()> {
    weir::init_logging();
    run(Args::parse())
}

fn run(args: Args) -> anyhow::Result<()> {
    let (plan, registry) = if args.run.is_demo() {
        let mut lines = Vec::with_capacity(64 << 20);
        alerts::generate(args.run.events, 42, DEMO_DEVICES, &mut lines)?;
        let demo = Demo::create(&lines)?;
        let registry = alerts::registry_for(DEMO_DEVICES);
        let path = demo.dir.join("devices.csv");
        std::fs::write(&path, registry.to_csv()).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("  registry of {DEMO_DEVICES} devices in {}", path.display());
        (demo.plan(), registry)
    } else {
        let input = args.run.file_or_log().context("an input is needed: --input or --log-dir")?;
        let Some(path) = &args.registry else { anyhow::bail!("--registry devices.csv is required") };
        (args.run.plan(input)?, Registry::load(path)?)
    };
    let mut config = AlertsConfig::new(registry);
    config.updates = args.registry_updates.clone();
    config.silence = args.silence_after;
    config.zscore_window = args.zscore_window;
    config.zscore_threshold = args.zscore_threshold;
    config.max_out_of_orderness = args.max_out_of_orderness;
    let pipeline = args.run.pipeline(args.run.group(GROUP), &plan)?;
    let (input, output, dead) = (plan.input.clone(), plan.output.clone(), plan.dead_letters.clone());
    let summary = pipeline
        .run(move |p| alerts::build(p, &input, &output, &dead, &config))
        .context("the anomaly-alerts pipeline failed")?;
    let outputs = [alerts::ALERTS_DIR, alerts::SITE_COUNTS_DIR]
        .map(|d| format!("{}/{d}/*.parquet", plan.output.display()))
        .to_vec();
    cli::print_summary(&summary, &plan, &[("alerts", "alerts"), ("site counts", "site_counts")], &outputs);
    Ok(())
}
