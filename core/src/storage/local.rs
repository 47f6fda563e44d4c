//! [`LocalFs`]: the [`Storage`] of production runs, on the local file system
//! through `std::fs`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::{DirEntry, Metadata, ReadAt, Storage, StorageFile, StorageLock};

/// The local file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalFs;

/// A local file being written. Unbuffered: callers buffer (a writer of many
/// small pieces wraps it in a `BufWriter`). Not opened with `O_APPEND` (with
/// it, Linux's `pwrite` ignores the position): sequential writes go at the
/// file position, which starts at the end of an appended file.
#[derive(Debug)]
struct LocalFile(File);

impl Write for LocalFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl StorageFile for LocalFile {
    fn sync(&mut self) -> io::Result<()> {
        self.0.sync_all()
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn write_all_at(&mut self, buf: &[u8], pos: u64) -> io::Result<()> {
        #[cfg(unix)]
        {
            std::os::unix::fs::FileExt::write_all_at(&self.0, buf, pos)
        }
        #[cfg(not(unix))]
        {
            let at = self.0.stream_position()?;
            self.0.seek(SeekFrom::Start(pos))?;
            let written = self.0.write_all(buf);
            self.0.seek(SeekFrom::Start(at))?;
            written
        }
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.0.set_len(len)?;
        self.0.seek(SeekFrom::End(0))?;
        Ok(())
    }
}

/// A local file opened for positional reads (`pread`).
#[derive(Debug)]
struct LocalReadAt(File);

impl ReadAt for LocalReadAt {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        #[cfg(unix)]
        {
            std::os::unix::fs::FileExt::read_at(&self.0, buf, pos)
        }
        #[cfg(not(unix))]
        {
            let mut file = &self.0;
            file.seek(SeekFrom::Start(pos))?;
            file.read(buf)
        }
    }
}

/// An open lock file holding an exclusive `flock`, released when it closes.
#[derive(Debug)]
struct LocalLock {
    _file: File,
}

impl StorageLock for LocalLock {}

impl Storage for LocalFs {
    fn create(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        Ok(Box::new(LocalFile(File::create(path)?)))
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        let mut file = OpenOptions::new().write(true).open(path)?;
        file.seek(SeekFrom::End(0))?;
        Ok(Box::new(LocalFile(file)))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn Read + Send>> {
        // Unbuffered: callers read in large pieces.
        Ok(Box::new(File::open(path)?))
    }

    fn open_read_at(&self, path: &Path) -> io::Result<Box<dyn ReadAt>> {
        Ok(Box::new(LocalReadAt(File::open(path)?)))
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        fs::read(path)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::remove_dir_all(path)
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        fs::create_dir(path)
    }

    fn list(&self, path: &Path) -> io::Result<Vec<DirEntry>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(path)? {
            let entry = entry?;
            out.push(DirEntry { name: entry.file_name(), is_dir: entry.file_type()?.is_dir() });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn metadata(&self, path: &Path) -> io::Result<Metadata> {
        let m = fs::metadata(path)?;
        Ok(Metadata { is_dir: m.is_dir(), len: if m.is_dir() { 0 } else { m.len() } })
    }

    fn canonicalize(&self, path: &Path) -> io::Result<PathBuf> {
        fs::canonicalize(path)
    }

    fn try_lock(&self, path: &Path) -> io::Result<Option<Box<dyn StorageLock>>> {
        // Never truncated or written: the file's only job is to carry the lock.
        let file = OpenOptions::new().create(true).truncate(false).write(true).open(path)?;
        // An flock belongs to the open file description, which a child process
        // shares between its fork and its exec (close-on-exec only ends it at the
        // exec): a process that spawns children while another of its pipelines
        // releases this lock can see it held for a moment. Retry briefly before
        // deciding another process holds it.
        for attempt in 0..20 {
            match file.try_lock() {
                Ok(()) => return Ok(Some(Box::new(LocalLock { _file: file }))),
                Err(fs::TryLockError::WouldBlock) if attempt < 19 => {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(fs::TryLockError::WouldBlock) => return Ok(None),
                Err(fs::TryLockError::Error(e)) => return Err(e),
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_fs_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let fs = LocalFs;
        let d = dir.path().join("d");
        fs.create_dir(&d).unwrap();
        assert_eq!(fs.create_dir(&d).unwrap_err().kind(), io::ErrorKind::AlreadyExists);
        let mut f = fs.create(&d.join("b")).unwrap();
        f.write_all(b"hello").unwrap();
        f.sync().unwrap();
        drop(f);
        fs.sync_dir(&d).unwrap();
        fs.rename(&d.join("b"), &d.join("a")).unwrap();
        assert_eq!(fs.read(&d.join("a")).unwrap(), b"hello");
        // Appending, positional writes and reads, truncation.
        let mut f = fs.open_append(&d.join("a")).unwrap();
        let r = fs.open_read_at(&d.join("a")).unwrap();
        f.write_all(b" world").unwrap();
        f.write_all_at(b"J", 0).unwrap();
        f.sync_data().unwrap();
        let mut buf = [0u8; 64];
        let n = r.read_at(&mut buf, 0).unwrap();
        assert_eq!(&buf[..n], b"Jello world");
        let n = r.read_at(&mut buf, 6).unwrap();
        assert_eq!(&buf[..n], b"world");
        assert_eq!(r.read_at(&mut buf, 100).unwrap(), 0);
        f.set_len(5).unwrap();
        f.write_all(b"!").unwrap();
        drop(f);
        assert_eq!(fs.read(&d.join("a")).unwrap(), b"Jello!");
        let mut f = fs.open_append(&d.join("a")).unwrap();
        f.set_len(5).unwrap();
        f.sync().unwrap();
        drop(f);
        assert_eq!(fs.open_append(&d.join("missing")).unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!(fs.metadata(&d.join("a")).unwrap(), Metadata { is_dir: false, len: 5 });
        assert_eq!(fs.read(&d.join("a")).unwrap(), b"Jello");
        assert_eq!(fs.list(&d).unwrap(), vec![DirEntry { name: "a".into(), is_dir: false }]);
        let lock = fs.try_lock(&d.join("LOCK")).unwrap();
        assert!(lock.is_some());
        assert!(fs.try_lock(&d.join("LOCK")).unwrap().is_none());
        drop(lock);
        assert!(fs.try_lock(&d.join("LOCK")).unwrap().is_some());
        fs.remove_file(&d.join("a")).unwrap();
        assert!(!fs.exists(&d.join("a")).unwrap());
        fs.remove_dir_all(&d).unwrap();
        assert!(!fs.exists(&d).unwrap());
    }
}
