//! `raw.decode::<T>(Json)`: turns raw records into typed records. A record
//! that does not decode becomes a [`DeadLetter`] with stage `decode`, the
//! parser's message, and its source position; it never stops the pipeline.

use std::sync::atomic::Ordering;

use serde::de::DeserializeOwned;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use weir_core::flow::VecOutput;
use weir_core::record::{Chunk, DeadLetter, Meta, Rec};
use weir_core::{Flow, Raw};

/// A record format: bytes to `T`, or a message saying why not.
pub trait Format<T>: Clone + 'static {
    /// Decodes one record.
    fn decode(&self, bytes: &[u8]) -> Result<T, String>;
}

/// JSON (one object per record) through serde_json.
#[derive(Clone, Copy, Debug, Default)]
pub struct Json;

impl<T: DeserializeOwned> Format<T> for Json {
    fn decode(&self, bytes: &[u8]) -> Result<T, String> {
        // Validating the whole record's UTF-8 once is cheaper than serde_json
        // validating every key and string separately (`from_slice`); the
        // result is the same. Invalid UTF-8 takes `from_slice` for its error.
        match std::str::from_utf8(bytes) {
            Ok(text) => serde_json::from_str(text),
            Err(_) => serde_json::from_slice(bytes),
        }
        .map_err(|e| e.to_string())
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
        let mut builder = OperatorBuilder::new("Decode".to_owned(), ctx.scope());
        let mut input = builder.new_input(self.stream, Pipeline);
        let (ok_out, ok) = builder.new_output::<Vec<Rec<T>>>();
        let (err_out, err) = builder.new_output::<Vec<DeadLetter>>();
        let mut ok_out: VecOutput<Rec<T>> = OutputBuilder::from(ok_out);
        let mut err_out: VecOutput<DeadLetter> = OutputBuilder::from(err_out);
        let source = self.input.source.clone();
        let pool = self.pool.clone();
        let dead = ctx.counter("dead_letters.decode");
        let decoded = ctx.counter("decoded");
        builder.build(move |_caps| {
            let mut batch: Vec<Rec<T>> = Vec::new();
            move |_frontiers| {
                let mut ok_h = ok_out.activate();
                let mut err_h = err_out.activate();
                input.for_each(|cap, data: &mut Vec<Chunk>| {
                    let mut errs = err_h.session(&cap);
                    let (mut n_ok, mut n_err) = (0u64, 0u64);
                    for chunk in data.drain(..) {
                        batch.reserve(chunk.len());
                        for (offset, payload) in chunk.records() {
                            let meta = Meta { partition: chunk.partition, offset, event_time: Meta::NO_TIME };
                            match format.decode(payload) {
                                Ok(value) => {
                                    n_ok += 1;
                                    batch.push(Rec { meta, value });
                                }
                                Err(error) => {
                                    n_err += 1;
                                    errs.give(DeadLetter {
                                        payload: payload.to_vec(),
                                        error,
                                        stage: "decode".into(),
                                        source: source.clone(),
                                        partition: chunk.partition,
                                        offset,
                                        event_time: None,
                                    });
                                }
                            }
                        }
                        pool.put(chunk);
                        // One message per chunk: batches stay small enough (about a thousand
                        // records) for the allocator to reuse hot memory, where one batch of a
                        // whole activation would be a fresh multi-megabyte allocation each time.
                        ok_h.session(&cap).give_container(&mut batch);
                    }
                    decoded.fetch_add(n_ok, Ordering::Relaxed);
                    dead.fetch_add(n_err, Ordering::Relaxed);
                });
            }
        });
        ctx.register_dead_letters(err);
        Flow { stream: ok, ctx, input: Some(self.input), watermarks: None }
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

    #[test]
    fn invalid_utf8_is_decoded_or_rejected_like_from_slice() {
        // Invalid UTF-8 inside an ignored value: serde_json's slice reader skips it.
        let line = b"{\"v\":1.5,\"x\":\"\xff\"}";
        assert_eq!(Format::<One>::decode(&Json, line).map(|o| o.v), Ok(1.5));
        let bad = b"{\"v\":\"\xff\"}";
        assert!(Format::<One>::decode(&Json, bad).is_err());
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
