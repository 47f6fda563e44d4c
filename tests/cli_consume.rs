//! `weir consume`: the records of a topic as lines, exactly as stored, with
//! and without partition and offset, from an offset, and `--follow`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use weir::connectors::log::{LogConfig, Topic};

fn weir() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weir"))
}

fn consume(dir: &std::path::Path, args: &[&str]) -> anyhow::Result<Vec<u8>> {
    let out = weir().arg("consume").arg("t").arg("--log-dir").arg(dir).args(args).output()?;
    anyhow::ensure!(out.status.success(), "weir consume {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(out.stdout)
}

#[test]
fn consume_prints_records_as_stored_and_stops_at_the_end() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let topic = Topic::create(dir.path(), "t", 2)?;
    topic.writer(0, LogConfig::default())?.append(&[b"{\"a\":1}", b"", b"bin\x00\xff\r"])?;
    topic.writer(1, LogConfig::default())?.append(&[b"x", b"y"])?;

    assert_eq!(consume(dir.path(), &[])?, b"{\"a\":1}\n\nbin\x00\xff\r\nx\ny\n");
    assert_eq!(
        consume(dir.path(), &["--with-meta"])?,
        b"0\t0\t{\"a\":1}\n0\t1\t\n0\t2\tbin\x00\xff\r\n1\t0\tx\n1\t1\ty\n"
    );
    assert_eq!(consume(dir.path(), &["--partition", "1", "--from", "1", "--with-meta"])?, b"1\t1\ty\n");
    assert_eq!(consume(dir.path(), &["--partition", "0", "--from", "3"])?, b"");

    let bad = weir().args(["consume", "t", "--partition", "2", "--log-dir"]).arg(dir.path()).output()?;
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("not 2"));
    let missing = weir().args(["consume", "nope", "--log-dir"]).arg(dir.path()).output()?;
    assert!(!missing.status.success() && String::from_utf8_lossy(&missing.stderr).contains("nope"));
    Ok(())
}

#[test]
fn consume_follow_prints_new_records() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let topic = Topic::create(dir.path(), "t", 1)?;
    let mut writer = topic.writer(0, LogConfig::default())?;
    writer.append(&[b"old"])?;
    let mut child =
        weir().args(["consume", "t", "--follow", "--log-dir"]).arg(dir.path()).stdout(Stdio::piped()).spawn()?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Append only once consume has printed what the topic held at its start.
    let first = rx.recv_timeout(Duration::from_secs(10))?;
    assert_eq!(first, "old");
    writer.append(&[b"new-1", b"new-2"])?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    while got.len() < 2 && Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            got.push(line);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(got, ["new-1", "new-2"]);
    Ok(())
}
