//! Bad input never crashes a pipeline and never vanishes: every kind of bad
//! line, read through `LinesFile` and decoded as a sensor `Reading`, becomes a
//! dead letter with a precise reason, and the edge cases that are valid JSON
//! readings (CRLF, a last line without `\n`, any `ts` that fits in i64) stay valid.

mod support;

use std::io::Write;
use std::path::Path;

use weir::prelude::*;
use weir_core::record::{Chunk, Rec};
use weir_core::source::{ReadStatus, Source};
use weir_operators::decode::decode_chunk;
use weir_testkit::sensor::Reading;

/// Reads `path` through `LinesFile` and decodes every record, checking the read
/// buffer never exceeds `max_bytes` (what bounds memory).
fn decode_file(src: &LinesFile, max_bytes: usize) -> anyhow::Result<(Vec<Rec<Reading>>, Vec<DeadLetter>)> {
    let (mut ok, mut dead) = (Vec::new(), Vec::new());
    for spec in src.partitions()? {
        let mut reader = src.open(spec.id, spec.start, None)?;
        let mut chunk = Chunk::default();
        loop {
            chunk.clear();
            let status = reader.read(256 << 10, &mut chunk)?;
            assert!(chunk.data.capacity() <= max_bytes, "read buffer of {} bytes", chunk.data.capacity());
            decode_chunk(&Json, &chunk, src.name(), |r| ok.push(r), |d| dead.push(d));
            if status == ReadStatus::End {
                break;
            }
        }
    }
    Ok((ok, dead))
}

fn decode_text(text: &[u8]) -> anyhow::Result<(Vec<Rec<Reading>>, Vec<DeadLetter>)> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("in.jsonl");
    std::fs::write(&path, text)?;
    decode_file(&LinesFile::open(&path)?, 64 << 20)
}

/// The dead-letter reason of a one-line file.
fn reason(line: &[u8]) -> anyhow::Result<String> {
    let mut text = line.to_vec();
    text.push(b'\n');
    let (ok, dead) = decode_text(&text)?;
    assert!(ok.is_empty(), "{:?} decoded", String::from_utf8_lossy(line));
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!((d.offset, d.stage.as_str(), d.payload.as_slice()), (0, "decode", line));
    assert_eq!((d.payload_truncated, d.payload_length), (false, line.len() as u64));
    Ok(d.error.clone())
}

#[test]
fn each_bad_line_is_a_dead_letter_with_a_precise_reason() -> anyhow::Result<()> {
    let deep = format!("{{\"device\":{}{},\"ts\":1,\"temp\":1.5}}", "[".repeat(200), "]".repeat(200));
    let deep_array = format!("{}{}", "[".repeat(300), "]".repeat(300));
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            b"{\"device\":\"d\",\xff\"ts\":1,\"temp\":1.5}".to_vec(),
            "record is not valid UTF-8: invalid byte at offset 14",
        ),
        (
            b"{\"device\":\"d\xffe\",\"ts\":1,\"temp\":1.5}".to_vec(),
            "record is not valid UTF-8: invalid byte at offset 12",
        ),
        (
            b"{\"device\":\"d\",\"ts\":1,\"temp\":1.5,\"note\":\"\xc3\"}".to_vec(),
            "record is not valid UTF-8: invalid byte at offset 40",
        ),
        (deep.into_bytes(), "invalid type: sequence, expected a string at line 1 column 10"),
        (deep_array.into_bytes(), "expected a JSON object, found an array"),
        (b"{\"device\":\"d\",\"ts\":1,\"temp\":NaN}".to_vec(), "expected value at line 1 column 29"),
        (b"{\"device\":\"d\",\"ts\":1,\"temp\":Infinity}".to_vec(), "expected value at line 1 column 29"),
        (b"{\"device\":\"d\",\"ts\":1,\"temp\":-Infinity}".to_vec(), "invalid number at line 1 column 30"),
        (b"{\"device\":\"d\",\"ts\":1,\"temp\":1e400}".to_vec(), "number out of range at line 1 column 33"),
        (
            b"{\"device\":\"d\",\"ts\":\"1\",\"temp\":1.5}".to_vec(),
            "invalid type: string \"1\", expected i64 at line 1 column 22",
        ),
        (
            b"{\"device\":7,\"ts\":1,\"temp\":1.5}".to_vec(),
            "invalid type: integer `7`, expected a string at line 1 column 11",
        ),
        (
            b"{\"device\":\"d\",\"ts\":1,\"temp\":\"hot\"}".to_vec(),
            "invalid type: string \"hot\", expected f64 at line 1 column 33",
        ),
        (
            b"{\"device\":\"d\",\"ts\":1.5,\"temp\":1.5}".to_vec(),
            "invalid type: floating point `1.5`, expected i64 at line 1 column 22",
        ),
        (b"{\"device\":\"d\",\"ts\":1}".to_vec(), "missing field `temp` at line 1 column 21"),
        (b"{}".to_vec(), "missing field `device` at line 1 column 2"),
        (b"{\"device\":\"d\",\"ts\":1,\"ts\":2,\"temp\":1.5}".to_vec(), "duplicate field `ts` at line 1 column 25"),
        (
            b"{\"device\":\"d\",\"ts\":9223372036854775808,\"temp\":1.5}".to_vec(),
            "invalid value: integer `9223372036854775808`, expected i64 at line 1 column 38",
        ),
        (
            b"{\"device\":\"d\",\"ts\":-9223372036854775809,\"temp\":1.5}".to_vec(),
            "invalid type: floating point `-9.223372036854776e+18`, expected i64 at line 1 column 39",
        ),
        (b"[\"d\",1,1.5]".to_vec(), "expected a JSON object, found an array"),
        (b"42".to_vec(), "expected a JSON object, found a number"),
        (b"\"reading\"".to_vec(), "expected a JSON object, found a string"),
        (b"null".to_vec(), "expected a JSON object, found null"),
        (b"true".to_vec(), "expected a JSON object, found a boolean"),
        (b"".to_vec(), "empty record"),
        (b"   \r".to_vec(), "empty record (only whitespace)"),
        (b"{\"device\":\"d\",\"ts\":".to_vec(), "EOF while parsing a value at line 1 column 19"),
        (b"#corrupt# dev-1 17 ?? temp=1.0".to_vec(), "expected value at line 1 column 1"),
    ];
    let mut wrong = Vec::new();
    for (line, expected) in &cases {
        let got = reason(line)?;
        if got != *expected {
            wrong.push(format!("{:?}: expected {expected:?}, got {got:?}", String::from_utf8_lossy(line)));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    Ok(())
}

/// Nesting never overflows the stack: values a type decodes stop at serde_json's
/// recursion limit (128 levels); values it ignores are skipped without recursion.
#[test]
fn deep_nesting_is_bounded() -> anyhow::Result<()> {
    let nested =
        |n: usize| format!("{{\"device\":\"d\",\"ts\":1,\"temp\":1.5,\"x\":{}{}}}", "[".repeat(n), "]".repeat(n));
    let value: Result<serde_json::Value, String> = Format::decode(&Json, nested(200).as_bytes());
    assert_eq!(value.err().as_deref(), Some("recursion limit exceeded at line 1 column 163"));
    let (ok, dead) = decode_text(format!("{}\n", nested(100_000)).as_bytes())?;
    assert_eq!((ok.len(), dead.len()), (1, 0));
    Ok(())
}

#[test]
fn edge_cases_that_are_valid_stay_valid() -> anyhow::Result<()> {
    let mut text = Vec::new();
    for ts in [i64::MIN, -1, 0, -86_400_000 * 365 * 30, 1_700_000_000_000, i64::MAX] {
        writeln!(text, "{{\"device\":\"d\",\"ts\":{ts},\"temp\":1.5}}")?;
    }
    text.extend_from_slice(b"{\"device\":\"crlf\",\"ts\":7,\"temp\":-0.5}\r\n");
    text.extend_from_slice(b"  {\"temp\":2,\"ts\":8,\"device\":\"spaces and order\",\"extra\":[1,{\"a\":null}]}  \n");
    text.extend_from_slice(b"{\"device\":\"last\",\"ts\":9,\"temp\":3.25}");
    let (ok, dead) = decode_text(&text)?;
    assert!(dead.is_empty(), "{:?}", dead.iter().map(|d| &d.error).collect::<Vec<_>>());
    let ts: Vec<i64> = ok.iter().map(|r| r.value.ts).collect();
    assert_eq!(ts, vec![i64::MIN, -1, 0, -946_080_000_000, 1_700_000_000_000, i64::MAX, 7, 8, 9]);
    let devices: Vec<&str> = ok[6..].iter().map(|r| r.value.device.as_str()).collect();
    assert_eq!(devices, vec!["crlf", "spaces and order", "last"]);
    assert_eq!(ok[8].value.temp, 3.25);
    Ok(())
}

/// A 100 MB line is a dead letter holding its first KiB and its length; the
/// reader's buffer stays at about max_record_bytes (16 MiB) meanwhile.
#[test]
fn a_100_mb_line_is_a_truncated_dead_letter_and_memory_stays_bounded() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("in.jsonl");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
    file.write_all(b"{\"device\":\"a\",\"ts\":1,\"temp\":1.5}\n{\"device\":\"")?;
    let block = vec![b'x'; 1 << 20];
    for _ in 0..100 {
        file.write_all(&block)?;
    }
    file.write_all(b"\",\"ts\":2,\"temp\":2.5}\n{\"device\":\"b\",\"ts\":3,\"temp\":3.5}\n")?;
    drop(file);
    let long = 11 + (100 << 20) + 20;
    let src = LinesFile::open(&path)?;
    let (ok, dead) = decode_file(&src, 2 * ((16 << 20) + 1) + 2048)?;
    assert_eq!(ok.iter().map(|r| r.value.ts).collect::<Vec<_>>(), vec![1, 3]);
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(d.error, format!("record of {long} bytes exceeds max_record_bytes (16777216)"));
    assert_eq!((d.offset, d.payload_truncated, d.payload_length, d.payload.len()), (33, true, long as u64, 1024));
    assert!(d.payload.starts_with(b"{\"device\":\"xxx"));
    assert_eq!(src.record_at(0, 33)?.map(|r| r.len()), Some(1024));
    Ok(())
}

/// Through a whole pipeline: the dead-letter files carry `payload_truncated` and
/// `payload_length`, and bad lines neither stop the run nor vanish.
#[test]
fn dead_letter_files_say_what_was_truncated() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("in.jsonl");
    let mut text = b"{\"device\":\"a\",\"ts\":1,\"temp\":1.5}\n\n".to_vec();
    text.extend_from_slice(format!("{{\"device\":\"{}\",\"ts\":2,\"temp\":2.5}}\n", "y".repeat(5000)).as_bytes());
    text.extend_from_slice(b"{\"device\":\"b\",\"ts\":3,\"temp\":3.5}");
    std::fs::write(&input, &text)?;
    let (out, dlq) = (dir.path().join("out"), dir.path().join("dlq"));
    run(&input, &out, &dlq, dir.path())?;
    let mut dead = support::read_dead_letters(&dlq)?;
    dead.sort_by_key(|d| d["offset"].as_u64());
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert_eq!(dead[0]["error"], "empty record");
    assert_eq!((dead[0]["payload_truncated"].as_bool(), dead[0]["payload_length"].as_u64()), (Some(false), Some(0)));
    let d = &dead[1];
    assert_eq!(d["error"], "record of 5031 bytes exceeds max_record_bytes (1000)");
    let summary = (d["offset"].as_u64(), d["payload_truncated"].as_bool(), d["payload_length"].as_u64());
    assert_eq!(summary, (Some(34), Some(true), Some(5031)));
    assert_eq!(d["payload"].as_str().map(str::len), Some(1024));
    let rows = support::read_rows(&out)?;
    assert_eq!(rows.values().map(|r| r.count).sum::<i64>(), 2);
    Ok(())
}

fn run(input: &Path, out: &Path, dlq: &Path, state: &Path) -> weir::Result<RunSummary> {
    let (input, out, dlq) = (input.to_path_buf(), out.to_path_buf(), dlq.to_path_buf());
    Pipeline::new("bad-input").workers(1).state(state.join("state")).epoch_records(2, 1).run(move |p| {
        weir_testkit::sensor::aggregate(
            p.source(LinesFile::open(&input)?.with_max_record_bytes(1000)?)?,
            Parquet::dir(&out),
        )?;
        p.dead_letters().sink(DeadLetters::dir(&dlq))
    })
}
