//! The embedded-log commands of the `weir` CLI: create a topic, produce JSON
//! lines into it (partitioned by a key field), and describe its partitions.
//! `main.rs` parses the arguments; these functions do the work.

use std::fmt;
use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use weir::connectors::json_key::json_key as key_of;
use weir::connectors::log::{LogConfig, LogReader, MAX_RECORD_BYTES, Producer, Topic};
use weir::core::record::Chunk;
use weir::core::source::{PartitionReader, ReadStatus};

/// What [`produce`] stored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProduceStats {
    /// Records appended (one per line).
    pub records: u64,
    /// Of those, records without a usable key (not a JSON object, or no string or
    /// number at the key field), spread round-robin.
    pub unkeyed: u64,
    /// Of those, blank lines (stored; a pipeline dead-letters them).
    pub blank: u64,
    /// Payload bytes appended.
    pub bytes: u64,
    /// Records appended per partition.
    pub per_partition: Vec<u64>,
}

impl fmt::Display for ProduceStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} records ({} bytes, {} without a key, {} blank); per partition: {:?}",
            self.records, self.bytes, self.unkeyed, self.blank, self.per_partition
        )
    }
}

/// `weir topic create`: creates topic `name` with `partitions` partitions under `log_dir`.
pub fn topic_create(log_dir: &Path, name: &str, partitions: u32) -> anyhow::Result<()> {
    Topic::create(log_dir, name, partitions)
        .with_context(|| format!("creating topic `{name}` in {}", log_dir.display()))?;
    Ok(())
}

/// `weir produce`: appends every line of `input` (without its line
/// ending) to topic `name`. The partition of a line is that of its key: the
/// value of the top-level field `key_field` of the line's JSON object, a string
/// (its UTF-8 text) or a number (its JSON text, e.g. `42`, `1.5`). Lines that are
/// not JSON objects or have no such key are stored too, round-robin. Appends are
/// batched per partition (one append per MiB) and fsynced per batch.
pub fn produce(log_dir: &Path, name: &str, key_field: &str, mut input: impl BufRead) -> anyhow::Result<ProduceStats> {
    let topic = Topic::open(log_dir, name)?;
    let mut producer = Producer::new(&topic, LogConfig::default())?;
    let mut stats =
        ProduceStats { per_partition: vec![0; topic.partition_count() as usize], ..ProduceStats::default() };
    let mut line = Vec::new();
    for number in 1u64.. {
        line.clear();
        let read = input.read_until(b'\n', &mut line).with_context(|| format!("reading input line {number}"))?;
        if read == 0 {
            break;
        }
        let record = trim_line_end(&line);
        // Blank lines are stored too: the pipeline dead-letters them, nothing vanishes.
        stats.blank += u64::from(record.iter().all(u8::is_ascii_whitespace));
        let key = key_of(record, key_field);
        stats.unkeyed += u64::from(key.is_none());
        let partition = producer
            .send(key.as_deref(), record)
            .with_context(|| format!("producing input line {number} to topic `{name}`"))?;
        stats.records += 1;
        stats.bytes += record.len() as u64;
        stats.per_partition[partition as usize] += 1;
    }
    producer.flush().with_context(|| format!("producing to topic `{name}`"))?;
    Ok(stats)
}

/// `weir topic describe`: a table of the partitions of topic `name`: start
/// offset, end offset, segment files and bytes.
pub fn topic_describe(log_dir: &Path, name: &str) -> anyhow::Result<String> {
    let topic = Topic::open(log_dir, name)?;
    let infos = topic.describe().with_context(|| format!("describing topic `{name}`"))?;
    let header = ["partition", "start", "end", "segments", "bytes"];
    let rows: Vec<[String; 5]> = infos
        .iter()
        .map(|i| [u64::from(i.partition), i.start, i.end, i.segments as u64, i.bytes].map(|v| v.to_string()))
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = format!(
        "topic {name}: {} partitions, {} records, in {}\n",
        topic.partition_count(),
        infos.iter().map(|i| i.end - i.start).sum::<u64>(),
        topic.dir().display()
    );
    let header = header.map(str::to_owned);
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row.iter().zip(widths).map(|(cell, w)| format!("{cell:>w$}")).collect();
        out.push_str(&cells.join("  "));
        out.push('\n');
    }
    Ok(out)
}

/// What `weir consume` reads: which partitions, from where, and how it prints.
#[derive(Clone, Debug, Default)]
pub struct ConsumeOptions {
    /// Only this partition (default: all, in partition order).
    pub partition: Option<u32>,
    /// First offset of every partition read (default 0).
    pub from: Option<u64>,
    /// Keep waiting for new records instead of stopping at the end offsets the
    /// partitions had at start.
    pub follow: bool,
    /// Prefix each record with `PARTITION\tOFFSET\t`.
    pub with_meta: bool,
}

/// How long `--follow` sleeps when no partition has new records.
const FOLLOW_POLL: Duration = Duration::from_millis(50);

/// `weir consume`: writes the records of topic `name` to `out`, each payload
/// exactly as stored followed by `\n` (with `with_meta`, after `P\tOFFSET\t`).
/// Without `follow` it reads every partition (one after the other) up to the
/// end offset it had at start and returns the number of records written; with
/// `follow` it interleaves the partitions and waits for new records until
/// `stop` is set.
pub fn consume(
    log_dir: &Path,
    name: &str,
    options: &ConsumeOptions,
    out: &mut impl Write,
    stop: &AtomicBool,
) -> anyhow::Result<u64> {
    let topic = Topic::open(log_dir, name)?;
    let partitions: Vec<u32> = match options.partition {
        Some(p) if p >= topic.partition_count() => {
            bail!("topic `{name}` has partitions 0..{}, not {p}", topic.partition_count())
        }
        Some(p) => vec![p],
        None => (0..topic.partition_count()).collect(),
    };
    let ends = topic.end_offsets()?;
    let from = options.from.unwrap_or(0);
    let mut readers = Vec::with_capacity(partitions.len());
    for &p in &partitions {
        let end = ends[p as usize];
        if from > end && !options.follow {
            bail!("partition {p} of topic `{name}` ends at offset {end}: --from {from} is beyond it");
        }
        let until = if options.follow { None } else { Some(end) };
        let reader = LogReader::open_in(
            topic.storage().clone(),
            topic.partition_dir(p)?,
            p,
            from.min(end),
            until,
            MAX_RECORD_BYTES as u64,
        )
        .with_context(|| format!("opening partition {p} of topic `{name}`"))?;
        readers.push(reader);
    }
    let mut chunk = Chunk::default();
    let mut written = 0u64;
    let mut skip_until = vec![from; readers.len()];
    let mut done = vec![false; readers.len()];
    while !stop.load(Ordering::Relaxed) && done.iter().any(|d| !d) {
        let mut progressed = false;
        for (i, reader) in readers.iter_mut().enumerate() {
            if done[i] {
                continue;
            }
            // Without --follow a partition is read to its end before the next one.
            loop {
                chunk.clear();
                match reader.read(1 << 20, &mut chunk)? {
                    ReadStatus::Data => {
                        progressed = true;
                        for (offset, payload) in chunk.records() {
                            if offset < skip_until[i] {
                                continue;
                            }
                            if options.with_meta {
                                write!(out, "{}\t{offset}\t", chunk.partition)?;
                            }
                            out.write_all(payload)?;
                            out.write_all(b"\n")?;
                            written += 1;
                        }
                        skip_until[i] = 0;
                        if options.follow {
                            break;
                        }
                    }
                    ReadStatus::Idle if options.follow => break,
                    ReadStatus::Idle | ReadStatus::End => {
                        done[i] = !options.follow;
                        break;
                    }
                }
            }
        }
        if options.follow && !progressed {
            out.flush()?;
            std::thread::sleep(FOLLOW_POLL);
        }
    }
    out.flush()?;
    Ok(written)
}

/// Only `\n` ends a line: a `\r` before it stays in the payload (lossless).
fn trim_line_end(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\n").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir::connectors::log::partition_for_key;
    use weir::core::record::Chunk;
    use weir::core::source::{PartitionReader, ReadStatus};

    #[test]
    fn keys_are_strings_or_numbers_at_the_top_level() {
        let k = |line: &str| key_of(line.as_bytes(), "device").map(|k| String::from_utf8_lossy(&k).into_owned());
        assert_eq!(k(r#"{"t":1,"device":"a\"b","x":[1,{"device":"no"}]}"#).as_deref(), Some("a\"b"));
        assert_eq!(k(r#"{"device":42}"#).as_deref(), Some("42"));
        assert_eq!(k(r#"{"device":-3}"#).as_deref(), Some("-3"));
        assert_eq!(k(r#"{"device":1.5}"#).as_deref(), Some("1.5"));
        assert_eq!(k(r#"{"nested":{"device":"x"}}"#), None);
        assert_eq!(k(r#"{"device":null}"#), None);
        assert_eq!(k(r#"{"device":["a"]}"#), None);
        assert_eq!(k(r#"{"device":"a"} trailing"#), None);
        assert_eq!(k(r#"["device","a"]"#), None);
        assert_eq!(k("not json"), None);
    }

    #[test]
    fn produce_then_describe() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        topic_create(dir.path(), "readings", 3)?;
        assert!(topic_create(dir.path(), "readings", 3).is_err());
        let input =
            "{\"device\":\"a\",\"t\":1}\n{\"device\":\"b\"}\r\n\n  \ngarbage\n{\"t\":2}\n{\"device\":\"a\",\"t\":3}";
        let stats = produce(dir.path(), "readings", "device", input.as_bytes())?;
        assert_eq!((stats.records, stats.unkeyed, stats.blank), (7, 4, 2));
        assert_eq!(stats.per_partition.iter().sum::<u64>(), 7);

        let topic = Topic::open(dir.path(), "readings")?;
        let pa = partition_for_key(b"a", 3);
        let mut reader = topic.reader(pa, 0, None)?;
        let mut chunk = Chunk::default();
        assert_eq!(reader.read(1 << 20, &mut chunk)?, ReadStatus::Data);
        let a: Vec<&[u8]> = chunk.records().map(|(_, r)| r).filter(|r| r.starts_with(b"{\"device\":\"a\"")).collect();
        assert_eq!(a, vec![&b"{\"device\":\"a\",\"t\":1}"[..], b"{\"device\":\"a\",\"t\":3}"]);
        let all: u64 = topic.end_offsets()?.iter().sum();
        assert_eq!(all, 7);

        let table = topic_describe(dir.path(), "readings")?;
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("topic readings: 3 partitions, 7 records"), "{table}");
        assert_eq!(lines[1].split_whitespace().collect::<Vec<_>>(), ["partition", "start", "end", "segments", "bytes"]);
        assert_eq!(lines.len(), 5, "{table}");
        let row = lines[2 + pa as usize].split_whitespace().collect::<Vec<_>>();
        assert_eq!(row[..4], [pa.to_string().as_str(), "0", &stats.per_partition[pa as usize].to_string(), "1"]);
        assert!(produce(dir.path(), "missing", "device", &b""[..]).is_err());
        Ok(())
    }
}
