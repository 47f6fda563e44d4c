//! Kill-and-restart: the sensor pipeline is killed with SIGKILL at random
//! moments and started again (with changing worker counts) until it
//! completes; the final output and dead letters must equal the reference
//! exactly: every row once, nothing lost. A run after completion changes nothing.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use weir::sensor::{SplitMix, generate, reference};

fn spawn(dir: &Path, workers: usize) -> anyhow::Result<Child> {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("sensor")
        .args(["--input", "in.jsonl", "--output", "out", "--dead-letter", "dlq", "--state", "state"])
        .args(["--workers", &workers.to_string()])
        .env("WEIR_EPOCH_RECORDS", "1500")
        .env("RUST_LOG", "error")
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning weir sensor")
}

fn wait(child: Child) -> anyhow::Result<()> {
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("run failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

#[test]
fn killed_at_random_moments_output_is_exact() -> anyhow::Result<()> {
    let mut input = Vec::new();
    generate(120_000, 11, 500, &mut input)?;
    let (expected, malformed) = reference(&input);

    // How long an undisturbed run takes here, to spread kills over it.
    let base = tempfile::tempdir()?;
    std::fs::write(base.path().join("in.jsonl"), &input)?;
    let started = Instant::now();
    wait(spawn(base.path(), 2)?)?;
    let full = started.elapsed();
    support::compare(&expected, &support::read_rows(&base.path().join("out"))?)?;

    let mut rng = SplitMix::new(7);
    for scenario in 0..4 {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("in.jsonl"), &input)?;
        let mut kills = 0;
        let mut committed_before_kill = 0;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let workers = 1 + rng.below(3) as usize;
            let mut child = spawn(dir.path(), workers)?;
            // Kill the first few runs at a random moment; let the last one finish.
            if kills < 3 && attempts < 8 {
                let delay = Duration::from_micros(rng.below(full.as_micros() as u64 + 1));
                let deadline = Instant::now() + delay;
                let mut exited = None;
                while Instant::now() < deadline {
                    if let Some(status) = child.try_wait()? {
                        exited = Some(status);
                        break;
                    }
                    std::thread::yield_now();
                }
                match exited {
                    Some(status) if status.success() => break,
                    Some(_) => {
                        let out = child.wait_with_output()?;
                        bail!("scenario {scenario}: run failed: {}", String::from_utf8_lossy(&out.stderr));
                    }
                    None => {
                        child.kill()?;
                        child.wait()?;
                        kills += 1;
                        committed_before_kill += usize::from(has_manifest(&dir.path().join("state")));
                    }
                }
            } else {
                wait(child).with_context(|| format!("scenario {scenario}, final run"))?;
                break;
            }
        }
        eprintln!("scenario {scenario}: {kills} kills, {committed_before_kill} after a commit");
        let got = support::read_rows(&dir.path().join("out"))?;
        support::compare(&expected, &got).with_context(|| format!("scenario {scenario} after {kills} kills"))?;
        let dead = support::read_dead_letters(&dir.path().join("dlq"))?;
        let mut offsets: Vec<u64> = dead.iter().filter_map(|d| d["offset"].as_u64()).collect();
        offsets.sort_unstable();
        offsets.dedup();
        assert_eq!(dead.len() as u64, malformed, "scenario {scenario}: dead letters");
        assert_eq!(offsets.len() as u64, malformed, "scenario {scenario}: duplicate dead letters");

        // Run again after completion: nothing changes.
        let before =
            (support::visible_files(&dir.path().join("out"))?, support::visible_files(&dir.path().join("dlq"))?);
        wait(spawn(dir.path(), 2)?)?;
        let after =
            (support::visible_files(&dir.path().join("out"))?, support::visible_files(&dir.path().join("dlq"))?);
        assert_eq!(before, after, "scenario {scenario}: a completed run changed its output");
    }
    Ok(())
}

fn has_manifest(state: &Path) -> bool {
    std::fs::read_dir(state).map(|d| d.flatten().any(|e| e.path().join("MANIFEST").exists())).unwrap_or(false)
}
