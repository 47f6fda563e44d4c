//! Sinks that deliver to a server (a Kafka topic, an MQTT broker): the
//! staging/publish shape with an outbox.
//!
//! Each worker encodes its rows into staged files of key/value records, closed
//! at every checkpoint epoch like Parquet files; the commit operator publishes
//! them into the outbox directory after the manifest commits (marked
//! transient). Worker 0's [`AfterCommit`] handler then hands them, oldest
//! epoch first, to a thread that delivers each file's records through the
//! sink's [`Deliver`] and removes the file once the destination acknowledged
//! every record. A crash between delivery and removal delivers the file again:
//! **at-least-once**. A restarted run delivers what is left in the outbox.
//!
//! Backpressure: while more than [`MAX_PENDING_BYTES`] of committed output is
//! undelivered, the commit operator waits, and the sources stop opening
//! epochs. A row the destination can never take (larger than its record limit)
//! is rejected when it is written and becomes a dead letter; a record the
//! destination refuses for good at delivery goes to `<outbox>/_refused/` as a
//! JSON line with the reason, so it neither vanishes nor blocks the outbox.
//!
//! The outbox is `<state>/outbox/<operator>` (or a directory given to the
//! sink); without `--state`, a directory under the system's temporary
//! directory for the run.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use serde::Serialize;
use weir_core::checkpoint::Publish;
use weir_core::error::{Error, IoContext, Result};
use weir_core::record::{DeadLetter, TRUNCATED_PREFIX_BYTES};
use weir_core::sink::{AfterCommit, Rejected, Sink, SinkContext, SinkWriter};
use weir_core::storage::{Storage, create_dir_durable};
use weir_core::time::Epoch;

use crate::staging::{IntervalFile, Staging};

/// Committed output waiting for delivery beyond which commits wait.
pub const MAX_PENDING_BYTES: u64 = 64 << 20;

/// One record of an outbox file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutRecord<'a> {
    /// The record's key (the Kafka message key, an MQTT topic level).
    pub key: Option<&'a [u8]>,
    /// The record's value (a JSON object).
    pub value: &'a [u8],
}

/// Where an outbox sink delivers.
pub trait Destination: Send + Sync + 'static {
    /// Short kind name used in operator ids (`kafka`, `mqtt`).
    fn kind(&self) -> &str;
    /// The largest record (key plus value, in bytes) the destination takes:
    /// larger rows become dead letters when written.
    fn max_record_bytes(&self) -> usize;
    /// Connects (on worker 0, at startup): a bad setting or a destination that
    /// does not exist is an error here, before anything is read.
    fn connect(&self) -> Result<Box<dyn Deliver>>;
}

/// A connection that delivers records.
pub trait Deliver: Send {
    /// Delivers `records` in order and returns once the destination has
    /// acknowledged every one. Records it refuses for good (never deliverable,
    /// whatever is retried) go to `refused` as `(index, reason)`; an error is
    /// for what a later attempt may fix (the destination is away), and stops
    /// the pipeline.
    fn deliver(&mut self, records: &[OutRecord<'_>], refused: &mut Vec<(usize, String)>) -> Result<()>;
}

/// How a row becomes a record: the value is written into the first buffer,
/// the key (if any) into the second; `Err` rejects the row with a reason.
pub type Encode<T> = Arc<dyn Fn(&T, &mut Vec<u8>, &mut Vec<u8>) -> std::result::Result<bool, String> + Send + Sync>;

/// A sink that delivers each checkpoint's rows to `D` after the checkpoint
/// commits (at-least-once), as JSON values by default.
pub struct OutboxSink<T, D> {
    dest: Arc<D>,
    dir: Option<PathBuf>,
    encode: Encode<T>,
    rejects: bool,
}

impl<T, D> Clone for OutboxSink<T, D> {
    fn clone(&self) -> Self {
        OutboxSink {
            dest: self.dest.clone(),
            dir: self.dir.clone(),
            encode: self.encode.clone(),
            rejects: self.rejects,
        }
    }
}

/// Dead letters whose payload is longer than this go out with only its first
/// [`weir_core::record::TRUNCATED_PREFIX_BYTES`] (`payload_truncated`, and
/// `payload_length` the whole length), so a dead letter always fits a message.
pub const DEAD_LETTER_PAYLOAD_BYTES: usize = 64 << 10;

impl<D: Destination> OutboxSink<DeadLetter, D> {
    /// A sink of dead letters as JSON objects (the dead-letter sink's lines).
    /// It rejects nothing: a payload over [`DEAD_LETTER_PAYLOAD_BYTES`] is
    /// truncated (the dead-letter directory keeps it whole).
    pub fn dead_letters(dest: D) -> Self {
        OutboxSink {
            dest: Arc::new(dest),
            dir: None,
            encode: Arc::new(|d: &DeadLetter, value: &mut Vec<u8>, _key: &mut Vec<u8>| {
                let result = if d.payload.len() > DEAD_LETTER_PAYLOAD_BYTES {
                    let mut short = d.clone();
                    short.payload.truncate(TRUNCATED_PREFIX_BYTES);
                    short.payload_truncated = true;
                    crate::dead_letter::to_json(&short, value)
                } else {
                    crate::dead_letter::to_json(d, value)
                };
                result.map(|()| false).map_err(|e| e.to_string())
            }),
            rejects: false,
        }
    }
}

impl<T: Serialize + 'static, D: Destination> OutboxSink<T, D> {
    /// Rows as JSON objects without a key.
    pub fn new(dest: D) -> Self {
        OutboxSink {
            dest: Arc::new(dest),
            dir: None,
            encode: Arc::new(|row: &T, value: &mut Vec<u8>, _key: &mut Vec<u8>| {
                serde_json::to_writer(value, row).map(|()| false).map_err(|e| e.to_string())
            }),
            rejects: true,
        }
    }

    /// Rows as JSON objects, keyed by `key` (a device id, say).
    pub fn keyed<K: AsRef<[u8]>>(self, key: impl Fn(&T) -> K + Send + Sync + 'static) -> Self {
        self.encode_with(move |row, value, k| {
            serde_json::to_writer(value, row).map_err(|e| e.to_string())?;
            k.extend_from_slice(key(row).as_ref());
            Ok(true)
        })
    }
}

impl<T: 'static, D: Destination> OutboxSink<T, D> {
    /// Rows encoded by `encode` (value into the first buffer, key into the
    /// second; returns whether there is a key; `Err` makes the row a dead letter).
    pub fn encode_with(
        mut self,
        encode: impl Fn(&T, &mut Vec<u8>, &mut Vec<u8>) -> std::result::Result<bool, String> + Send + Sync + 'static,
    ) -> Self {
        self.encode = Arc::new(encode);
        self
    }

    /// Keeps the outbox in `dir` instead of `<state>/outbox/<operator>`.
    pub fn outbox_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    fn dir(&self, ctx: &SinkContext) -> PathBuf {
        match (&self.dir, &ctx.state_dir) {
            (Some(d), _) => d.clone(),
            (None, Some(state)) => state.join("outbox").join(&ctx.operator),
            (None, None) => std::env::temp_dir().join(format!("weir-outbox-{}-{}", ctx.run_id, ctx.operator)),
        }
    }
}

impl<T: 'static, D: Destination> Sink<T> for OutboxSink<T, D> {
    fn kind(&self) -> &str {
        self.dest.kind()
    }

    fn rejects_rows(&self) -> bool {
        self.rejects
    }

    fn open(&self, ctx: &SinkContext) -> Result<Box<dyn SinkWriter<T>>> {
        Ok(Box::new(OutboxWriter {
            file: IntervalFile::new(Staging::outbox(&self.dir(ctx), ctx)?, "records"),
            encode: self.encode.clone(),
            max: self.dest.max_record_bytes(),
            kind: self.dest.kind().to_string(),
            rejects: self.rejects,
            key: Vec::new(),
            value: Vec::new(),
        }))
    }

    fn delivers(&self) -> bool {
        true
    }

    fn after_commit(&self, ctx: &SinkContext) -> Result<Option<Box<dyn AfterCommit>>> {
        let dir = ctx.storage.canonicalize(&self.dir(ctx)).ctx("canonicalize", self.dir(ctx))?;
        let scratch = self.dir.is_none() && ctx.state_dir.is_none();
        let deliver = match self.dest.connect() {
            Ok(d) => d,
            Err(e) => {
                if scratch {
                    let _ = ctx.storage.remove_dir_all(&dir);
                }
                return Err(e);
            }
        };
        let mut delivery = Delivery::start(ctx.storage.clone(), dir.clone(), ctx.operator.clone(), deliver)?;
        if scratch {
            // A run without checkpoints has a scratch outbox of its own.
            delivery.scratch = Some((ctx.storage.clone(), dir));
        }
        Ok(Some(Box::new(delivery)))
    }
}

struct OutboxWriter<T> {
    file: IntervalFile,
    encode: Encode<T>,
    max: usize,
    kind: String,
    rejects: bool,
    key: Vec<u8>,
    value: Vec<u8>,
}

/// Appends one record: `key length (u32 LE, u32::MAX for none), key, value length (u32 LE), value`.
fn write_frame(out: &mut impl Write, key: Option<&[u8]>, value: &[u8]) -> std::io::Result<()> {
    match key {
        Some(k) => {
            out.write_all(&(k.len() as u32).to_le_bytes())?;
            out.write_all(k)?;
        }
        None => out.write_all(&u32::MAX.to_le_bytes())?,
    }
    out.write_all(&(value.len() as u32).to_le_bytes())?;
    out.write_all(value)
}

/// The records of an outbox file (`None` when it is not a whole sequence of frames).
fn read_frames(bytes: &[u8]) -> Option<Vec<OutRecord<'_>>> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if b.len() < n {
            return None;
        }
        let (head, tail) = b.split_at(n);
        *b = tail;
        Some(head)
    }
    fn len(b: &mut &[u8]) -> Option<u32> {
        take(b, 4).and_then(|s| s.try_into().ok()).map(u32::from_le_bytes)
    }
    let mut b = bytes;
    let mut out = Vec::new();
    while !b.is_empty() {
        let key = match len(&mut b)? {
            u32::MAX => None,
            n => Some(take(&mut b, n as usize)?),
        };
        let n = len(&mut b)?;
        out.push(OutRecord { key, value: take(&mut b, n as usize)? });
    }
    Some(out)
}

impl<T> SinkWriter<T> for OutboxWriter<T> {
    fn write(&mut self, rows: &mut Vec<T>, rejected: &mut Vec<Rejected<T>>) -> Result<()> {
        for row in rows.drain(..) {
            self.key.clear();
            self.value.clear();
            let encoded = (self.encode)(&row, &mut self.value, &mut self.key);
            let size = self.value.len() + if matches!(encoded, Ok(true)) { self.key.len() } else { 0 };
            let outcome = match encoded {
                Ok(_) if size > self.max => {
                    Err(format!("a record of {size} bytes is larger than {} takes ({} bytes)", self.kind, self.max))
                }
                other => other,
            };
            let keyed = match outcome {
                Ok(keyed) => keyed,
                Err(reason) if self.rejects => {
                    rejected.push(Rejected { row, reason });
                    continue;
                }
                Err(reason) => {
                    return Err(Error::Encoding { what: format!("a row for {}", self.kind), message: reason });
                }
            };
            let (path, out) = self.file.writer()?;
            let key = keyed.then_some(self.key.as_slice());
            write_frame(out, key, &self.value).ctx("write", path)?;
        }
        Ok(())
    }

    fn stage(&mut self, epoch: Epoch) -> Result<Vec<Publish>> {
        self.file.stage(epoch)
    }
}

#[derive(Default)]
struct State {
    /// Undelivered bytes in the outbox, as last counted.
    pending: u64,
    /// New files were published.
    wake: bool,
    /// The run's last commit happened: deliver what is there, then stop.
    finishing: bool,
    /// The run is over (dropped): stop without waiting.
    stop: bool,
    /// The thread has stopped.
    done: bool,
    error: Option<Error>,
}

/// Worker 0's delivery thread of one outbox sink.
struct Delivery {
    state: Arc<(Mutex<State>, Condvar)>,
    thread: Option<JoinHandle<()>>,
    operator: String,
    /// A run's scratch outbox (no `--state`), removed once everything is delivered.
    scratch: Option<(Arc<dyn Storage>, PathBuf)>,
}

impl Delivery {
    fn start(storage: Arc<dyn Storage>, dir: PathBuf, operator: String, deliver: Box<dyn Deliver>) -> Result<Delivery> {
        let state: Arc<(Mutex<State>, Condvar)> = Arc::default();
        let st = state.clone();
        let op = operator.clone();
        let thread = std::thread::Builder::new()
            .name(format!("weir-{operator}"))
            .spawn(move || {
                let mut outbox = Outbox { storage, dir, operator: op, deliver, state: st.clone() };
                let result = outbox.run();
                let (lock, cv) = &*st;
                if let Ok(mut s) = lock.lock() {
                    if let Err(e) = result {
                        s.error = Some(e);
                    }
                    s.done = true;
                }
                cv.notify_all();
            })
            .map_err(|e| Error::Pipeline(format!("cannot start the delivery thread of {operator}: {e}")))?;
        Ok(Delivery { state, thread: Some(thread), operator, scratch: None })
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>> {
        self.state.0.lock().map_err(|_| Error::Pipeline(format!("{}: delivery state poisoned", self.operator)))
    }

    fn failed(&self, s: &mut State) -> Result<()> {
        match s.error.take() {
            Some(e) => Err(Error::Pipeline(format!("{}: delivering committed output failed: {e}", self.operator))),
            None if s.done && !s.finishing => {
                Err(Error::Pipeline(format!("{}: the delivery thread stopped", self.operator)))
            }
            None => Ok(()),
        }
    }
}

impl AfterCommit for Delivery {
    fn committed(&mut self) -> Result<()> {
        let mut s = self.lock()?;
        s.wake = true;
        self.state.1.notify_all();
        // Backpressure: wait while too much committed output is undelivered.
        while s.pending > MAX_PENDING_BYTES && s.error.is_none() && !s.done {
            s = self.state.1.wait(s).map_err(|_| Error::Pipeline("delivery state poisoned".into()))?;
        }
        self.failed(&mut s)
    }

    fn finish(&mut self) -> Result<()> {
        {
            let mut s = self.lock()?;
            s.finishing = true;
            self.state.1.notify_all();
        }
        if let Some(t) = self.thread.take() {
            t.join().map_err(|_| Error::Pipeline(format!("{}: the delivery thread panicked", self.operator)))?;
        }
        {
            let mut s = self.lock()?;
            self.failed(&mut s)?;
        }
        if let Some((storage, dir)) = self.scratch.take()
            && let Err(e) = storage.remove_dir_all(&dir)
        {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove the run's scratch outbox");
        }
        Ok(())
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        // A failed or aborted run does not wait for deliveries: the next run
        // delivers what is left.
        if let Ok(mut s) = self.state.0.lock() {
            s.stop = true;
        }
        self.state.1.notify_all();
    }
}

/// The delivery thread's side.
struct Outbox {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    operator: String,
    deliver: Box<dyn Deliver>,
    state: Arc<(Mutex<State>, Condvar)>,
}

/// `(epoch, worker, seq)` of a staged name `<operator>-w<worker>-<epoch>-<seq>-<run>.<ext>`.
fn order(operator: &str, name: &str) -> Option<(u64, u64, u64)> {
    let rest = name.strip_prefix(operator)?.strip_prefix("-w")?;
    let mut it = rest.split('-');
    let worker = it.next()?.parse().ok()?;
    let epoch = it.next()?.parse().ok()?;
    let seq = it.next()?.parse().ok()?;
    Some((epoch, worker, seq))
}

#[derive(Serialize)]
struct RefusedLine<'a> {
    error: &'a str,
    key: Option<std::borrow::Cow<'a, str>>,
    value: std::borrow::Cow<'a, str>,
    file: &'a str,
    index: usize,
}

impl Outbox {
    /// The committed files waiting, oldest epoch first, with their sizes.
    fn waiting(&self) -> Result<Vec<(PathBuf, u64)>> {
        let mut files = Vec::new();
        for entry in self.storage.list(&self.dir).ctx("list", &self.dir)? {
            let name = entry.name.to_string_lossy();
            if entry.is_dir {
                continue;
            }
            if let Some(key) = order(&self.operator, &name) {
                let path = self.dir.join(&entry.name);
                let len = self.storage.metadata(&path).ctx("stat", &path)?.len;
                files.push((key, path, len));
            }
        }
        files.sort();
        Ok(files.into_iter().map(|(_, p, l)| (p, l)).collect())
    }

    fn run(&mut self) -> Result<()> {
        loop {
            let files = self.waiting()?;
            {
                let (lock, cv) = &*self.state;
                let mut s = lock.lock().map_err(|_| Error::Pipeline("delivery state poisoned".into()))?;
                s.pending = files.iter().map(|f| f.1).sum();
                cv.notify_all();
                if s.stop {
                    return Ok(());
                }
                if files.is_empty() {
                    if s.finishing {
                        return Ok(());
                    }
                    while !(s.wake || s.finishing || s.stop) {
                        s = cv.wait(s).map_err(|_| Error::Pipeline("delivery state poisoned".into()))?;
                    }
                    s.wake = false;
                    continue;
                }
                s.wake = false;
            }
            for (path, len) in files {
                self.deliver_file(&path)?;
                let (lock, cv) = &*self.state;
                let mut s = lock.lock().map_err(|_| Error::Pipeline("delivery state poisoned".into()))?;
                s.pending = s.pending.saturating_sub(len);
                cv.notify_all();
                if s.stop {
                    return Ok(());
                }
            }
        }
    }

    fn deliver_file(&mut self, path: &Path) -> Result<()> {
        let bytes = self.storage.read(path).ctx("read", path)?;
        let records = read_frames(&bytes)
            .ok_or_else(|| Error::corrupt(path, 0, "outbox file is not a sequence of key/value records"))?;
        let mut refused = Vec::new();
        if !records.is_empty() {
            self.deliver.deliver(&records, &mut refused)?;
        }
        if !refused.is_empty() {
            self.keep_refused(path, &records, &refused)?;
        }
        // Removal needs no fsync: a file that reappears after a crash is
        // delivered again (at-least-once).
        self.storage.remove_file(path).ctx("remove", path)?;
        tracing::debug!(file = %path.display(), records = records.len(), refused = refused.len(), "delivered");
        Ok(())
    }

    /// Writes the records the destination refused to `<outbox>/_refused/<file>.jsonl`.
    fn keep_refused(&self, path: &Path, records: &[OutRecord<'_>], refused: &[(usize, String)]) -> Result<()> {
        let dir = self.dir.join("_refused");
        create_dir_durable(&*self.storage, &dir)?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let target = dir.join(format!("{name}.jsonl"));
        let mut out = Vec::new();
        for (index, error) in refused {
            let Some(r) = records.get(*index) else { continue };
            let line = RefusedLine {
                error,
                key: r.key.map(String::from_utf8_lossy),
                value: String::from_utf8_lossy(r.value),
                file: &name,
                index: *index,
            };
            serde_json::to_writer(&mut out, &line)
                .map_err(|e| Error::Encoding { what: target.display().to_string(), message: e.to_string() })?;
            out.push(b'\n');
        }
        let mut f = self.storage.create(&target).ctx("create", &target)?;
        f.write_all(&out).ctx("write", &target)?;
        f.sync().ctx("fsync", &target)?;
        self.storage.sync_dir(&dir).ctx("fsync", &dir)?;
        tracing::warn!(file = %target.display(), records = refused.len(), "the destination refused records; kept them");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let mut out = Vec::new();
        write_frame(&mut out, Some(b"k1"), b"{\"a\":1}").unwrap();
        write_frame(&mut out, None, b"").unwrap();
        write_frame(&mut out, Some(b""), b"x").unwrap();
        let r = read_frames(&out).unwrap();
        assert_eq!(
            r,
            vec![
                OutRecord { key: Some(b"k1"), value: b"{\"a\":1}" },
                OutRecord { key: None, value: b"" },
                OutRecord { key: Some(b""), value: b"x" },
            ]
        );
        assert!(read_frames(&out[..out.len() - 1]).is_none());
        assert_eq!(read_frames(&[]).unwrap(), vec![]);
    }

    #[test]
    fn outbox_files_go_out_in_epoch_order() {
        assert_eq!(order("kafka-3", "kafka-3-w001-0000000012-0000-abc.records"), Some((12, 1, 0)));
        assert_eq!(order("kafka-3", "kafka-31-w001-0000000012-0000-abc.records"), None);
        assert_eq!(order("kafka-3", "_weir.lock"), None);
    }
}
