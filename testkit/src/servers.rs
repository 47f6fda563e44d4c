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

    /// Starts the binary with `args` in the server's directory and waits until
    /// it listens on its port and on `more_ports`.
    fn launch(&mut self, args: &[&std::ffi::OsStr], stderr: Stdio, more_ports: &[u16]) -> anyhow::Result<()> {
        let child = Command::new(&self.binary)
            .current_dir(self.dir.path())
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        // Kept before the waits: a failed wait kills it on drop.
        let child = self.child.insert(child);
        for &port in std::iter::once(&self.port).chain(more_ports) {
            wait_listening(port, child, self.name)?;
        }
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
        self.server.launch(&all, Stdio::from(log), &[])
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

/// Writes a mosquitto password file at `path` with one user, with
/// `mosquitto_passwd` (of the mosquitto package: beside the broker, in
/// /usr/bin, or on `PATH`).
pub fn mosquitto_password_file(path: &Path, user: &str, password: &str) -> anyhow::Result<()> {
    let broker = mosquitto_binary()?;
    let candidates = broker
        .parent()
        .map(|d| d.join("mosquitto_passwd"))
        .into_iter()
        .chain([PathBuf::from("/usr/bin/mosquitto_passwd"), PathBuf::from("/usr/sbin/mosquitto_passwd")]);
    let tool = candidates.into_iter().find(|p| p.exists()).unwrap_or_else(|| "mosquitto_passwd".into());
    // -b: the password from the command line (a test's, not a secret); -c: create.
    let out = Command::new(&tool)
        .args(["-b", "-c"])
        .arg(path)
        .args([user, password])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} (of the mosquitto package)", tool.display()))?;
    if !out.status.success() {
        bail!("{} failed: {}", tool.display(), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// A mosquitto broker with a config file and persistence in a directory of
/// its own: an anonymous listener on [`Mosquitto::port`], no limit on queued
/// messages (`max_queued_messages 0`: its default 1000 silently drops QoS 1
/// messages for a slow subscriber), and optionally a second listener with
/// settings of the test's own (TLS, passwords) on [`Mosquitto::second_port`].
pub struct Mosquitto {
    server: Server,
    /// Its anonymous plain listener's port on 127.0.0.1.
    pub port: u16,
    /// The port of the listener of [`Mosquitto::start_with_listener`].
    pub second_port: Option<u16>,
}

impl Mosquitto {
    /// Starts a broker on a free port.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with("")
    }

    /// Starts a broker on a free port with `extra` global lines added to its
    /// config (e.g. `max_inflight_messages 1000`).
    pub fn start_with(extra: &str) -> anyhow::Result<Self> {
        Self::start_config(extra, None)
    }

    /// Starts a broker with, beside its anonymous listener, a second listener
    /// on another free port configured by the `listener` lines, e.g.
    /// `cafile`/`certfile`/`keyfile` and `require_certificate true`, or
    /// `allow_anonymous false` and `password_file FILE`. Authentication is set
    /// per listener (`per_listener_settings true`), so the second listener
    /// needs its own `allow_anonymous` line to admit anonymous clients.
    pub fn start_with_listener(listener: &str) -> anyhow::Result<Self> {
        Self::start_config("", Some(listener))
    }

    fn start_config(extra: &str, listener: Option<&str>) -> anyhow::Result<Self> {
        let server = Server::new("mosquitto", mosquitto_binary()?)?;
        let (port, dir) = (server.port, server.dir.path().display().to_string());
        let second_port = match listener {
            Some(_) => Some(loop {
                // A released port can come back: not the first one again.
                let p = free_port()?;
                if p != port {
                    break p;
                }
            }),
            None => None,
        };
        let mut config = String::new();
        if listener.is_some() {
            // Must come before the listeners it applies to.
            config.push_str("per_listener_settings true\n");
        }
        config.push_str(&format!(
            "max_queued_messages 0\npersistence true\npersistence_location {dir}/\n\
             log_dest file {dir}/mosquitto.log\n{extra}\n",
        ));
        // Started as root, mosquitto switches to user `mosquitto`, which cannot
        // write to the test's directory.
        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            config.push_str("user root\n");
        }
        config.push_str(&format!("listener {port} 127.0.0.1\nallow_anonymous true\n"));
        if let (Some(second), Some(lines)) = (second_port, listener) {
            config.push_str(&format!("listener {second} 127.0.0.1\n{lines}\n"));
        }
        std::fs::write(server.dir.path().join("mosquitto.conf"), config)?;
        let mut m = Mosquitto { port, second_port, server };
        m.resume()?;
        Ok(m)
    }

    /// `127.0.0.1:PORT`.
    pub fn broker(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:PORT` of the second listener.
    pub fn second_broker(&self) -> Option<String> {
        self.second_port.map(|p| format!("127.0.0.1:{p}"))
    }

    /// Its config, persistence and log directory.
    pub fn dir(&self) -> &Path {
        self.server.dir.path()
    }

    /// Its log so far (`mosquitto.log`), for assertions and failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir().join("mosquitto.log")).unwrap_or_default()
    }

    /// Stops the broker with SIGTERM (it saves its persistent sessions and
    /// queued messages), then waits for it to exit.
    pub fn stop(&mut self) {
        self.server.stop(true);
    }

    /// Starts it again on the same ports, config and persistence.
    pub fn resume(&mut self) -> anyhow::Result<()> {
        let conf = self.dir().join("mosquitto.conf");
        let more: Vec<u16> = self.second_port.into_iter().collect();
        // Config errors go to stderr (the log file may not be open yet).
        let stderr_path = self.dir().join("mosquitto.stderr");
        let stderr = std::fs::File::create(&stderr_path)?;
        self.server.launch(&[std::ffi::OsStr::new("-c"), conf.as_os_str()], Stdio::from(stderr), &more).with_context(
            || {
                let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                format!("mosquitto's stderr: {stderr}; its log: {}", self.log())
            },
        )
    }
}
