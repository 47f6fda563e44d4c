//! Real servers for the tests: each starts on 127.0.0.1, on a free port, with
//! a configuration and data directory of its own, and is killed on drop.
//! The binaries come from `scripts/tools.sh` (which `scripts/test.sh` runs):
//! `WEIR_TANSU` / `WEIR_MOSQUITTO`, or their default install paths.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_listening(port: u16, child: &mut Child, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited with {status} before listening on port {port}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("{what} did not listen on 127.0.0.1:{port} within 20 s")
}

fn tool(var: &str, default: PathBuf) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or(default);
    if !path.exists() {
        bail!("{} not found: run `bash scripts/tools.sh` (or `bash scripts/test.sh`), or set {var}", path.display());
    }
    Ok(path)
}

/// The tansu binary (a Kafka-protocol broker).
pub fn tansu_binary() -> anyhow::Result<PathBuf> {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| "/root".into());
    let tools = std::env::var_os("WEIR_TOOLS").map(PathBuf::from).unwrap_or_else(|| home.join(".cache/weir-tools"));
    tool("WEIR_TANSU", tools.join("tansu-0.6/bin/tansu"))
}

/// A tansu broker with sqlite storage in a directory of its own.
pub struct Tansu {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
    binary: PathBuf,
}

impl Tansu {
    /// Starts a broker on a free port.
    pub fn start() -> anyhow::Result<Self> {
        let mut t = Tansu { child: None, port: free_port()?, dir: tempfile::tempdir()?, binary: tansu_binary()? };
        t.resume()?;
        Ok(t)
    }

    /// `127.0.0.1:PORT`.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Its data directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the broker (its data stays).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and data.
    pub fn resume(&mut self) -> anyhow::Result<()> {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::File::create(self.dir.path().join("tansu.log"))?;
        let mut child = Command::new(&self.binary)
            .current_dir(self.dir.path())
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        wait_listening(self.port, &mut child, "tansu")?;
        self.child = Some(child);
        Ok(())
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.stop();
    }
}
