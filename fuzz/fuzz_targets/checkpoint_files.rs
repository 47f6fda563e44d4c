//! Checkpoint manifest and keyed-state part parsing.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| weir_core::fuzzing::checkpoint_files(data));
