//! The `weir` command line: embedded-log topics, producing, consumer-group
//! lag, and the sensor-aggregation example pipeline.

mod cli_log;
mod cli_sensor;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "weir", version, about = "Weir: stream analytics over partitioned feeds")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the sensor-aggregation example pipeline (same options as the example).
    #[command(disable_help_flag = true)]
    Sensor {
        /// Options of the example (see `weir sensor --help`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

fn main() -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    match Cli::parse().command {
        Command::Sensor { args } => {
            cli_sensor::main_from_args(std::iter::once("weir sensor".into()).chain(args))
        }
    }
}
