//! The one tokio runtime of a process, for the async work of connectors
//! (Kafka group commits, MQTT clients): two threads beside the timely
//! workers, started on first use and never per pipeline or per worker.

use std::sync::OnceLock;

use weir_core::error::{Error, Result};

static RUNTIME: OnceLock<std::result::Result<tokio::runtime::Runtime, String>> = OnceLock::new();

/// The shared runtime (created on first call).
pub fn io() -> Result<&'static tokio::runtime::Runtime> {
    let rt = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("weir-io")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    });
    rt.as_ref().map_err(|e| Error::Pipeline(format!("cannot start the I/O runtime: {e}")))
}
