//! Window throughput from generated input: no file, no parsing, so what is
//! measured is the window operator (and the runtime around it).
//!
//! ```text
//! cargo run --release --example generator_windows -- --window tumbling --workers 2
//! cargo run --release --example generator_windows -- --window sliding --workers 2
//! ```
//!
//! Each worker's source partition makes `--events` readings of `--keys`
//! devices (keys spread by a hash of the record's index), `--per-ms`
//! readings per millisecond of event time, in event-time order.
//! - `--window tumbling`: 1 s tumbling windows with count, sum, min, max
//!   and mean.
//! - `--window sliding`: 60 s windows every 1 s with mean and p99 (DDSketch).
//! - `--window zscore`: no window, the z-score anomaly detector per key
//!   (rolling window of 100 readings, each reading scored).
//!
//! Prints the events, the rows (window results or scores), the elapsed time and events/s (total
//! and per worker).

use std::time::{Duration, Instant};

use anyhow::bail;
use clap::{Parser, ValueEnum};
use serde::{Deserialize, Serialize};
use weir::connectors::generate::Generator;
use weir::operators::decode::Generated;
use weir::prelude::*;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Kind {
    /// 1 s tumbling windows: count, sum, min, max, mean.
    Tumbling,
    /// 60 s windows every 1 s: mean and p99.
    Sliding,
    /// No window: a z-score detector per key (rolling window of 100 readings).
    Zscore,
}

#[derive(Parser, Debug)]
#[command(about = "Window throughput from generated input")]
struct Args {
    /// Which window and aggregates.
    #[arg(long, value_enum, default_value = "tumbling")]
    window: Kind,
    /// Worker threads (one source partition each).
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Readings per worker.
    #[arg(long, default_value_t = 20_000_000)]
    events: u64,
    /// Distinct devices.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// Readings per millisecond of event time, per worker.
    #[arg(long, default_value_t = 1_000)]
    per_ms: u64,
}

/// One generated reading.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Reading {
    device: u64,
    temp: f64,
}

/// splitmix64's output function: spreads consecutive indexes over the keys.
fn mix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.workers == 0 || args.keys == 0 || args.per_ms == 0 {
        bail!("--workers, --keys and --per-ms must be at least 1");
    }
    let (keys, kind) = (args.keys, args.window);
    let source = Generator::new(args.workers as u32, args.events).times(1_700_000_000_000, 1, args.per_ms);
    // Generated readings never fail to decode; dead letters need a sink all the same.
    let scratch = tempfile::tempdir()?;
    let dead = DeadLetters::dir(scratch.path().join("dead-letters"));
    let started = Instant::now();
    let summary = Pipeline::new("generator-windows").workers(args.workers).run(move |p| {
        let readings = p.source(source.clone())?.decode(Generated(move |i: u64| {
            let h = mix(i);
            Reading { device: h % keys, temp: 20.0 + ((h >> 40) % 1000) as f64 / 100.0 }
        }));
        let keyed = readings.source_time(Duration::ZERO)?.key_by(|r| r.device);
        match kind {
            Kind::Tumbling => {
                keyed.window(Tumbling::seconds(1)).aggregate((
                    Count,
                    Sum(|r: &Reading| r.temp),
                    Min(|r: &Reading| r.temp),
                    Max(|r: &Reading| r.temp),
                    Mean(|r: &Reading| r.temp),
                ))?;
            }
            Kind::Sliding => {
                let sliding = Sliding::new(Duration::from_secs(60), Duration::from_secs(1));
                keyed
                    .window(sliding)
                    .aggregate((Mean(|r: &Reading| r.temp), Percentiles::new(|r: &Reading| r.temp, &[0.99])))?;
            }
            Kind::Zscore => {
                keyed.detect(ZScore::new(|r: &Reading| r.temp))?;
            }
        }
        p.dead_letters().sink(dead.clone())
    })?;
    let elapsed = started.elapsed().as_secs_f64();
    let events = args.events * args.workers as u64;
    let rows: u64 = summary.counters.iter().filter(|(k, _)| k.ends_with(".emitted")).map(|(_, v)| v).sum();
    println!("window:        {:?}", args.window);
    println!("events:        {events}");
    println!("rows:          {rows}");
    println!("elapsed:       {elapsed:.3} s");
    println!("events/s:      {:.0}", events as f64 / elapsed);
    println!("events/s/wkr:  {:.0}", events as f64 / elapsed / args.workers as f64);
    Ok(())
}
