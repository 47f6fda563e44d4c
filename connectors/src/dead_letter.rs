//! The dead-letter sink: a directory of JSON-lines files, one object per dead
//! letter, staged and committed like Parquet output (exactly-once).
//!
//! Each line: `payload` (the raw input without its `\n`), `payload_encoding`
//! (`utf8`, or `base64` when the bytes are not valid UTF-8: lossless either
//! way), `payload_truncated` (true when `payload` is only the first 1 KiB of an
//! oversize record), `payload_length` (the whole record's length in bytes),
//! `error`, `stage`, `source`, `partition`, `offset`, `event_time` (ms or null).

use std::io::Write;
use std::path::PathBuf;

use base64::Engine;
use serde::Serialize;
use weir_core::checkpoint::Publish;
use weir_core::error::{Error, IoContext, Result};
use weir_core::record::DeadLetter;
use weir_core::sink::{Rejected, Sink, SinkContext, SinkWriter};
use weir_core::time::Epoch;

use crate::staging::{IntervalFile, Staging};

/// A dead-letter directory of JSON-lines files.
#[derive(Clone, Debug)]
pub struct DeadLetters {
    dir: PathBuf,
}

impl DeadLetters {
    /// Writes into `dir` (created if missing).
    pub fn dir(dir: impl Into<PathBuf>) -> Self {
        DeadLetters { dir: dir.into() }
    }
}

#[derive(Serialize)]
struct Line<'a> {
    payload: std::borrow::Cow<'a, str>,
    payload_encoding: &'static str,
    payload_truncated: bool,
    payload_length: u64,
    error: &'a str,
    stage: &'a str,
    source: &'a str,
    partition: u32,
    offset: u64,
    event_time: Option<i64>,
}

/// Writes a dead letter as one JSON object (the dead-letter sink's line, without its `\n`).
pub fn to_json<W: Write>(d: &DeadLetter, out: W) -> serde_json::Result<()> {
    let (payload, payload_encoding) = match std::str::from_utf8(&d.payload) {
        Ok(s) => (std::borrow::Cow::Borrowed(s), "utf8"),
        Err(_) => (base64::engine::general_purpose::STANDARD.encode(&d.payload).into(), "base64"),
    };
    let line = Line {
        payload,
        payload_encoding,
        payload_truncated: d.payload_truncated,
        payload_length: d.payload_length,
        error: &d.error,
        stage: &d.stage,
        source: &d.source,
        partition: d.partition,
        offset: d.offset,
        event_time: d.event_time,
    };
    serde_json::to_writer(out, &line)
}

impl Sink<DeadLetter> for DeadLetters {
    fn kind(&self) -> &str {
        "dead-letters"
    }

    fn rejects_rows(&self) -> bool {
        false
    }

    fn open(&self, ctx: &SinkContext) -> Result<Box<dyn SinkWriter<DeadLetter>>> {
        Ok(Box::new(DeadLetterWriter { file: IntervalFile::new(Staging::open(&self.dir, ctx)?, "jsonl") }))
    }
}

struct DeadLetterWriter {
    file: IntervalFile,
}

impl SinkWriter<DeadLetter> for DeadLetterWriter {
    fn write(&mut self, rows: &mut Vec<DeadLetter>, _rejected: &mut Vec<Rejected<DeadLetter>>) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let (path, out) = self.file.writer()?;
        for d in rows.drain(..) {
            to_json(&d, &mut *out).map_err(|e| Error::Encoding {
                what: format!("dead letter {}", path.display()),
                message: e.to_string(),
            })?;
            out.write_all(b"\n").ctx("write", path)?;
        }
        Ok(())
    }

    fn stage(&mut self, epoch: Epoch) -> Result<Vec<Publish>> {
        self.file.stage(epoch)
    }
}
