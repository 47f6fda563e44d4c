//! Replays the fuzz corpus (`fuzz/corpus/<target>/*`) through the same entry
//! functions the fuzz targets call, so every saved input (seeds and past
//! crashes) stays a regression test of a plain `cargo test`, no nightly needed.

use std::path::Path;

fn replay(target: &str, run: impl Fn(&[u8])) -> anyhow::Result<usize> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        let data = std::fs::read(&path)?;
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&data)));
        assert!(result.is_ok(), "{target}: {} panics", path.display());
        n += 1;
    }
    assert!(n > 0, "no corpus in {}", dir.display());
    Ok(n)
}

#[test]
fn decode_json_corpus() -> anyhow::Result<()> {
    replay("decode_json", weir_operators::fuzzing::decode_json)?;
    Ok(())
}

#[test]
fn log_segment_corpus() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    replay("log_segment", |data| weir_connectors::fuzzing::log_segment(&dir.path().join("p"), data))?;
    Ok(())
}

#[test]
fn checkpoint_files_corpus() -> anyhow::Result<()> {
    replay("checkpoint_files", weir_core::fuzzing::checkpoint_files)?;
    Ok(())
}
