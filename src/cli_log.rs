//! The embedded-log commands of the `weir` CLI: create a topic, produce JSON
//! lines into it (partitioned by a key field), and describe its partitions.
//! `main.rs` parses the arguments; these functions do the work.

use std::fmt;
use std::io::BufRead;
use std::path::Path;

use anyhow::Context;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use weir::connectors::log::{LogConfig, Producer, Topic};

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

/// Only `\n` ends a line: a `\r` before it stays in the payload (lossless).
fn trim_line_end(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\n").unwrap_or(line)
}

/// The key of a JSON-object line: the string or number at top-level `field`.
/// Only the key's value is materialized; the rest of the object is skipped.
fn key_of(line: &[u8], field: &str) -> Option<Vec<u8>> {
    let mut de = serde_json::Deserializer::from_slice(line);
    let key = KeyOf { field }.deserialize(&mut de).ok()?;
    de.end().ok()?;
    key
}

/// Deserializes a JSON object to the key at `field`, if usable.
struct KeyOf<'f> {
    field: &'f str,
}

impl<'de> DeserializeSeed<'de> for KeyOf<'_> {
    type Value = Option<Vec<u8>>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for KeyOf<'_> {
    type Value = Option<Vec<u8>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut key = None;
        while let Some(is_field) = map.next_key_seed(FieldIs(self.field))? {
            if is_field && key.is_none() {
                key = map.next_value::<KeyValue>()?.0;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(key)
    }
}

/// Deserializes an object key to whether it is the key field (without allocating).
struct FieldIs<'f>(&'f str);

impl<'de> DeserializeSeed<'de> for FieldIs<'_> {
    type Value = bool;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for FieldIs<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        Ok(v == self.0)
    }
}

/// A key value: the bytes of a string or of a number's JSON text; `None` otherwise.
struct KeyValue(Option<Vec<u8>>);

impl<'de> de::Deserialize<'de> for KeyValue {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(KeyValueVisitor)
    }
}

struct KeyValueVisitor;

impl<'de> Visitor<'de> for KeyValueVisitor {
    type Value = KeyValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<KeyValue, E> {
        Ok(KeyValue(Some(v.as_bytes().to_vec())))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<KeyValue, E> {
        Ok(KeyValue(Some(v.to_string().into_bytes())))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<KeyValue, E> {
        Ok(KeyValue(Some(v.to_string().into_bytes())))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<KeyValue, E> {
        Ok(KeyValue(serde_json::Number::from_f64(v).map(|n| n.to_string().into_bytes())))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<KeyValue, E> {
        Ok(KeyValue(None))
    }
    fn visit_unit<E: de::Error>(self) -> Result<KeyValue, E> {
        Ok(KeyValue(None))
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<KeyValue, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(KeyValue(None))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<KeyValue, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(KeyValue(None))
    }
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
