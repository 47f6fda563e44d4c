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

/// A server process of a test: its binary, port, directory and (while it
/// runs) child, killed on drop. Tansu and Mosquitto are this plus how they start.
struct Server {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    binary: PathBuf,
    name: &'static str,
}

impl Server {
    fn new(name: &'static str, binary: PathBuf) -> anyhow::Result<Self> {
        Ok(Server { child: None, port: free_port()?, dir: tempfile::tempdir()?, binary, name })
    }

    /// Starts the binary with `args` in the server's directory and waits until it listens.
    fn launch(&mut self, args: &[&std::ffi::OsStr], stderr: Stdio) -> anyhow::Result<()> {
        let mut child = Command::new(&self.binary)
            .current_dir(self.dir.path())
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        wait_listening(self.port, &mut child, self.name)?;
        self.child = Some(child);
        Ok(())
    }

    /// Stops it: with SIGTERM first when `graceful` (up to 10 s), then SIGKILL.
    fn stop(&mut self, graceful: bool) {
        let Some(mut c) = self.child.take() else { return };
        if graceful && let Ok(pid) = i32::try_from(c.id()) {
            // SAFETY: kill(2) on our own child's pid, not yet reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop(false);
    }
}

/// A tansu broker with sqlite storage in a directory of its own.
pub struct Tansu {
    server: Server,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl Tansu {
    /// Starts a broker on a free port.
    pub fn start() -> anyhow::Result<Self> {
        let server = Server::new("tansu", tansu_binary()?)?;
        let mut t = Tansu { port: server.port, server };
        t.resume()?;
        Ok(t)
    }

    /// `127.0.0.1:PORT`.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Its data directory.
    pub fn dir(&self) -> &Path {
        self.server.dir.path()
    }

    /// Kills the broker (its data stays).
    pub fn stop(&mut self) {
        self.server.stop(false);
    }

    /// Starts it again on the same port and data.
    pub fn resume(&mut self) -> anyhow::Result<()> {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::File::create(self.dir().join("tansu.log"))?;
        let args = ["broker", "--listener-url", &url, "--advertised-listener-url", &url];
        let mut all: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
        all.extend(["--storage-engine", "sqlite://tansu.db"].map(std::ffi::OsStr::new));
        self.server.launch(&all, Stdio::from(log))
    }
}

/// The mosquitto binary (an MQTT 5 broker).
pub fn mosquitto_binary() -> anyhow::Result<PathBuf> {
    let default = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| "/usr/sbin/mosquitto".into());
    tool("WEIR_MOSQUITTO", default)
}

/// A mosquitto broker with a config file and persistence in a directory of
/// its own: anonymous clients, no limit on queued messages
/// (`max_queued_messages 0`: its default 1000 silently drops QoS 1 messages for
/// a slow subscriber).
pub struct Mosquitto {
    server: Server,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl Mosquitto {
    /// Starts a broker on a free port.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with("")
    }

    /// Starts a broker on a free port with `extra` lines added to its config
    /// (e.g. `max_inflight_messages 1000`).
    pub fn start_with(extra: &str) -> anyhow::Result<Self> {
        let server = Server::new("mosquitto", mosquitto_binary()?)?;
        let (port, dir) = (server.port, server.dir.path().display().to_string());
        let config = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n\
             persistence true\npersistence_location {dir}/\nlog_dest file {dir}/mosquitto.log\n{extra}\n",
        );
        // Started as root, mosquitto switches to user `mosquitto`, which cannot
        // write to the test's directory.
        // SAFETY: geteuid(2) has no preconditions.
        let config = if unsafe { libc::geteuid() } == 0 { config + "user root\n" } else { config };
        std::fs::write(server.dir.path().join("mosquitto.conf"), config)?;
        let mut m = Mosquitto { port, server };
        m.resume()?;
        Ok(m)
    }

    /// `127.0.0.1:PORT`.
    pub fn broker(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Its config, persistence and log directory.
    pub fn dir(&self) -> &Path {
        self.server.dir.path()
    }

    /// Stops the broker with SIGTERM (it saves its persistent sessions and
    /// queued messages), then waits for it to exit.
    pub fn stop(&mut self) {
        self.server.stop(true);
    }

    /// Starts it again on the same port, config and persistence.
    pub fn resume(&mut self) -> anyhow::Result<()> {
        let conf = self.dir().join("mosquitto.conf");
        self.server.launch(&[std::ffi::OsStr::new("-c"), conf.as_os_str()], Stdio::null())
    }
}
