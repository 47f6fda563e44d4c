//! JSON decode of sensor readings over chunk record iteration.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| weir_operators::fuzzing::decode_json(data));
