//! Finding the binary of one of the root package's examples, so that a test
//! can spawn it (and kill it) like any program. `cargo build --examples`
//! writes them to `target/<profile>/examples/<name>`, next to the `deps/`
//! directory holding the test executables, and so does a plain `cargo test`;
//! `cargo test --all-targets` does not (it builds each example as a test
//! harness under a hashed name), so the test script builds them first.
//!
//! ```no_run
//! let out = weir_testkit::example::command("sensor_aggregation")?.arg("--help").output()?;
//! # Ok::<(), anyhow::Error>(())
//! ```

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};

/// The binary of example `name` of the profile the running test was built
/// with. An error saying how to build it if it is missing. `cargo test`
/// neither builds nor rebuilds it: build it with `cargo build --examples`
/// (as `scripts/test.sh` does) after changing its code.
pub fn path(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the running test executable")?;
    // `target/<profile>/deps/<test>-<hash>` -> `target/<profile>/examples/<name>`.
    let Some(profile_dir) = exe.parent().and_then(|deps| deps.parent()) else {
        bail!("{} is not in a target/<profile>/deps/ directory", exe.display());
    };
    let bin = profile_dir.join("examples").join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !bin.is_file() {
        let release = if profile_dir.ends_with("release") { " --release" } else { "" };
        bail!(
            "the example binary {} is missing: build it with `cargo build{release} --example {name}` (or run the \
             whole suite with `bash scripts/test.sh`, which builds the examples first)",
            bin.display()
        );
    }
    Ok(bin)
}

/// A [`Command`] running example `name` (see [`path`]).
pub fn command(name: &str) -> anyhow::Result<Command> {
    Ok(Command::new(path(name)?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_missing_example_is_an_error_saying_how_to_build_it() {
        let err = super::path("no_such_example").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("examples/no_such_example is missing"), "{err}");
        assert!(err.contains("--example no_such_example") && err.contains("scripts/test.sh"), "{err}");
    }
}
