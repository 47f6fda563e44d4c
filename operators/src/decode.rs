//! `raw.decode::<T>(Json)`: turns raw records into typed records. A record
//! that does not decode becomes a [`DeadLetter`] with stage `decode`, the
//! parser's message, and its source position; it never stops the pipeline.
//!
//! An oversize record (one a source cut to a prefix, see [`Chunk::truncated`])
//! is a dead letter without being parsed: `record of N bytes exceeds
//! max_record_bytes`, its payload the prefix the chunk kept. [`decode_chunk`]
//! is the whole per-chunk logic, shared by the operator, tests and fuzzing.
//!
//! A record's event time is the one its source gave ([`Chunk::times`], Kafka's
//! message timestamp), else [`Meta::NO_TIME`] until `event_time` assigns one;
//! a dead letter of decode carries the source's time too.

use std::sync::atomic::Ordering;

use serde::de::DeserializeOwned;
use weir_core::flow::with_dead_letters;
use weir_core::record::{Chunk, DeadLetter, Meta, Rec};
use weir_core::{Flow, Raw};

/// A record format: bytes to `T`, or a message saying why not.
pub trait Format<T>: Clone + 'static {
    /// Decodes one record.
    fn decode(&self, bytes: &[u8]) -> Result<T, String>;
}

/// JSON (one object per record) through serde_json.
///
/// A record is rejected, with a reason that says why, when it is not UTF-8 (JSON
/// text is, RFC 8259; even bad bytes in a field the type ignores mean the record is
/// damaged), empty, or not an object: serde's derived structs would otherwise also
/// accept an array of their fields in order, a format nobody writes on purpose.
/// Everything else is serde_json's own message (with line and column): wrong
/// types, missing and duplicate fields, numbers out of range, `NaN`, nesting
/// deeper than serde_json's recursion limit (128).
#[derive(Clone, Copy, Debug, Default)]
pub struct Json;

impl<T: DeserializeOwned> Format<T> for Json {
    fn decode(&self, bytes: &[u8]) -> Result<T, String> {
        // Validating once is also cheaper than serde_json checking every string.
        let text = std::str::from_utf8(bytes)
            .map_err(|e| format!("record is not valid UTF-8: invalid byte at offset {}", e.valid_up_to()))?;
        // Nearly always the first byte: one comparison on the hot path.
        match text.bytes().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') => {}
            None if text.is_empty() => return Err("empty record".to_owned()),
            None => return Err("empty record (only whitespace)".to_owned()),
            Some(first) => {
                serde_json::from_str::<serde::de::IgnoredAny>(text).map_err(|e| e.to_string())?;
                let found = match first {
                    b'[' => "an array",
                    b'"' => "a string",
                    b'n' => "null",
                    b't' | b'f' => "a boolean",
                    _ => "a number",
                };
                return Err(format!("expected a JSON object, found {found}"));
            }
        }
        serde_json::from_str(text).map_err(|e| e.to_string())
    }
}

/// Records the MQTT gateway stored (`weir ingest mqtt`: MQTT topic, NUL,
/// payload; see [`weir_core::record::split_topic`]): the payload decoded with
/// the inner format, e.g. `raw.decode::<Reading>(MqttPayload(Json))`. A record
/// without the NUL is a dead letter.
#[derive(Clone, Copy, Debug, Default)]
pub struct MqttPayload<F>(pub F);

impl<T, F: Format<T>> Format<T> for MqttPayload<F> {
    fn decode(&self, bytes: &[u8]) -> Result<T, String> {
        match weir_core::record::split_topic(bytes) {
            Some((_, payload)) => self.0.decode(payload),
            None => Err("record has no MQTT topic (records of `weir ingest mqtt` are topic, NUL, payload)".into()),
        }
    }
}

/// The records of a generator source (`weir_connectors::generate::Generator`:
/// record `i` is `i` as 8 little-endian bytes): `f(i)`.
#[derive(Clone, Copy, Debug)]
pub struct Generated<F>(pub F);

impl<T, F: Fn(u64) -> T + Clone + 'static> Format<T> for Generated<F> {
    fn decode(&self, bytes: &[u8]) -> Result<T, String> {
        let bytes: [u8; 8] =
            bytes.try_into().map_err(|_| format!("a generated record is 8 bytes, not {}", bytes.len()))?;
        Ok((self.0)(u64::from_le_bytes(bytes)))
    }
}

/// The error of a dead letter for an oversize record.
/// `max_record_bytes` 0 means unknown.
pub fn oversize_error(length: u64, max_record_bytes: u64) -> String {
    match max_record_bytes {
        0 => format!("record of {length} bytes exceeds max_record_bytes"),
        max => format!("record of {length} bytes exceeds max_record_bytes ({max})"),
    }
}

/// Decodes every record of `chunk` with `format`: values go to `ok` (with the
/// event time the source gave, [`Chunk::time`]), failures (and oversize records,
/// see [`Chunk::truncated`]) to `dead` as dead letters with stage `decode` and
/// source `source`.
pub fn decode_chunk<T>(
    format: &impl Format<T>,
    chunk: &Chunk,
    source: &str,
    mut ok: impl FnMut(Rec<T>),
    mut dead: impl FnMut(DeadLetter),
) {
    let dead_letter = |i: usize, offset, payload: &[u8], error, length| {
        let meta = Meta { partition: chunk.partition, offset, event_time: chunk.time(i) };
        DeadLetter::new("decode", source, &meta, error, payload.to_vec(), length)
    };
    let one = |i: usize, offset, payload: &[u8]| {
        let meta = Meta { partition: chunk.partition, offset, event_time: chunk.time(i) };
        format.decode(payload).map(|value| Rec { meta, value })
    };
    if chunk.truncated.is_empty() {
        for (i, (offset, payload)) in chunk.records().enumerate() {
            match one(i, offset, payload) {
                Ok(rec) => ok(rec),
                Err(error) => dead(dead_letter(i, offset, payload, error, payload.len() as u64)),
            }
        }
        return;
    }
    let mut truncated = chunk.truncated.iter().peekable();
    for (i, (offset, payload)) in chunk.records().enumerate() {
        if let Some(&(_, length)) = truncated.next_if(|t| t.0 as usize == i) {
            dead(dead_letter(i, offset, payload, oversize_error(length, chunk.max_record_bytes), length));
            continue;
        }
        match one(i, offset, payload) {
            Ok(rec) => ok(rec),
            Err(error) => dead(dead_letter(i, offset, payload, error, payload.len() as u64)),
        }
    }
}

/// Adds `decode` to raw source streams.
pub trait Decode<'s> {
    /// Decodes every record with `format`; failures go to the dead-letter stream.
    fn decode<T: 'static>(self, format: impl Format<T>) -> Flow<'s, T>;
}

impl<'s> Decode<'s> for Raw<'s> {
    fn decode<T: 'static>(self, format: impl Format<T>) -> Flow<'s, T> {
        let ctx = self.ctx.clone();
        let source = self.input.source.clone();
        let pool = self.pool.clone();
        let decoded = ctx.counter("decoded");
        let mut batch: Vec<Rec<T>> = Vec::new();
        let ok =
            with_dead_letters(&ctx, "Decode".to_owned(), "decode", self.stream, move |data: &mut Vec<Chunk>, emit| {
                let mut n_ok = 0u64;
                for chunk in data.drain(..) {
                    batch.reserve(chunk.len());
                    decode_chunk(
                        &format,
                        &chunk,
                        &source,
                        |rec| {
                            n_ok += 1;
                            batch.push(rec);
                        },
                        |dead| emit.dead_letter(dead),
                    );
                    pool.put(chunk);
                    // One message per chunk: batches stay small enough (about a thousand
                    // records) for the allocator to reuse hot memory, where one batch of a
                    // whole activation would be a fresh multi-megabyte allocation each time.
                    emit.give_batch(&mut batch);
                }
                decoded.fetch_add(n_ok, Ordering::Relaxed);
            });
        Flow { stream: ok, ctx, input: Some(self.input), watermarks: None, name: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(serde::Deserialize)]
    struct One {
        v: f64,
    }

    #[test]
    fn generated_records_decode_their_index_and_nothing_else() {
        let f = Generated(|i: u64| i + 1);
        assert_eq!(f.decode(&7u64.to_le_bytes()), Ok(8));
        assert!(f.decode(b"abc").is_err_and(|e| e.contains("8 bytes, not 3")));
    }

    #[test]
    fn mqtt_records_decode_their_payload() {
        let one: Result<One, String> = MqttPayload(Json).decode(b"sensors/d1\x00{\"v\":2.5}");
        assert_eq!(one.map(|o| o.v), Ok(2.5));
        let none: Result<One, String> = MqttPayload(Json).decode(b"{\"v\":2.5}");
        assert!(none.err().is_some_and(|e| e.contains("no MQTT topic")));
        let bad: Result<One, String> = MqttPayload(Json).decode(b"t\x00[1]");
        assert!(bad.err().is_some_and(|e| e.contains("expected a JSON object")));
    }

    fn decode_f64(literal: &str) -> Result<f64, String> {
        Format::<One>::decode(&Json, format!("{{\"v\":{literal}}}").as_bytes()).map(|o| o.v)
    }

    /// Numbers decode to the correctly rounded double, bit for bit (serde_json's
    /// default fast path is one step off on some of these; Weir enables `float_roundtrip`).
    #[test]
    fn hard_floats_are_correctly_rounded() {
        for literal in [
            "2.2250738585072011e-308",
            "7.038531e-26",
            "2.4703282292062328e-324",
            "1.00000000000000011102230246251565404236316680908203125",
            "1.00000000000000011102230246251565404236316680908203124",
            "1.7976931348623157e308",
            "-0.0",
            "21.50000000000000001",
            "0.1",
        ] {
            let expected: f64 = literal.parse().unwrap();
            let got = decode_f64(literal).unwrap();
            assert_eq!(got.to_bits(), expected.to_bits(), "{literal}: {got:e} vs {expected:e}");
        }
    }

    /// Invalid UTF-8 is a dead letter wherever it is, even inside a field the
    /// type ignores (serde_json's slice reader would accept that record).
    #[test]
    fn invalid_utf8_is_rejected_with_its_position() {
        let ignored = b"{\"v\":1.5,\"x\":\"\xff\"}";
        assert_eq!(
            Format::<One>::decode(&Json, ignored).map(|o| o.v),
            Err("record is not valid UTF-8: invalid byte at offset 14".to_owned())
        );
        let bad = b"{\"v\":\"\xff\"}";
        assert!(Format::<One>::decode(&Json, bad).is_err_and(|e| e.contains("offset 6")));
    }

    #[test]
    fn empty_records_say_so() {
        assert_eq!(Format::<One>::decode(&Json, b"").map(|o| o.v), Err("empty record".to_owned()));
        assert_eq!(
            Format::<One>::decode(&Json, b" \r\t").map(|o| o.v),
            Err("empty record (only whitespace)".to_owned())
        );
        // A cut record is not empty: the parser's message stays.
        assert!(Format::<One>::decode(&Json, b"{\"v\":").is_err_and(|e| e.contains("EOF")));
        for (record, found) in
            [(&b"[1.5]"[..], "an array"), (b" 2", "a number"), (b"\"x\"", "a string"), (b"null", "null")]
        {
            assert_eq!(
                Format::<One>::decode(&Json, record).map(|o| o.v),
                Err(format!("expected a JSON object, found {found}"))
            );
        }
        // Not JSON at all: serde_json's message.
        assert!(Format::<One>::decode(&Json, b"#x").is_err_and(|e| e.contains("expected value")));
    }

    #[test]
    fn truncated_records_become_dead_letters_without_parsing() {
        let mut chunk = Chunk { partition: 3, first: 10, sep: 0, ..Chunk::default() };
        for payload in [&b"{\"v\":1}"[..], b"{\"v\":", b"{\"v\":3}", b"xxxx"] {
            chunk.data.extend_from_slice(payload);
            chunk.ends.push(chunk.data.len() as u32);
        }
        // Record 2 is valid JSON but marked oversize: it must not be decoded.
        chunk.truncated = vec![(2, 5000), (3, 4)];
        chunk.max_record_bytes = 100;
        let (mut ok, mut dead) = (Vec::new(), Vec::new());
        decode_chunk(&Json, &chunk, "src", |r: Rec<One>| ok.push((r.meta.offset, r.value.v)), |d| dead.push(d));
        assert_eq!(ok, vec![(10, 1.0)]);
        let summary: Vec<_> = dead.iter().map(|d| (d.offset, d.payload_truncated, d.payload_length)).collect();
        assert_eq!(summary, vec![(11, false, 5), (12, true, 5000), (13, false, 4)]);
        assert_eq!(dead[1].error, "record of 5000 bytes exceeds max_record_bytes (100)");
        assert_eq!(dead[1].payload, b"{\"v\":3}");
        assert!(dead.iter().all(|d| d.stage == "decode" && d.source == "src" && d.partition == 3));
        chunk.clear();
        assert!(chunk.truncated.is_empty() && chunk.max_record_bytes == 0);
    }

    /// A chunk's per-record times become the records' (and dead letters') event
    /// times; a chunk without them leaves `NO_TIME`, and `clear` empties them.
    #[test]
    fn source_times_become_event_times() {
        let mut chunk = Chunk { partition: 1, first: 0, sep: 0, ..Chunk::default() };
        for payload in [&b"{\"v\":1}"[..], b"{\"v\":2}", b"bad"] {
            chunk.data.extend_from_slice(payload);
            chunk.ends.push(chunk.data.len() as u32);
        }
        let decode = |chunk: &Chunk| {
            let (mut ok, mut dead) = (Vec::new(), Vec::new());
            decode_chunk(&Json, chunk, "src", |r: Rec<One>| ok.push(r.meta.event_time), |d| dead.push(d.event_time));
            (ok, dead)
        };
        assert_eq!(decode(&chunk), (vec![Meta::NO_TIME, Meta::NO_TIME], vec![None]));
        chunk.times = vec![5_000, Meta::NO_TIME, 7_000];
        assert_eq!(decode(&chunk), (vec![5_000, Meta::NO_TIME], vec![Some(7_000)]));
        chunk.clear();
        assert!(chunk.times.is_empty());
    }

    proptest! {
        /// Any decimal literal decodes exactly as Rust's own (correctly rounded) parser.
        #[test]
        fn decimals_match_the_std_parser(mantissa in any::<u64>(), digits in 0u32..20, exp in -330i32..310, neg in any::<bool>()) {
            let m = mantissa.to_string();
            let point = (digits as usize).min(m.len());
            let (int, frac) = m.split_at(m.len() - point);
            let int = if int.is_empty() { "0" } else { int };
            let sign = if neg { "-" } else { "" };
            let literal = if frac.is_empty() { format!("{sign}{int}e{exp}") } else { format!("{sign}{int}.{frac}e{exp}") };
            let expected: f64 = literal.parse().unwrap();
            match decode_f64(&literal) {
                Ok(got) => prop_assert_eq!(got.to_bits(), expected.to_bits(), "{}", literal),
                // Out of range for a finite double: serde_json refuses it, std gives infinity.
                Err(_) => prop_assert!(expected.is_infinite(), "{} rejected", literal),
            }
        }
    }
}
