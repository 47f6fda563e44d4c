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
