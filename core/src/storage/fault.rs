//! [`FaultFs`]: an in-memory [`Storage`] for crash and fault tests (a test
//! tool, not for production data).
//!
//! It keeps, for every file, its contents and its *durable* contents (as of
//! its last fsync), and for every directory its entries and its durable
//! entries (as of its last directory fsync: a create, rename or remove is not
//! durable until the parent directory is fsynced). [`FaultFs::crash`] returns
//! the image a restarted process sees: only what was made durable (a power
//! loss, like LazyFS for Jepsen), or everything (a process kill; what was not
//! made durable stays at risk of a later power loss), or a power loss in the
//! middle of write-back (every file at its current length, each page not
//! made durable holding either its new or its durable bytes: a torn
//! multi-page append, with a hole before pages that did reach the disk).
//! Appends, positional writes and truncations all change a file's contents,
//! which become durable at its next fsync. Every call is counted and traced
//! (positional reads and writes, appends and truncations too), so a test can
//! crash after any call ([`FaultFs::crash_after`]), fail chosen calls with
//! EIO, ENOSPC, EACCES or EROFS, and tear a write at a chosen byte
//! ([`FaultFs::inject`]). Tests run as root, where permissions
//! deny nothing: injected EACCES/EROFS is how a read-only directory is tested.
//!
//! A failed fsync poisons its file or directory the way Linux does: the data
//! stays visible but is never written back, and later fsyncs report success.
//! That is why an fsync error must be fatal and never retried. The poison
//! survives a [`Crash::KeepAll`] (the kernel outlives the process) and is
//! cleared by a [`Crash::DropUnsynced`] (a reboot).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::fmt;
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{DirEntry, Metadata, ReadAt, Storage, StorageFile, StorageLock};

type Ino = u64;
const ROOT: Ino = 0;

/// The page size of [`Crash::TornPages`]: the unit in which unsynced data
/// reaches the disk or not.
pub const PAGE: usize = 4096;

/// What a simulated crash keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Crash {
    /// Power loss: only what was fsynced (file data, directory entries) survives.
    DropUnsynced,
    /// Process kill: everything stays visible, but what was not fsynced is
    /// still not durable (a later `DropUnsynced` crash loses it).
    KeepAll,
    /// Power loss in the middle of write-back. Directory entries as with
    /// `DropUnsynced` (only what was fsynced), but every file keeps its current
    /// length, and each [`PAGE`] of it whose contents differ from its durable
    /// ones holds either the new bytes or the durable ones (zeros past the
    /// durable end), chosen by a hash of `seed`, the file and the page. An
    /// unsynced append of several pages can so leave a hole followed by pages
    /// that did reach the disk; bytes that were durable stay as they were. A
    /// file poisoned by a failed fsync keeps only its durable contents.
    TornPages {
        /// Picks which pages reach the disk (the same seed, the same choice).
        seed: u64,
    },
}

/// An injected error number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Errno {
    /// I/O error (a failing disk).
    Eio,
    /// No space left on device.
    Enospc,
    /// Permission denied.
    Eacces,
    /// Read-only file system.
    Erofs,
}

impl Errno {
    fn error(self) -> io::Error {
        #[cfg(unix)]
        {
            // The POSIX numbers, equal on Linux, the BSDs and macOS.
            io::Error::from_raw_os_error(match self {
                Errno::Eio => 5,
                Errno::Eacces => 13,
                Errno::Enospc => 28,
                Errno::Erofs => 30,
            })
        }
        #[cfg(not(unix))]
        {
            let kind = match self {
                Errno::Eio => io::ErrorKind::Other,
                Errno::Eacces => io::ErrorKind::PermissionDenied,
                Errno::Enospc => io::ErrorKind::StorageFull,
                Errno::Erofs => io::ErrorKind::ReadOnlyFilesystem,
            };
            io::Error::new(kind, format!("injected {self:?}"))
        }
    }
}

/// What an injected fault does to the call it hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The call fails with this error and has no effect.
    Error(Errno),
    /// A write (sequential or positional) keeps only its first `keep` bytes,
    /// then the storage crashes (this and every later call fail;
    /// [`FaultFs::crash`] gives the image). It applies to writes only: any
    /// other call it matches is unaffected.
    Torn {
        /// Bytes of the write that reach the file.
        keep: usize,
    },
}

/// The kinds of storage calls, as traced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// [`Storage::create`].
    Create,
    /// A sequential write to a created or appended file.
    Write,
    /// [`StorageFile::write_all_at`].
    WriteAt,
    /// [`StorageFile::set_len`].
    SetLen,
    /// [`StorageFile::sync`] and [`StorageFile::sync_data`].
    Sync,
    /// [`Storage::open_append`].
    OpenAppend,
    /// [`Storage::open`].
    Open,
    /// [`Storage::open_read_at`].
    OpenReadAt,
    /// [`ReadAt::read_at`].
    ReadAt,
    /// [`Storage::sync_dir`].
    SyncDir,
    /// [`Storage::rename`].
    Rename,
    /// [`Storage::remove_file`].
    RemoveFile,
    /// [`Storage::remove_dir_all`].
    RemoveDirAll,
    /// [`Storage::create_dir`].
    CreateDir,
    /// [`Storage::list`].
    List,
    /// [`Storage::metadata`] (and `exists`).
    Metadata,
    /// [`Storage::canonicalize`].
    Canonicalize,
    /// [`Storage::try_lock`].
    Lock,
}

impl OpKind {
    /// Whether the call changes the file system or what is durable (the calls
    /// after which a crash leaves a different image).
    pub fn mutates(self) -> bool {
        !matches!(
            self,
            OpKind::Open
                | OpKind::OpenAppend
                | OpKind::OpenReadAt
                | OpKind::ReadAt
                | OpKind::List
                | OpKind::Metadata
                | OpKind::Canonicalize
        )
    }
}

/// One traced storage call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    /// Its number, from 1.
    pub seq: u64,
    /// What it was.
    pub kind: OpKind,
    /// The (absolute) path.
    pub path: PathBuf,
    /// The destination of a rename.
    pub to: Option<PathBuf>,
    /// Whether it failed (injected fault or crash).
    pub failed: bool,
}

/// Which calls an injection hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ops {
    Any,
    Mutating,
    Kind(OpKind),
}

/// A fault to inject: which calls it hits and what it does.
///
/// ```
/// use weir_core::storage::{Errno, Fault, FaultFs, Inject, OpKind};
/// let fs = FaultFs::new();
/// // The second fsync of a file under /out fails with EIO.
/// fs.inject(Inject::op(OpKind::Sync, Fault::Error(Errno::Eio)).under("/out").nth(2));
/// // Everything that would change /ro fails with EROFS.
/// fs.inject(Inject::mutations(Fault::Error(Errno::Erofs)).under("/ro"));
/// ```
#[derive(Clone, Debug)]
pub struct Inject {
    call: Option<u64>,
    ops: Ops,
    under: Option<PathBuf>,
    skip: u64,
    times: Option<u64>,
    fault: Fault,
}

impl Inject {
    fn new(ops: Ops, fault: Fault) -> Inject {
        Inject { call: None, ops, under: None, skip: 0, times: None, fault }
    }

    /// Hits the `seq`-th storage call (counted from 1), whatever it is.
    pub fn call(seq: u64, fault: Fault) -> Inject {
        Inject { call: Some(seq), ..Inject::new(Ops::Any, fault) }
    }

    /// Hits calls of one kind.
    pub fn op(kind: OpKind, fault: Fault) -> Inject {
        Inject::new(Ops::Kind(kind), fault)
    }

    /// Hits every call that would change the file system ([`OpKind::mutates`]).
    pub fn mutations(fault: Fault) -> Inject {
        Inject::new(Ops::Mutating, fault)
    }

    /// Only calls on paths at or below `path`, an absolute path (a rename: either side).
    pub fn under(mut self, path: impl Into<PathBuf>) -> Inject {
        self.under = Some(path.into());
        self
    }

    /// Only the `n`-th matching call (from 1).
    pub fn nth(mut self, n: u64) -> Inject {
        self.skip = n.saturating_sub(1);
        self.times = Some(1);
        self
    }

    /// At most `n` matching calls (default: every one).
    pub fn times(mut self, n: u64) -> Inject {
        self.times = Some(n);
        self
    }
}

#[derive(Clone, Debug)]
enum Node {
    File { data: Vec<u8>, durable: Vec<u8>, poisoned: bool },
    Dir { entries: BTreeMap<OsString, Ino>, durable: BTreeMap<OsString, Ino>, poisoned: bool },
}

#[derive(Debug)]
struct State {
    nodes: HashMap<Ino, Node>,
    next: Ino,
    cwd: PathBuf,
    calls: u64,
    trace: Vec<Op>,
    crash_after: Option<u64>,
    down: bool,
    rules: Vec<Inject>,
    locks: BTreeSet<PathBuf>,
}

fn not_found(p: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{} does not exist", p.display()))
}

fn crashed() -> io::Error {
    io::Error::other("FaultFs: simulated crash, the storage is gone")
}

impl State {
    fn fresh(nodes: HashMap<Ino, Node>, next: Ino, cwd: PathBuf) -> State {
        State {
            nodes,
            next,
            cwd,
            calls: 0,
            trace: Vec::new(),
            crash_after: None,
            down: false,
            rules: Vec::new(),
            locks: BTreeSet::new(),
        }
    }

    /// The absolute, lexically normalized form of `p` (relative to the cwd).
    fn abs(&self, p: &Path) -> PathBuf {
        let joined = if p.is_absolute() { p.to_path_buf() } else { self.cwd.join(p) };
        let mut out = PathBuf::from("/");
        for c in joined.components() {
            match c {
                Component::Normal(n) => out.push(n),
                Component::ParentDir => {
                    out.pop();
                }
                Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            }
        }
        out
    }

    /// Counts and traces a call, and decides whether it fails.
    fn begin(&mut self, kind: OpKind, path: &Path, to: Option<&Path>) -> io::Result<Option<Fault>> {
        self.calls += 1;
        let seq = self.calls;
        let mut op = Op { seq, kind, path: path.to_path_buf(), to: to.map(Path::to_path_buf), failed: true };
        if self.down || self.crash_after.is_some_and(|k| seq > k) {
            self.down = true;
            self.trace.push(op);
            return Err(crashed());
        }
        let mut fault = None;
        for rule in &mut self.rules {
            let kind_ok = match rule.ops {
                Ops::Any => true,
                Ops::Mutating => kind.mutates(),
                Ops::Kind(k) => k == kind,
            };
            let path_ok =
                rule.under.as_ref().is_none_or(|u| path.starts_with(u) || to.is_some_and(|t| t.starts_with(u)));
            let call_ok = rule.call.is_none_or(|c| c == seq);
            if !(kind_ok && path_ok && call_ok) || rule.times == Some(0) {
                continue;
            }
            if rule.skip > 0 {
                rule.skip -= 1;
                continue;
            }
            if let Some(t) = rule.times.as_mut() {
                *t -= 1;
            }
            fault = Some(rule.fault);
            break;
        }
        match fault {
            Some(Fault::Error(errno)) => {
                if matches!(kind, OpKind::Sync | OpKind::SyncDir) {
                    self.poison(path);
                }
                self.trace.push(op);
                Err(errno.error())
            }
            Some(Fault::Torn { .. }) if matches!(kind, OpKind::Write | OpKind::WriteAt) => {
                self.trace.push(op);
                Ok(fault)
            }
            _ => {
                op.failed = false;
                self.trace.push(op);
                Ok(None)
            }
        }
    }

    fn poison(&mut self, path: &Path) {
        if let Some(ino) = self.lookup(path)
            && let Some(Node::File { poisoned, .. } | Node::Dir { poisoned, .. }) = self.nodes.get_mut(&ino)
        {
            *poisoned = true;
        }
    }

    fn lookup(&self, path: &Path) -> Option<Ino> {
        let mut ino = ROOT;
        for c in path.components() {
            if let Component::Normal(name) = c {
                match self.nodes.get(&ino)? {
                    Node::Dir { entries, .. } => ino = *entries.get(name)?,
                    Node::File { .. } => return None,
                }
            }
        }
        Some(ino)
    }

    /// The parent directory's inode and the last component of `path`.
    fn parent(&self, path: &Path) -> io::Result<(Ino, OsString)> {
        let name = path.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
        let parent = path.parent().unwrap_or(Path::new("/"));
        match self.lookup(parent).map(|i| (i, self.nodes.get(&i))) {
            Some((i, Some(Node::Dir { .. }))) => Ok((i, name.to_os_string())),
            Some(_) => Err(io::Error::new(io::ErrorKind::NotADirectory, format!("{}", parent.display()))),
            None => Err(not_found(parent)),
        }
    }

    fn entries_mut(&mut self, dir: Ino) -> io::Result<&mut BTreeMap<OsString, Ino>> {
        match self.nodes.get_mut(&dir) {
            Some(Node::Dir { entries, .. }) => Ok(entries),
            _ => Err(io::Error::new(io::ErrorKind::NotADirectory, "not a directory")),
        }
    }

    fn insert(&mut self, dir: Ino, name: OsString, node: Node) -> io::Result<Ino> {
        let ino = self.next;
        self.next += 1;
        self.nodes.insert(ino, node);
        self.entries_mut(dir)?.insert(name, ino);
        Ok(ino)
    }

    fn file_data(&mut self, ino: Ino) -> io::Result<(&mut Vec<u8>, &mut Vec<u8>, bool)> {
        match self.nodes.get_mut(&ino) {
            Some(Node::File { data, durable, poisoned }) => Ok((data, durable, *poisoned)),
            _ => Err(io::Error::new(io::ErrorKind::IsADirectory, "not a file")),
        }
    }

    /// The image after a power loss: what durable entries reach, with durable
    /// contents, or with [`Crash::TornPages`] of `tear`'s seed.
    fn durable_image(&self, tear: Option<u64>) -> HashMap<Ino, Node> {
        let mut out = HashMap::new();
        let mut todo = vec![ROOT];
        while let Some(ino) = todo.pop() {
            if out.contains_key(&ino) {
                continue;
            }
            match self.nodes.get(&ino) {
                Some(Node::File { data, durable, poisoned }) => {
                    let disk = match tear {
                        // A failed fsync marked the file's pages clean: they are never written back.
                        Some(seed) if !poisoned => torn_pages(data, durable, seed, ino),
                        _ => durable.clone(),
                    };
                    out.insert(ino, Node::File { data: disk.clone(), durable: disk, poisoned: false });
                }
                Some(Node::Dir { durable, .. }) => {
                    todo.extend(durable.values().copied());
                    out.insert(ino, Node::Dir { entries: durable.clone(), durable: durable.clone(), poisoned: false });
                }
                None => {}
            }
        }
        out
    }
}

/// What reaches the disk of a file at a [`Crash::TornPages`] power loss: its
/// current length, each page that differs from `durable` new or old by a hash.
fn torn_pages(data: &[u8], durable: &[u8], seed: u64, ino: Ino) -> Vec<u8> {
    let mut out = data.to_vec();
    for (i, page) in out.chunks_mut(PAGE).enumerate() {
        let start = i * PAGE;
        let old = |j: usize| durable.get(start + j).copied().unwrap_or(0);
        let dirty = page.iter().enumerate().any(|(j, &b)| b != old(j));
        if dirty && mix(seed, ino, i as u64) & 1 == 0 {
            for (j, b) in page.iter_mut().enumerate() {
                *b = old(j);
            }
        }
    }
    out
}

/// SplitMix64 of the three values: a fixed, well-spread choice.
fn mix(seed: u64, ino: Ino, page: u64) -> u64 {
    let mut z = seed
        .wrapping_add(ino.wrapping_mul(0xA24B_AED4_963E_E407))
        .wrapping_add(page.wrapping_mul(0x9FB2_1C65_1E98_DF25))
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Writes `buf` into `data` at `at`, zero-filling a gap past the end.
fn put(data: &mut Vec<u8>, at: u64, buf: &[u8]) -> io::Result<()> {
    let too_big = || io::Error::new(io::ErrorKind::InvalidInput, "FaultFs: position out of range");
    let at = usize::try_from(at).map_err(|_| too_big())?;
    let end = at.checked_add(buf.len()).ok_or_else(too_big)?;
    if data.len() < end {
        data.resize(end, 0);
    }
    data[at..end].copy_from_slice(buf);
    Ok(())
}

/// An in-memory, fault-injecting [`Storage`] for tests. Clones share one file system.
///
/// ```
/// use std::path::Path;
/// use weir_core::storage::{Crash, FaultFs, Storage};
/// let fs = FaultFs::new();
/// fs.create_dir(Path::new("/d")).unwrap();
/// fs.sync_dir(Path::new("/")).unwrap();
/// let mut f = fs.create(Path::new("/d/a")).unwrap();
/// std::io::Write::write_all(&mut f, b"not fsynced").unwrap();
/// // Neither the data nor the entry of `a` was made durable.
/// let after = fs.crash(Crash::DropUnsynced);
/// assert!(after.exists(Path::new("/d")).unwrap());
/// assert!(!after.exists(Path::new("/d/a")).unwrap());
/// ```
#[derive(Clone)]
pub struct FaultFs {
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for FaultFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.lock();
        f.debug_struct("FaultFs").field("calls", &s.calls).field("down", &s.down).finish()
    }
}

impl Default for FaultFs {
    fn default() -> Self {
        FaultFs::new()
    }
}

impl FaultFs {
    /// An empty file system (just `/`, durable), working directory `/`.
    pub fn new() -> FaultFs {
        let root = Node::Dir { entries: BTreeMap::new(), durable: BTreeMap::new(), poisoned: false };
        let nodes = HashMap::from([(ROOT, root)]);
        FaultFs { state: Arc::new(Mutex::new(State::fresh(nodes, 1, PathBuf::from("/")))) }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not hide the file system from the others.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the working directory relative paths resolve against (so a test
    /// can recover "from another working directory" without touching the
    /// process's own).
    pub fn set_cwd(&self, cwd: impl AsRef<Path>) {
        let mut s = self.lock();
        let cwd = s.abs(cwd.as_ref());
        s.cwd = cwd;
    }

    /// Every call after the `k`-th fails, as if the machine stopped there;
    /// [`FaultFs::crash`] then gives the image to restart on.
    pub fn crash_after(&self, k: u64) {
        self.lock().crash_after = Some(k);
    }

    /// Adds a fault; the first matching injection decides a call's fate.
    pub fn inject(&self, inject: Inject) {
        self.lock().rules.push(inject);
    }

    /// Storage calls so far.
    pub fn calls(&self) -> u64 {
        self.lock().calls
    }

    /// Every call so far, in order.
    pub fn trace(&self) -> Vec<Op> {
        self.lock().trace.clone()
    }

    /// Whether a crash point or torn write stopped the storage.
    pub fn is_down(&self) -> bool {
        self.lock().down
    }

    /// The file system a restarted process sees after a crash now: a new,
    /// independent `FaultFs` with no faults, locks or trace.
    pub fn crash(&self, mode: Crash) -> FaultFs {
        let s = self.lock();
        let nodes = match mode {
            Crash::DropUnsynced => s.durable_image(None),
            Crash::TornPages { seed } => s.durable_image(Some(seed)),
            // The kernel outlives the process: what a failed fsync dropped stays dropped.
            Crash::KeepAll => s.nodes.clone(),
        };
        FaultFs { state: Arc::new(Mutex::new(State::fresh(nodes, s.next, s.cwd.clone()))) }
    }

    /// Creates `dir` and its parents durably, without counting or tracing the
    /// calls (test setup).
    pub fn prepare_dir(&self, dir: impl AsRef<Path>) {
        let mut s = self.lock();
        let dir = s.abs(dir.as_ref());
        let mut at = ROOT;
        for c in dir.components() {
            if let Component::Normal(name) = c {
                let found = match s.nodes.get(&at) {
                    Some(Node::Dir { entries, .. }) => entries.get(name).copied(),
                    _ => return,
                };
                at = match found {
                    Some(ino) => ino,
                    None => {
                        let node = Node::Dir { entries: BTreeMap::new(), durable: BTreeMap::new(), poisoned: false };
                        let Ok(ino) = s.insert(at, name.to_os_string(), node) else { return };
                        if let Some(Node::Dir { entries, durable, .. }) = s.nodes.get_mut(&at) {
                            *durable = entries.clone();
                        }
                        ino
                    }
                };
            }
        }
    }

    /// Copies the tree at `from` to `to` on the local file system (so tests
    /// read output back with ordinary readers). Not counted or traced.
    pub fn copy_to_local(&self, from: impl AsRef<Path>, to: impl AsRef<Path>) -> io::Result<()> {
        let s = self.lock();
        let from = s.abs(from.as_ref());
        let ino = s.lookup(&from).ok_or_else(|| not_found(&from))?;
        fn copy(s: &State, ino: Ino, to: &Path) -> io::Result<()> {
            match s.nodes.get(&ino) {
                Some(Node::File { data, .. }) => std::fs::write(to, data),
                Some(Node::Dir { entries, .. }) => {
                    std::fs::create_dir_all(to)?;
                    for (name, &child) in entries {
                        copy(s, child, &to.join(name))?;
                    }
                    Ok(())
                }
                None => Ok(()),
            }
        }
        copy(&s, ino, to.as_ref())
    }
}

/// A file being written on a [`FaultFs`]; sequential writes go at `pos`.
struct FaultFile {
    state: Arc<Mutex<State>>,
    ino: Ino,
    path: PathBuf,
    pos: u64,
}

impl fmt::Debug for FaultFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultFile").field("path", &self.path).field("pos", &self.pos).finish()
    }
}

impl FaultFile {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes `buf` at `at` as the call `kind`, or its torn prefix.
    fn write_traced(&mut self, kind: OpKind, buf: &[u8], at: u64) -> io::Result<()> {
        let mut s = self.lock();
        let fault = s.begin(kind, &self.path, None)?;
        let (data, _, _) = s.file_data(self.ino)?;
        if let Some(Fault::Torn { keep }) = fault {
            put(data, at, &buf[..keep.min(buf.len())])?;
            s.down = true;
            return Err(crashed());
        }
        put(data, at, buf)
    }
}

impl Write for FaultFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_traced(OpKind::Write, buf, self.pos)?;
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl StorageFile for FaultFile {
    fn sync(&mut self) -> io::Result<()> {
        let mut s = self.lock();
        s.begin(OpKind::Sync, &self.path, None)?;
        let (data, durable, poisoned) = s.file_data(self.ino)?;
        if !poisoned {
            *durable = data.clone();
        }
        Ok(())
    }

    fn write_all_at(&mut self, buf: &[u8], pos: u64) -> io::Result<()> {
        self.write_traced(OpKind::WriteAt, buf, pos)
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        let mut s = self.lock();
        s.begin(OpKind::SetLen, &self.path, None)?;
        let (data, _, _) = s.file_data(self.ino)?;
        let n = usize::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "FaultFs: length out of range"))?;
        data.resize(n, 0);
        drop(s);
        self.pos = len;
        Ok(())
    }
}

/// A file opened for positional reads on a [`FaultFs`]: reads its current contents.
struct FaultReadAt {
    state: Arc<Mutex<State>>,
    ino: Ino,
    path: PathBuf,
}

impl fmt::Debug for FaultReadAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("FaultReadAt").field(&self.path).finish()
    }
}

impl ReadAt for FaultReadAt {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.begin(OpKind::ReadAt, &self.path, None)?;
        let (data, _, _) = s.file_data(self.ino)?;
        let at = usize::try_from(pos).unwrap_or(usize::MAX).min(data.len());
        let n = buf.len().min(data.len() - at);
        buf[..n].copy_from_slice(&data[at..at + n]);
        Ok(n)
    }
}

/// A lock held on a [`FaultFs`] path.
struct FaultLock {
    state: Arc<Mutex<State>>,
    path: PathBuf,
}

impl fmt::Debug for FaultLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("FaultLock").field(&self.path).finish()
    }
}

impl StorageLock for FaultLock {}

impl Drop for FaultLock {
    fn drop(&mut self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).locks.remove(&self.path);
    }
}

impl Storage for FaultFs {
    fn create(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        let mut s = self.lock();
        let path = s.abs(path);
        s.begin(OpKind::Create, &path, None)?;
        let (dir, name) = s.parent(&path)?;
        let existing = s.entries_mut(dir)?.get(&name).copied();
        let ino = match existing {
            Some(ino) => {
                s.file_data(ino)?.0.clear();
                ino
            }
            None => s.insert(dir, name, Node::File { data: Vec::new(), durable: Vec::new(), poisoned: false })?,
        };
        Ok(Box::new(FaultFile { state: self.state.clone(), ino, path, pos: 0 }))
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        let mut s = self.lock();
        let path = s.abs(path);
        s.begin(OpKind::OpenAppend, &path, None)?;
        let ino = s.lookup(&path).ok_or_else(|| not_found(&path))?;
        let pos = s.file_data(ino)?.0.len() as u64;
        Ok(Box::new(FaultFile { state: self.state.clone(), ino, path, pos }))
    }

    fn open_read_at(&self, path: &Path) -> io::Result<Box<dyn ReadAt>> {
        let mut s = self.lock();
        let path = s.abs(path);
        s.begin(OpKind::OpenReadAt, &path, None)?;
        let ino = s.lookup(&path).ok_or_else(|| not_found(&path))?;
        s.file_data(ino)?;
        Ok(Box::new(FaultReadAt { state: self.state.clone(), ino, path }))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn Read + Send>> {
        let mut s = self.lock();
        let path = s.abs(path);
        s.begin(OpKind::Open, &path, None)?;
        let ino = s.lookup(&path).ok_or_else(|| not_found(&path))?;
        let data = s.file_data(ino)?.0.clone();
        Ok(Box::new(io::Cursor::new(data)))
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        let path = s.abs(path);
        s.begin(OpKind::SyncDir, &path, None)?;
        let ino = s.lookup(&path).ok_or_else(|| not_found(&path))?;
        match s.nodes.get_mut(&ino) {
            Some(Node::Dir { entries, durable, poisoned }) => {
                if !*poisoned {
                    *durable = entries.clone();
                }
                Ok(())
            }
            _ => Err(io::Error::new(io::ErrorKind::NotADirectory, format!("{}", path.display()))),
        }
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.lock();
        let (from, to) = (s.abs(from), s.abs(to));
        s.begin(OpKind::Rename, &from, Some(&to))?;
        let (src_dir, src_name) = s.parent(&from)?;
        let ino = s.entries_mut(src_dir)?.get(&src_name).copied().ok_or_else(|| not_found(&from))?;
        let (dst_dir, dst_name) = s.parent(&to)?;
        if let Some(existing) = s.entries_mut(dst_dir)?.get(&dst_name).copied()
            && matches!(s.nodes.get(&existing), Some(Node::Dir { .. }))
        {
            return Err(io::Error::new(io::ErrorKind::IsADirectory, format!("{}", to.display())));
        }
        s.entries_mut(src_dir)?.remove(&src_name);
        s.entries_mut(dst_dir)?.insert(dst_name, ino);
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        let path = s.abs(path);
        s.begin(OpKind::RemoveFile, &path, None)?;
        let (dir, name) = s.parent(&path)?;
        let ino = s.entries_mut(dir)?.get(&name).copied().ok_or_else(|| not_found(&path))?;
        if matches!(s.nodes.get(&ino), Some(Node::Dir { .. })) {
            return Err(io::Error::new(io::ErrorKind::IsADirectory, format!("{}", path.display())));
        }
        s.entries_mut(dir)?.remove(&name);
        Ok(())
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        let path = s.abs(path);
        s.begin(OpKind::RemoveDirAll, &path, None)?;
        let (dir, name) = s.parent(&path)?;
        let ino = s.entries_mut(dir)?.get(&name).copied().ok_or_else(|| not_found(&path))?;
        if !matches!(s.nodes.get(&ino), Some(Node::Dir { .. })) {
            return Err(io::Error::new(io::ErrorKind::NotADirectory, format!("{}", path.display())));
        }
        // The subtree's nodes stay: durable entries may still reach them.
        s.entries_mut(dir)?.remove(&name);
        Ok(())
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        let path = s.abs(path);
        s.begin(OpKind::CreateDir, &path, None)?;
        let (dir, name) = s.parent(&path)?;
        if s.entries_mut(dir)?.contains_key(&name) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{} exists", path.display())));
        }
        s.insert(dir, name, Node::Dir { entries: BTreeMap::new(), durable: BTreeMap::new(), poisoned: false })?;
        Ok(())
    }

    fn list(&self, path: &Path) -> io::Result<Vec<DirEntry>> {
        let mut s = self.lock();
        let path = s.abs(path);
        s.begin(OpKind::List, &path, None)?;
        let ino = s.lookup(&path).ok_or_else(|| not_found(&path))?;
        let entries = s.entries_mut(ino)?.clone();
        Ok(entries
            .into_iter()
            .map(|(name, child)| DirEntry { name, is_dir: matches!(s.nodes.get(&child), Some(Node::Dir { .. })) })
            .collect())
    }

    fn metadata(&self, path: &Path) -> io::Result<Metadata> {
        let mut s = self.lock();
        let path = s.abs(path);
        s.begin(OpKind::Metadata, &path, None)?;
        let ino = s.lookup(&path).ok_or_else(|| not_found(&path))?;
        Ok(match s.nodes.get(&ino) {
            Some(Node::File { data, .. }) => Metadata { is_dir: false, len: data.len() as u64 },
            _ => Metadata { is_dir: true, len: 0 },
        })
    }

    fn canonicalize(&self, path: &Path) -> io::Result<PathBuf> {
        let mut s = self.lock();
        let path = s.abs(path);
        s.begin(OpKind::Canonicalize, &path, None)?;
        s.lookup(&path).ok_or_else(|| not_found(&path))?;
        Ok(path)
    }

    fn try_lock(&self, path: &Path) -> io::Result<Option<Box<dyn StorageLock>>> {
        let mut s = self.lock();
        let path = s.abs(path);
        s.begin(OpKind::Lock, &path, None)?;
        if s.locks.contains(&path) {
            return Ok(None);
        }
        let (dir, name) = s.parent(&path)?;
        if !s.entries_mut(dir)?.contains_key(&name) {
            s.insert(dir, name, Node::File { data: Vec::new(), durable: Vec::new(), poisoned: false })?;
        }
        s.locks.insert(path.clone());
        Ok(Some(Box::new(FaultLock { state: self.state.clone(), path })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(fs: &FaultFs, path: &str, data: &[u8], sync: bool) {
        let mut f = fs.create(Path::new(path)).unwrap();
        f.write_all(data).unwrap();
        if sync {
            f.sync().unwrap();
        }
    }

    #[test]
    fn power_loss_keeps_only_what_was_fsynced() {
        let fs = FaultFs::new();
        fs.prepare_dir("/d");
        write(&fs, "/d/synced", b"a", true);
        write(&fs, "/d/unsynced", b"b", false);
        fs.sync_dir(Path::new("/d")).unwrap();
        write(&fs, "/d/no-entry", b"c", true);
        let after = fs.crash(Crash::DropUnsynced);
        assert_eq!(after.read(Path::new("/d/synced")).unwrap(), b"a");
        // The entry is durable, the data is not.
        assert_eq!(after.read(Path::new("/d/unsynced")).unwrap(), b"");
        assert!(!after.exists(Path::new("/d/no-entry")).unwrap());
        // A process kill keeps everything visible.
        let killed = fs.crash(Crash::KeepAll);
        assert_eq!(killed.read(Path::new("/d/no-entry")).unwrap(), b"c");
        // ... but not durable: a later power loss still drops it.
        assert!(!killed.crash(Crash::DropUnsynced).exists(Path::new("/d/no-entry")).unwrap());
    }

    #[test]
    fn renames_and_removes_need_the_directory_fsync() {
        let fs = FaultFs::new();
        fs.prepare_dir("/s");
        fs.prepare_dir("/t");
        write(&fs, "/s/f", b"x", true);
        fs.sync_dir(Path::new("/s")).unwrap();
        fs.rename(Path::new("/s/f"), Path::new("/t/f")).unwrap();
        fs.sync_dir(Path::new("/t")).unwrap();
        // Target entry durable, source entry not yet removed: both survive.
        let after = fs.crash(Crash::DropUnsynced);
        assert_eq!(after.read(Path::new("/t/f")).unwrap(), b"x");
        assert_eq!(after.read(Path::new("/s/f")).unwrap(), b"x");
        fs.remove_dir_all(Path::new("/t")).unwrap();
        assert!(fs.crash(Crash::DropUnsynced).exists(Path::new("/t/f")).unwrap());
        fs.sync_dir(Path::new("/")).unwrap();
        assert!(!fs.crash(Crash::DropUnsynced).exists(Path::new("/t")).unwrap());
    }

    #[test]
    fn crash_after_k_fails_every_later_call() {
        let fs = FaultFs::new();
        fs.crash_after(2);
        fs.create_dir(Path::new("/a")).unwrap();
        fs.sync_dir(Path::new("/")).unwrap();
        assert!(fs.create_dir(Path::new("/b")).is_err());
        assert!(fs.exists(Path::new("/a")).is_err());
        assert!(fs.is_down());
        assert_eq!(fs.calls(), 4);
        let trace = fs.trace();
        assert_eq!(trace.iter().filter(|o| o.failed).count(), 2);
        assert!(fs.crash(Crash::DropUnsynced).exists(Path::new("/a")).unwrap());
    }

    #[test]
    fn injected_errors_and_torn_writes() {
        let fs = FaultFs::new();
        fs.prepare_dir("/ro");
        fs.prepare_dir("/w");
        fs.inject(Inject::mutations(Fault::Error(Errno::Erofs)).under("/ro"));
        let err = fs.create(Path::new("/ro/x")).err().unwrap();
        assert_eq!(err.raw_os_error(), Some(30));
        assert!(fs.list(Path::new("/ro")).unwrap().is_empty());
        // A failed fsync poisons the file: a retry "succeeds" without writing anything.
        fs.inject(Inject::op(OpKind::Sync, Fault::Error(Errno::Eio)).nth(1));
        let mut f = fs.create(Path::new("/w/f")).unwrap();
        f.write_all(b"data").unwrap();
        assert_eq!(f.sync().unwrap_err().raw_os_error(), Some(5));
        f.sync().unwrap();
        fs.sync_dir(Path::new("/w")).unwrap();
        assert_eq!(fs.crash(Crash::DropUnsynced).read(Path::new("/w/f")).unwrap(), b"");
        // A torn write keeps a prefix and stops the storage.
        let fs = FaultFs::new();
        let mut f = fs.create(Path::new("/f")).unwrap();
        fs.inject(Inject::op(OpKind::Write, Fault::Torn { keep: 3 }));
        assert!(f.write_all(b"abcdef").is_err());
        assert!(fs.is_down());
        assert_eq!(fs.crash(Crash::KeepAll).read(Path::new("/f")).unwrap(), b"abc");
    }

    #[test]
    fn appends_positional_writes_and_truncations_are_durable_at_the_sync() {
        let fs = FaultFs::new();
        fs.prepare_dir("/d");
        write(&fs, "/d/f", b"0123456789", true);
        fs.sync_dir(Path::new("/d")).unwrap();
        let mut f = fs.open_append(Path::new("/d/f")).unwrap();
        let r = fs.open_read_at(Path::new("/d/f")).unwrap();
        f.write_all(b"abc").unwrap();
        f.write_all_at(b"XY", 1).unwrap();
        let mut buf = [0u8; 32];
        // Readers see the current contents, appends after their open included.
        let n = r.read_at(&mut buf, 0).unwrap();
        assert_eq!(&buf[..n], b"0XY3456789abc");
        let n = r.read_at(&mut buf, 11).unwrap();
        assert_eq!(&buf[..n], b"bc");
        assert_eq!(r.read_at(&mut buf, 13).unwrap(), 0);
        assert_eq!(r.read_at(&mut buf, 99).unwrap(), 0);
        // Nothing of it is durable before the sync; a process kill keeps it.
        assert_eq!(fs.crash(Crash::DropUnsynced).read(Path::new("/d/f")).unwrap(), b"0123456789");
        assert_eq!(fs.crash(Crash::KeepAll).read(Path::new("/d/f")).unwrap(), b"0XY3456789abc");
        f.sync_data().unwrap();
        assert_eq!(fs.crash(Crash::DropUnsynced).read(Path::new("/d/f")).unwrap(), b"0XY3456789abc");
        // A truncation is undone by a power loss until the file is synced; writes
        // continue at the new end.
        f.set_len(4).unwrap();
        f.write_all(b"!").unwrap();
        assert_eq!(fs.read(Path::new("/d/f")).unwrap(), b"0XY3!");
        assert_eq!(fs.crash(Crash::DropUnsynced).read(Path::new("/d/f")).unwrap(), b"0XY3456789abc");
        f.sync().unwrap();
        assert_eq!(fs.crash(Crash::DropUnsynced).read(Path::new("/d/f")).unwrap(), b"0XY3!");
        // A positional write past the end zero-fills the gap.
        f.write_all_at(b"z", 7).unwrap();
        assert_eq!(fs.read(Path::new("/d/f")).unwrap(), b"0XY3!\0\0z");
        assert_eq!(fs.open_append(Path::new("/d/none")).unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!(fs.open_read_at(Path::new("/d/none")).unwrap_err().kind(), io::ErrorKind::NotFound);
        let kinds: Vec<OpKind> = fs.trace().iter().map(|o| o.kind).collect();
        for kind in [OpKind::OpenAppend, OpKind::OpenReadAt, OpKind::ReadAt, OpKind::WriteAt, OpKind::SetLen] {
            assert!(kinds.contains(&kind), "{kind:?} not traced");
        }
        assert!(OpKind::WriteAt.mutates() && OpKind::SetLen.mutates() && !OpKind::ReadAt.mutates());
    }

    #[test]
    fn torn_pages_keep_some_unsynced_pages_and_every_durable_byte() {
        let fs = FaultFs::new();
        fs.prepare_dir("/d");
        let durable: Vec<u8> = (0..PAGE + 100).map(|i| (i % 251) as u8 + 1).collect();
        write(&fs, "/d/f", &durable, true);
        fs.sync_dir(Path::new("/d")).unwrap();
        let mut f = fs.open_append(Path::new("/d/f")).unwrap();
        let appended = vec![0xee; 6 * PAGE];
        f.write_all(&appended).unwrap();
        let current = fs.read(Path::new("/d/f")).unwrap();
        let (mut holes, mut kept) = (0, 0);
        for seed in 0..16 {
            let after = fs.crash(Crash::TornPages { seed }).read(Path::new("/d/f")).unwrap();
            assert_eq!(after.len(), current.len());
            assert_eq!(&after[..durable.len()], &durable[..], "seed {seed}: a durable byte changed");
            for (i, page) in after.chunks(PAGE).enumerate().skip(1) {
                let new = &current[i * PAGE..(i * PAGE + PAGE).min(current.len())];
                if page == new {
                    kept += 1;
                } else {
                    // A page that did not reach the disk: its durable bytes, zeros after.
                    let start = i * PAGE;
                    let old: Vec<u8> =
                        (start..start + page.len()).map(|j| durable.get(j).copied().unwrap_or(0)).collect();
                    assert_eq!(page, &old[..], "seed {seed}, page {i}");
                    holes += 1;
                }
            }
            assert_eq!(
                fs.crash(Crash::TornPages { seed }).read(Path::new("/d/f")).unwrap(),
                after,
                "not deterministic"
            );
        }
        assert!(holes > 10 && kept > 10, "{holes} pages lost, {kept} kept");
        // Entries follow the directory fsyncs, as with DropUnsynced.
        write(&fs, "/d/new", b"x", true);
        assert!(!fs.crash(Crash::TornPages { seed: 1 }).exists(Path::new("/d/new")).unwrap());
    }

    #[test]
    fn faults_hit_the_new_calls_too() {
        let fs = FaultFs::new();
        write(&fs, "/f", b"abc", true);
        fs.sync_dir(Path::new("/")).unwrap();
        fs.inject(Inject::op(OpKind::SetLen, Fault::Error(Errno::Eio)).nth(1));
        fs.inject(Inject::op(OpKind::ReadAt, Fault::Error(Errno::Eio)).nth(1));
        let mut f = fs.open_append(Path::new("/f")).unwrap();
        assert_eq!(f.set_len(1).unwrap_err().raw_os_error(), Some(5));
        let r = fs.open_read_at(Path::new("/f")).unwrap();
        assert!(r.read_at(&mut [0u8; 4], 0).is_err());
        assert_eq!(r.read_at(&mut [0u8; 4], 0).unwrap(), 3);
        // A failed sync_data poisons the file like a failed sync.
        fs.inject(Inject::op(OpKind::Sync, Fault::Error(Errno::Enospc)).nth(1));
        f.write_all(b"d").unwrap();
        assert_eq!(f.sync_data().unwrap_err().raw_os_error(), Some(28));
        f.sync_data().unwrap();
        assert_eq!(fs.crash(Crash::DropUnsynced).read(Path::new("/f")).unwrap(), b"abc");
        // A positional write can be torn.
        fs.inject(Inject::op(OpKind::WriteAt, Fault::Torn { keep: 2 }));
        assert!(f.write_all_at(b"XYZ", 0).is_err());
        assert!(fs.is_down());
        assert_eq!(fs.crash(Crash::KeepAll).read(Path::new("/f")).unwrap(), b"XYcd");
    }

    #[test]
    fn locks_and_relative_paths() {
        let fs = FaultFs::new();
        fs.prepare_dir("/a/b");
        fs.set_cwd("/a");
        assert_eq!(fs.canonicalize(Path::new("b/../b")).unwrap(), Path::new("/a/b"));
        let l = fs.try_lock(Path::new("b/LOCK")).unwrap();
        assert!(l.is_some());
        assert!(fs.try_lock(Path::new("/a/b/LOCK")).unwrap().is_none());
        drop(l);
        assert!(fs.try_lock(Path::new("/a/b/LOCK")).unwrap().is_some());
    }
}
