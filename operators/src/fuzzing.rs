//! Entry point of the `decode_json` fuzz target (and of the test that replays
//! its corpus): split untrusted bytes into lines as the file source does,
//! decode them as a sensor reading, and check every record comes out exactly
//! once, as a value or a dead letter. Not part of the API.

use serde::Deserialize;
use weir_core::record::{Chunk, OffsetKind, TRUNCATED_PREFIX_BYTES};

use crate::decode::{Json, decode_chunk};

/// The sensor reading's shape.
#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct Reading {
    device: String,
    ts: i64,
    temp: f64,
}

/// Lines longer than this become truncated records, as a source would hand them over.
const MAX_RECORD: usize = 4096;

/// Builds a chunk of the lines of `data` and decodes it.
pub fn decode_json(data: &[u8]) {
    let mut chunk = Chunk { partition: 1, first: 100, kind: OffsetKind::Bytes, sep: 1, ..Chunk::default() };
    let mut offsets = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let len = memchr_newline(&data[at..]).unwrap_or(data.len() - at);
        offsets.push(100 + at as u64);
        if len > MAX_RECORD {
            // A truncated line ends its chunk (see `Chunk`).
            chunk.truncated.push((chunk.ends.len() as u32, len as u64));
            chunk.max_record_bytes = MAX_RECORD as u64;
            chunk.data.extend_from_slice(&data[at..at + TRUNCATED_PREFIX_BYTES]);
            chunk.ends.push(chunk.data.len() as u32);
            break;
        }
        chunk.data.extend_from_slice(&data[at..at + len]);
        chunk.ends.push(chunk.data.len() as u32);
        chunk.data.push(b'\n');
        at += len + 1;
    }
    let seen = std::cell::RefCell::new(Vec::new());
    decode_chunk(
        &Json,
        &chunk,
        "fuzz",
        |r: weir_core::record::Rec<Reading>| {
            assert!(r.value.temp.is_finite(), "{r:?}");
            seen.borrow_mut().push(r.meta.offset);
        },
        |d| {
            assert!(!d.error.is_empty() && d.stage == "decode");
            assert_eq!(d.payload_truncated, (d.payload.len() as u64) < d.payload_length);
            seen.borrow_mut().push(d.offset);
        },
    );
    assert_eq!(seen.into_inner(), offsets, "every record exactly once, in order");
}

fn memchr_newline(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'\n')
}
