//! The sensor-window pipeline (workload: per device, one-minute event-time
//! windows of count/min/max/mean temperature).
//!
//! ```text
//! cargo run --release --example sensor_aggregation            # demo on a generated feed
//! sensor_aggregation --input FILE.jsonl --output OUT --dead-letter DLQ --workers 2 [--state DIR]
//! sensor_aggregation --log-dir DIR --topic sensors --group G --bounded --output OUT --dead-letter DLQ
//! ```
//!
//! The pipeline itself is `weir::sensor::build`; this file is its command line.

#[path = "../src/cli_sensor.rs"]
mod cli_sensor;

// Pipelines allocate on one worker thread and free on another; mimalloc
// handles that far better than the system allocator (about 1.5x end to end).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    init_tracing();
    cli_sensor::main_from_args(std::env::args_os())
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}
