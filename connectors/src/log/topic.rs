//! Topics: a named directory of partitions with a `topic.json` that records its
//! partition count, and [`LogSource`], a topic as a pipeline
//! [`Source`](weir_core::source::Source).

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use weir_core::error::{Error, IoContext, Result};
use weir_core::record::{Offset, PartitionId};
use weir_core::source::{PartitionReader, PartitionSpec, Source};

use super::config::LogConfig;
use super::partition::{self, PartitionInfo, partition_dir_name};
use super::reader::LogReader;
use super::writer::PartitionWriter;

/// Name of the metadata file in a topic directory.
const META_FILE: &str = "topic.json";
/// Version of the layout described in the [module docs](super).
const FORMAT: u32 = 1;

/// Contents of `topic.json`.
#[derive(Debug, Serialize, Deserialize)]
struct TopicMeta {
    format: u32,
    name: String,
    partitions: u32,
}

/// A topic of the embedded log: `<log_dir>/<name>/` with `partitions`
/// partition directories. Cheap to clone; holds no open file.
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topic {
    dir: PathBuf,
    name: String,
    partitions: u32,
}

fn check_name(name: &str) -> Result<()> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() > 200 || name.starts_with('.') || !name.chars().all(ok_char) {
        return Err(Error::config(
            "topic",
            format!("`{name}` is not a topic name: expected 1 to 200 of [A-Za-z0-9._-], not starting with `.`"),
        ));
    }
    Ok(())
}

fn fsync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir).ctx("open", dir)?.sync_all().ctx("fsync", dir)
}

impl Topic {
    /// Creates the topic `name` with `partitions` empty partitions under `log_dir`
    /// (created when missing). An error if the topic directory already exists.
    pub fn create(log_dir: &Path, name: &str, partitions: u32) -> Result<Topic> {
        check_name(name)?;
        if partitions == 0 {
            return Err(Error::config("partitions", "a topic needs at least 1 partition"));
        }
        fs::create_dir_all(log_dir).ctx("create directory", log_dir)?;
        let dir = log_dir.join(name);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                return Err(Error::config("topic", format!("topic `{name}` already exists in {}", log_dir.display())));
            }
            Err(e) => return Err(Error::io("create directory", dir, e)),
        }
        for p in 0..partitions {
            let pdir = dir.join(partition_dir_name(p));
            fs::create_dir(&pdir).ctx("create directory", &pdir)?;
        }
        let meta = TopicMeta { format: FORMAT, name: name.to_owned(), partitions };
        let json = serde_json::to_vec_pretty(&meta)
            .map_err(|e| Error::Encoding { what: format!("{META_FILE} of topic `{name}`"), message: e.to_string() })?;
        // Written last and renamed into place: a topic without topic.json is one
        // whose creation did not finish.
        let tmp = dir.join(format!("{META_FILE}.tmp"));
        let mut file = fs::File::create(&tmp).ctx("create", &tmp)?;
        std::io::Write::write_all(&mut file, &json).ctx("write", &tmp)?;
        file.sync_all().ctx("fsync", &tmp)?;
        let path = dir.join(META_FILE);
        fs::rename(&tmp, &path).ctx("rename", &tmp)?;
        fsync_dir(&dir)?;
        fsync_dir(log_dir)?;
        Ok(Topic { dir, name: name.to_owned(), partitions })
    }

    /// Opens the existing topic `name` under `log_dir`.
    pub fn open(log_dir: &Path, name: &str) -> Result<Topic> {
        check_name(name)?;
        let dir = log_dir.join(name);
        let path = dir.join(META_FILE);
        let bytes = match fs::read(&path) {
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
        Ok(Topic { dir, name: meta.name, partitions: meta.partitions })
    }

    /// The topic name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The number of partitions.
    pub fn partition_count(&self) -> u32 {
        self.partitions
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

    /// Opens the writer of `partition` (see [`PartitionWriter::open`]).
    pub fn writer(&self, partition: PartitionId, config: LogConfig) -> Result<PartitionWriter> {
        PartitionWriter::open(self.partition_dir(partition)?, config)
    }

    /// Opens a reader of `partition` from `from`, up to `until` (see [`LogReader::open`]).
    pub fn reader(&self, partition: PartitionId, from: Offset, until: Option<Offset>) -> Result<LogReader> {
        LogReader::open(self.partition_dir(partition)?, partition, from, until)
    }

    /// The end offset (offset after the last valid record) of every partition.
    pub fn end_offsets(&self) -> Result<Vec<Offset>> {
        (0..self.partitions).map(|p| partition::end_offset(&self.partition_dir(p)?)).collect()
    }

    /// Start, end, segments and bytes of every partition.
    pub fn describe(&self) -> Result<Vec<PartitionInfo>> {
        (0..self.partitions).map(|p| partition::info(&self.partition_dir(p)?, p)).collect()
    }
}

/// A topic as a pipeline source: one source partition per topic partition,
/// record offsets, read by [`LogReader`]s.
#[derive(Clone, Debug)]
pub struct LogSource {
    topic: Topic,
}

impl LogSource {
    /// The source of the existing topic `name` under `log_dir`.
    pub fn open(log_dir: &Path, name: &str) -> Result<LogSource> {
        Ok(LogSource { topic: Topic::open(log_dir, name)? })
    }

    /// The source of an opened topic.
    pub fn new(topic: Topic) -> LogSource {
        LogSource { topic }
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
        Ok(Box::new(self.topic.reader(partition, from, until)?))
    }

    fn fingerprint(&self) -> Result<serde_json::Value> {
        Ok(serde_json::json!({
            "topic": self.topic.name(),
            "partitions": self.topic.partition_count(),
        }))
    }
}

#[cfg(test)]
mod tests {
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
        for bad in ["", "../x", "a/b", ".hidden"] {
            assert!(Topic::create(dir.path(), bad, 1).is_err(), "{bad:?} accepted");
        }
        assert!(Topic::create(dir.path(), "none", 0).unwrap_err().to_string().contains("partitions"));
        assert!(Topic::open(dir.path(), "missing").unwrap_err().to_string().contains("no topic"));
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
        assert_eq!(source.fingerprint()?, serde_json::json!({"topic": "s", "partitions": 2}));
        let mut chunk = weir_core::record::Chunk::default();
        source.open(1, 1, Some(2))?.read(1 << 20, &mut chunk)?;
        assert_eq!(chunk.records().collect::<Vec<_>>(), vec![(1, &b"b"[..])]);
        Ok(())
    }
}
