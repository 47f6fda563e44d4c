//! Topics: a named directory of partitions with a `topic.json` that records its
//! partition count and identity, and [`LogSource`], a topic as a pipeline
//! [`Source`](weir_core::source::Source).
//!
//! A topic name is one path component that cannot escape or hide in the log
//! directory: 1 to 200 of `[A-Za-z0-9._-]`, no `..`, not starting with `.` or `_`
//! (reserved for Weir's own files). Anything else (`/`, `\`, NUL, empty) is an
//! [`Error::Config`] naming the name.

use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use weir_core::error::{Error, IoContext, Result};
use weir_core::record::{Chunk, Offset, PartitionId};
use weir_core::source::{PartitionReader, PartitionSpec, Source};
use weir_core::storage::{self, Storage, create_dir_durable};

use super::config::LogConfig;
use super::partition::{self, PartitionInfo, partition_dir_name};
use super::reader::LogReader;
use super::writer::PartitionWriter;
use crate::record_limit::{DEFAULT_MAX_RECORD_BYTES, check_max_record_bytes};

/// Name of the metadata file in a topic directory.
const META_FILE: &str = "topic.json";
/// Version of the layout described in the [module docs](super).
const FORMAT: u32 = 1;

/// Id of a topic whose `topic.json` predates topic ids.
pub const LEGACY_TOPIC_ID: &str = "legacy";

/// Contents of `topic.json`.
#[derive(Debug, Serialize, Deserialize)]
struct TopicMeta {
    format: u32,
    name: String,
    /// Absent in files written before topic ids: [`LEGACY_TOPIC_ID`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    partitions: u32,
}

/// A fresh topic id: 128 bits in hex from the clock, the process id and std's
/// randomly seeded hasher, so two topics created anywhere (even in the same
/// nanosecond) differ.
fn new_topic_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let half = |salt: u64| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(nanos);
        h.write_u32(std::process::id());
        h.write_u64(salt);
        h.finish()
    };
    let hi = half(0);
    format!("{hi:016x}{:016x}", half(hi))
}

/// A topic of the embedded log: `<log_dir>/<name>/` with `partitions`
/// partition directories, on a [`Storage`] (the local file system unless
/// opened with [`Topic::open_in`] or [`Topic::create_in`]; its writers,
/// readers and producers use the same). Cheap to clone; holds no open file.
/// Two topics are equal when directory, name, id and partition count are
/// (whatever their storage).
///
/// ```
/// # fn main() -> weir_core::Result<()> {
/// use weir_connectors::log::{LogConfig, Topic};
/// let dir = tempfile::tempdir().map_err(|e| weir_core::Error::io("tempdir", "/tmp", e))?;
/// let topic = Topic::create(dir.path(), "readings", 2)?;
/// topic.writer(1, LogConfig::default())?.append(&[b"{\"device\":\"a\"}"])?;
/// assert_eq!(Topic::open(dir.path(), "readings")?.end_offsets()?, vec![0, 1]);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Topic {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    name: String,
    id: String,
    partitions: u32,
}

impl PartialEq for Topic {
    fn eq(&self, other: &Topic) -> bool {
        (&self.dir, &self.name, &self.id, self.partitions) == (&other.dir, &other.name, &other.id, other.partitions)
    }
}

impl Eq for Topic {}

/// Checks a topic name (see the [module docs](self)), naming it in the error.
pub fn check_topic_name(name: &str) -> Result<()> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    let why = if name.is_empty() {
        "it is empty"
    } else if name.contains('\0') {
        "it contains a NUL byte"
    } else if name.contains(['/', '\\']) {
        "it contains a path separator"
    } else if name.contains("..") {
        "it contains `..`"
    } else if name.starts_with(['.', '_']) {
        "it starts with `.` or `_` (reserved)"
    } else if name.len() > 200 {
        "it is longer than 200 bytes"
    } else if !name.chars().all(ok_char) {
        "it has a character outside [A-Za-z0-9._-]"
    } else {
        return Ok(());
    };
    Err(Error::config(
        "topic",
        format!(
            "\"{}\" is not a valid topic name: {why}; expected 1 to 200 of [A-Za-z0-9._-], \
             no `..`, not starting with `.` or `_`",
            name.escape_debug()
        ),
    ))
}

impl Topic {
    /// Creates the topic `name` with `partitions` empty partitions under `log_dir`
    /// (created when missing) on the local file system. An error if the topic
    /// directory already exists.
    pub fn create(log_dir: &Path, name: &str, partitions: u32) -> Result<Topic> {
        Self::create_in(storage::local(), log_dir, name, partitions)
    }

    /// [`Topic::create`] on `storage`. The topic is durable when it returns.
    pub fn create_in(storage: Arc<dyn Storage>, log_dir: &Path, name: &str, partitions: u32) -> Result<Topic> {
        check_topic_name(name)?;
        if partitions == 0 {
            return Err(Error::config("partitions", "a topic needs at least 1 partition"));
        }
        create_dir_durable(&*storage, log_dir)?;
        let dir = log_dir.join(name);
        match storage.create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                return Err(Error::config("topic", format!("topic `{name}` already exists in {}", log_dir.display())));
            }
            Err(e) => return Err(Error::io("create directory", dir, e)),
        }
        for p in 0..partitions {
            let pdir = dir.join(partition_dir_name(p));
            storage.create_dir(&pdir).ctx("create directory", &pdir)?;
        }
        let id = new_topic_id();
        let meta = TopicMeta { format: FORMAT, name: name.to_owned(), id: Some(id.clone()), partitions };
        let json = serde_json::to_vec_pretty(&meta)
            .map_err(|e| Error::Encoding { what: format!("{META_FILE} of topic `{name}`"), message: e.to_string() })?;
        // Written last and renamed into place: a topic without topic.json is one
        // whose creation did not finish.
        let tmp = dir.join(format!("{META_FILE}.tmp"));
        let mut file = storage.create(&tmp).ctx("create", &tmp)?;
        file.write_all(&json).ctx("write", &tmp)?;
        file.sync().ctx("fsync", &tmp)?;
        drop(file);
        let path = dir.join(META_FILE);
        storage.rename(&tmp, &path).ctx("rename", &tmp)?;
        // The partition directories and topic.json, then the topic directory.
        storage.sync_dir(&dir).ctx("fsync", &dir)?;
        storage.sync_dir(log_dir).ctx("fsync", log_dir)?;
        Ok(Topic { storage, dir, name: name.to_owned(), id, partitions })
    }

    /// Opens the existing topic `name` under `log_dir` on the local file system.
    pub fn open(log_dir: &Path, name: &str) -> Result<Topic> {
        Self::open_in(storage::local(), log_dir, name)
    }

    /// [`Topic::open`] on `storage`.
    pub fn open_in(storage: Arc<dyn Storage>, log_dir: &Path, name: &str) -> Result<Topic> {
        check_topic_name(name)?;
        let dir = log_dir.join(name);
        let path = dir.join(META_FILE);
        let bytes = match storage.read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(Error::config(
                    "topic",
                    format!("no topic `{name}` in {} (no {})", log_dir.display(), path.display()),
                ));
            }
            Err(e) => return Err(Error::io("read", path, e)),
        };
        let meta: TopicMeta = serde_json::from_slice(&bytes)
            .map_err(|e| Error::corrupt(&path, 0, format!("expected {{format, name, partitions}}: {e}")))?;
        if meta.format != FORMAT || meta.name != name || meta.partitions == 0 {
            return Err(Error::corrupt(
                &path,
                0,
                format!(
                    "expected format {FORMAT}, name `{name}` and at least 1 partition, found format {}, name `{}`, {} partitions",
                    meta.format, meta.name, meta.partitions
                ),
            ));
        }
        let id = meta.id.unwrap_or_else(|| LEGACY_TOPIC_ID.to_owned());
        Ok(Topic { storage, dir, name: meta.name, id, partitions: meta.partitions })
    }

    /// The topic name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The id given to the topic when it was created ([`LEGACY_TOPIC_ID`] for a
    /// topic created before ids): a topic deleted and created again under the same
    /// name has another id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The number of partitions.
    pub fn partition_count(&self) -> u32 {
        self.partitions
    }

    /// The storage the topic is on.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// The topic directory, `<log_dir>/<name>`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory of `partition` (an error naming `partition` when out of range).
    pub fn partition_dir(&self, partition: PartitionId) -> Result<PathBuf> {
        if partition >= self.partitions {
            return Err(Error::config(
                "partition",
                format!("topic `{}` has partitions 0..{}, not {partition}", self.name, self.partitions),
            ));
        }
        Ok(self.dir.join(partition_dir_name(partition)))
    }

    /// Opens the writer of `partition` (see [`PartitionWriter::open`]) on the topic's storage.
    pub fn writer(&self, partition: PartitionId, config: LogConfig) -> Result<PartitionWriter> {
        PartitionWriter::open_in(self.storage.clone(), self.partition_dir(partition)?, config)
    }

    /// Opens a reader of `partition` from `from`, up to `until` (see
    /// [`LogReader::open`]) on the topic's storage.
    pub fn reader(&self, partition: PartitionId, from: Offset, until: Option<Offset>) -> Result<LogReader> {
        let dir = self.partition_dir(partition)?;
        LogReader::open_in(self.storage.clone(), dir, partition, from, until, DEFAULT_MAX_RECORD_BYTES)
    }

    /// The end offset (offset after the last valid record) of every partition.
    pub fn end_offsets(&self) -> Result<Vec<Offset>> {
        (0..self.partitions).map(|p| partition::end_offset(&*self.storage, &self.partition_dir(p)?)).collect()
    }

    /// Start, end, segments and bytes of every partition.
    pub fn describe(&self) -> Result<Vec<PartitionInfo>> {
        (0..self.partitions).map(|p| partition::info(&*self.storage, &self.partition_dir(p)?, p)).collect()
    }
}

/// A topic as a pipeline source: one source partition per topic partition,
/// record offsets, read by [`LogReader`]s.
#[derive(Clone, Debug)]
pub struct LogSource {
    topic: Topic,
    max_record_bytes: u64,
}

impl LogSource {
    /// The source of the existing topic `name` under `log_dir` on the local
    /// file system (an error naming topic and directory when there is none).
    pub fn open(log_dir: &Path, name: &str) -> Result<LogSource> {
        Ok(LogSource::new(Topic::open(log_dir, name)?))
    }

    /// [`LogSource::open`] on `storage` (in a pipeline's build function:
    /// `p.ctx().storage()`, the pipeline's
    /// [`PipelineConfig::storage`](weir_core::PipelineConfig::storage)).
    pub fn open_in(storage: Arc<dyn Storage>, log_dir: &Path, name: &str) -> Result<LogSource> {
        Ok(LogSource::new(Topic::open_in(storage, log_dir, name)?))
    }

    /// The source of an opened topic (read on the topic's storage).
    pub fn new(topic: Topic) -> LogSource {
        LogSource { topic, max_record_bytes: DEFAULT_MAX_RECORD_BYTES }
    }

    /// Sets the longest record handed over whole (1 byte to 1 GiB, default 16 MiB);
    /// longer ones become truncated dead letters.
    pub fn with_max_record_bytes(mut self, max_record_bytes: u64) -> Result<LogSource> {
        check_max_record_bytes(max_record_bytes)?;
        self.max_record_bytes = max_record_bytes;
        Ok(self)
    }

    /// The topic.
    pub fn topic(&self) -> &Topic {
        &self.topic
    }
}

impl Source for LogSource {
    fn name(&self) -> &str {
        self.topic.name()
    }

    fn partitions(&self) -> Result<Vec<PartitionSpec>> {
        let ends = self.topic.end_offsets()?;
        Ok((0..).zip(ends).map(|(id, end)| PartitionSpec { id, start: 0, end }).collect())
    }

    fn open(&self, partition: PartitionId, from: Offset, until: Option<Offset>) -> Result<Box<dyn PartitionReader>> {
        let dir = self.topic.partition_dir(partition)?;
        let storage = self.topic.storage.clone();
        Ok(Box::new(LogReader::open_in(storage, dir, partition, from, until, self.max_record_bytes)?))
    }

    /// Topic name, id and partition count (the runtime records end offsets separately).
    fn fingerprint(&self) -> Result<serde_json::Value> {
        Ok(serde_json::json!({
            "topic": self.topic.name(),
            "id": self.topic.id(),
            "partitions": self.topic.partition_count(),
        }))
    }

    /// The payload of the record at `offset` (found through the segment index);
    /// its first KiB when it is longer than `max_record_bytes`. `None` at the end offset.
    fn record_at(&self, partition: PartitionId, offset: Offset) -> Result<Option<Vec<u8>>> {
        let dir = self.topic.partition_dir(partition)?;
        let storage = self.topic.storage.clone();
        let mut reader = LogReader::open_in(storage, dir, partition, offset, Some(offset + 1), self.max_record_bytes)?;
        let mut chunk = Chunk::default();
        reader.read(1, &mut chunk)?;
        Ok(chunk.records().next().map(|(_, payload)| payload.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn create_open_and_validate() -> Result<()> {
        let dir = tempfile::tempdir().ctx("tempdir", "/tmp")?;
        let t = Topic::create(dir.path(), "sensors", 3)?;
        assert!(t.dir().join("p-00002").is_dir());
        assert_eq!(Topic::open(dir.path(), "sensors")?, t);
        assert_eq!(t.end_offsets()?, vec![0, 0, 0]);
        let again = Topic::create(dir.path(), "sensors", 3).unwrap_err();
        assert!(again.to_string().contains("already exists"), "{again}");
        for (bad, why) in [
            ("", "empty"),
            ("../x", "path separator"),
            ("..", "`..`"),
            ("a..b", "`..`"),
            ("a/b", "path separator"),
            ("a\\b", "path separator"),
            ("a\0b", "NUL"),
            (".hidden", "starts with"),
            ("_staging", "starts with"),
            ("sp ace", "character outside"),
        ] {
            for e in [Topic::create(dir.path(), bad, 1).unwrap_err(), Topic::open(dir.path(), bad).unwrap_err()] {
                let message = e.to_string();
                assert!(matches!(e, Error::Config { .. }), "{bad:?}: {e}");
                assert!(message.contains(&format!("\"{}\"", bad.escape_debug())) && message.contains(why), "{message}");
            }
        }
        assert!(!dir.path().join("x").exists() && !dir.path().join("a").exists());
        assert!(Topic::create(dir.path(), "none", 0).unwrap_err().to_string().contains("partitions"));
        let e = Topic::open(dir.path(), "missing").unwrap_err().to_string();
        assert!(e.contains("no topic `missing`") && e.contains(&dir.path().display().to_string()), "{e}");
        let e = LogSource::open(dir.path(), "missing").unwrap_err().to_string();
        assert!(e.contains("no topic `missing`"), "{e}");
        assert!(t.partition_dir(3).unwrap_err().to_string().contains("partition"));
        Ok(())
    }

    #[test]
    fn source_lists_partitions_with_end_offsets() -> Result<()> {
        let dir = tempfile::tempdir().ctx("tempdir", "/tmp")?;
        let t = Topic::create(dir.path(), "s", 2)?;
        t.writer(1, LogConfig::default())?.append(&[b"a", b"b"])?;
        let source = LogSource::open(dir.path(), "s")?;
        assert_eq!(source.name(), "s");
        assert_eq!(
            source.partitions()?,
            vec![PartitionSpec { id: 0, start: 0, end: 0 }, PartitionSpec { id: 1, start: 0, end: 2 },]
        );
        assert_eq!(source.fingerprint()?, serde_json::json!({"topic": "s", "id": t.id(), "partitions": 2}));
        assert_eq!(source.record_at(1, 1)?, Some(b"b".to_vec()));
        assert_eq!(source.record_at(1, 2)?, None);
        assert!(source.record_at(1, 3).is_err() && source.record_at(2, 0).is_err());
        let mut chunk = weir_core::record::Chunk::default();
        source.open(1, 1, Some(2))?.read(1 << 20, &mut chunk)?;
        assert_eq!(chunk.records().collect::<Vec<_>>(), vec![(1, &b"b"[..])]);
        Ok(())
    }

    #[test]
    fn topics_have_ids_and_legacy_topic_json_still_opens() -> Result<()> {
        let dir = tempfile::tempdir().ctx("tempdir", "/tmp")?;
        let a = Topic::create(dir.path(), "a", 1)?;
        let b = Topic::create(dir.path(), "b", 1)?;
        assert_eq!(a.id().len(), 32);
        assert!(a.id().bytes().all(|c| c.is_ascii_hexdigit()), "{}", a.id());
        assert_ne!(a.id(), b.id());
        assert_eq!(Topic::open(dir.path(), "a")?.id(), a.id());
        // Deleted and created again: the same name, another identity.
        fs::remove_dir_all(a.dir()).ctx("remove", a.dir())?;
        let again = Topic::create(dir.path(), "a", 1)?;
        assert_ne!(again.id(), a.id());
        assert_ne!(LogSource::new(again).fingerprint()?, LogSource::new(a).fingerprint()?);
        // A topic.json from before ids.
        let meta = b.dir().join(META_FILE);
        fs::write(&meta, br#"{"format":1,"name":"b","partitions":1}"#).ctx("write", &meta)?;
        let legacy = Topic::open(dir.path(), "b")?;
        assert_eq!(legacy.id(), LEGACY_TOPIC_ID);
        assert_eq!(LogSource::new(legacy).fingerprint()?["id"], "legacy");
        Ok(())
    }

    #[test]
    fn log_source_truncates_oversize_records_and_rereads_them() -> Result<()> {
        let dir = tempfile::tempdir().ctx("tempdir", "/tmp")?;
        let t = Topic::create(dir.path(), "s", 1)?;
        let big = vec![b'x'; 3 << 20];
        t.writer(0, LogConfig::default())?.append(&[b"small", &big, b"after"])?;
        assert!(LogSource::new(t.clone()).with_max_record_bytes(0).is_err());
        let source = LogSource::new(t).with_max_record_bytes(1000)?;
        let mut chunk = Chunk::default();
        source.open(0, 0, None)?.read(usize::MAX, &mut chunk)?;
        let records: Vec<_> = chunk.records().map(|(o, r)| (o, r.len())).collect();
        assert_eq!(records, vec![(0, 5), (1, 1024), (2, 5)]);
        assert_eq!((chunk.truncated.clone(), chunk.max_record_bytes), (vec![(1, 3 << 20)], 1000));
        assert!(chunk.data.len() < 2000, "{}", chunk.data.len());
        assert_eq!(source.record_at(0, 1)?, Some(big[..1024].to_vec()));
        assert_eq!(source.record_at(0, 2)?, Some(b"after".to_vec()));
        Ok(())
    }
}
