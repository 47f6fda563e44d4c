//! The embedded log's segment reader, end offset and writer repair on fuzzed partition files.
#![no_main]

use std::sync::OnceLock;

static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let dir = DIR.get_or_init(|| tempfile::tempdir().expect("a temporary directory"));
    weir_connectors::fuzzing::log_segment(&dir.path().join("p"), data);
});
