//! The commit protocol as plain logic over part descriptors and manifests.
//!
//! Every stateful operator, source and sink emits a [`Part`] for every
//! checkpoint epoch (with or without data). The commit operator folds the
//! parts of epochs `<= e` into the previous manifest with [`next_manifest`],
//! commits it through the store, then calls [`publish`]. Recovery calls the
//! same [`publish`] on the newest manifest, so a crash between commit and
//! publish is repaired by replaying it.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::checkpoint::manifest::{FORMAT_VERSION, FileEntry, Manifest, Publish};
use crate::error::{Error, IoContext, Result};
use crate::record::{Offset, PartitionId};
use crate::storage::Storage;
use crate::time::Epoch;

/// A part descriptor: one operator instance's contribution to a checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Part {
    /// The checkpoint epoch the part belongs to.
    pub epoch: Epoch,
    /// The worker that wrote it.
    pub worker: usize,
    /// What it holds.
    pub body: PartBody,
}

/// What a part holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PartBody {
    /// A source instance's next offsets for the partitions it owns.
    Offsets {
        /// Source name.
        source: String,
        /// `(partition, next offset)` pairs.
        offsets: Vec<(PartitionId, Offset)>,
    },
    /// A stateful operator instance's state file.
    State {
        /// Operator id (stable across restarts).
        operator: String,
        /// The part file.
        file: FileEntry,
    },
    /// A sink instance's staged files, closed at this epoch.
    Output {
        /// Sink operator id.
        operator: String,
        /// Files to publish once the checkpoint commits.
        files: Vec<Publish>,
    },
}

/// Folds `parts` (all parts of epochs `<= epoch` not yet committed, in any order)
/// into the manifest that follows `prev`.
///
/// Offsets: the latest per partition wins. State: an operator's files are the
/// parts of the newest epoch that has parts of it (every instance emits one per
/// checkpoint epoch, so those are complete); operators without new parts keep
/// their previous files. Outputs: only files staged since `prev`, since `prev`'s
/// were published before this commit.
pub fn next_manifest(
    prev: Option<&Manifest>,
    template: &Manifest,
    mut parts: Vec<Part>,
    epoch: Epoch,
    complete: bool,
) -> Manifest {
    parts.sort_by_key(|p| (p.epoch, p.worker));
    let mut m = Manifest {
        version: FORMAT_VERSION,
        pipeline: template.pipeline.clone(),
        epoch,
        complete,
        workers: template.workers,
        key_groups: template.key_groups,
        inputs: template.inputs.clone(),
        assignments: template.assignments.clone(),
        offsets: BTreeMap::new(),
        state: BTreeMap::new(),
        outputs: Vec::new(),
        steps: template.steps.clone(),
    };
    if let Some(prev) = prev {
        m.offsets = prev.offsets.clone();
        m.state = prev.state.clone();
        if !prev.inputs.is_empty() {
            m.inputs = prev.inputs.clone();
        }
    }
    let mut newest_state: BTreeMap<&str, Epoch> = BTreeMap::new();
    for p in &parts {
        if let PartBody::State { operator, .. } = &p.body {
            let e = newest_state.entry(operator.as_str()).or_insert(p.epoch);
            *e = (*e).max(p.epoch);
        }
    }
    let mut fresh: BTreeMap<String, Vec<FileEntry>> = BTreeMap::new();
    for p in &parts {
        match &p.body {
            PartBody::Offsets { source, offsets } => {
                let map = m.offsets.entry(source.clone()).or_default();
                for &(partition, offset) in offsets {
                    map.insert(partition, offset);
                }
            }
            PartBody::State { operator, file } => {
                if newest_state.get(operator.as_str()) == Some(&p.epoch)
                    && !fresh.get(operator).is_some_and(|v| v.contains(file))
                {
                    fresh.entry(operator.clone()).or_default().push(file.clone());
                }
            }
            PartBody::Output { files, .. } => m.outputs.extend(files.iter().cloned()),
        }
    }
    for (operator, files) in fresh {
        m.state.insert(operator, files);
    }
    m
}

/// Size and CRC32 of a file, read through `storage` in pieces.
fn file_crc(storage: &dyn Storage, path: &Path) -> Result<(u64, u32)> {
    let mut f = storage.open(path).ctx("open", path)?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).ctx("read", path)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((size, hasher.finalize()))
}

/// Checks that `path` holds what the manifest lists for `f`.
fn verify(storage: &dyn Storage, path: &Path, f: &Publish, what: &str) -> Result<()> {
    // The size first: a truncated file fails without being read.
    let len = storage.metadata(path).ctx("stat", path)?.len;
    let (size, crc) = if len == f.size { file_crc(storage, path)? } else { (len, 0) };
    if size != f.size || crc != f.crc32 {
        return Err(Error::corrupt(
            path,
            size.min(f.size),
            format!(
                "{what} file has size {size}{}, the manifest lists size {} crc {:08x}",
                if size == f.size { format!(" crc {crc:08x}") } else { String::new() },
                f.size,
                f.crc32
            ),
        ));
    }
    Ok(())
}

/// Moves committed staged files to their final names. Idempotent: a staged file
/// present is verified against the manifest's size and CRC32 and renamed; a
/// final file present with the listed size and checksum is done; anything else
/// is an error naming the file, except for a transient file (an outbox entry
/// its sink has delivered and removed). Then every directory whose entries changed is
/// fsynced. An error (a rename's, an fsync's) fails the run: the next run
/// replays this from the manifest, never retrying on the same file handle.
pub fn publish(storage: &dyn Storage, files: &[Publish]) -> Result<()> {
    let mut dirs: Vec<&Path> = Vec::new();
    for f in files {
        if storage.exists(&f.staged).ctx("stat", &f.staged)? {
            verify(storage, &f.staged, f, "staged")?;
            storage.rename(&f.staged, &f.target).ctx("rename", &f.target)?;
        } else if storage.exists(&f.target).ctx("stat", &f.target)? {
            verify(storage, &f.target, f, "published")?;
        } else if f.transient {
            // Delivered and removed by its sink after an earlier publish.
            continue;
        } else {
            return Err(Error::Checkpoint {
                path: f.target.clone(),
                message: format!(
                    "committed output is missing: neither {} nor the final file exists",
                    f.staged.display()
                ),
            });
        }
        if let Some(parent) = f.target.parent()
            && !dirs.contains(&parent)
        {
            dirs.push(parent);
        }
    }
    for d in dirs {
        storage.sync_dir(d).ctx("fsync", d)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(epoch: Epoch, worker: usize, body: PartBody) -> Part {
        Part { epoch, worker, body }
    }

    fn file(name: &str) -> FileEntry {
        FileEntry { path: name.into(), size: 1, crc32: 2 }
    }

    #[test]
    fn folds_parts() {
        let t = Manifest { pipeline: "p".into(), workers: 2, key_groups: 8, ..Default::default() };
        let parts = vec![
            part(3, 0, PartBody::Offsets { source: "s".into(), offsets: vec![(0, 10), (1, 5)] }),
            part(6, 1, PartBody::Offsets { source: "s".into(), offsets: vec![(1, 9)] }),
            part(3, 0, PartBody::State { operator: "w".into(), file: file("a3") }),
            part(6, 0, PartBody::State { operator: "w".into(), file: file("a6") }),
            part(6, 1, PartBody::State { operator: "w".into(), file: file("b6") }),
        ];
        let m = next_manifest(None, &t, parts, 6, false);
        assert_eq!(m.offsets["s"][&0], 10);
        assert_eq!(m.offsets["s"][&1], 9);
        assert_eq!(m.state["w"], vec![file("a6"), file("b6")]);
        let offsets = PartBody::Offsets { source: "s".into(), offsets: vec![(0, 12)] };
        let m2 = next_manifest(Some(&m), &t, vec![part(9, 0, offsets)], 9, true);
        assert_eq!(m2.state["w"], m.state["w"]);
        assert_eq!((m2.offsets["s"][&0], m2.offsets["s"][&1]), (12, 9));
        assert!(m2.complete && m2.outputs.is_empty());
    }

    #[test]
    fn publish_is_idempotent() {
        use std::fs;
        let storage = crate::storage::LocalFs;
        let publish = |files: &[Publish]| super::publish(&storage, files);
        let dir = tempfile::tempdir().unwrap();
        let staged = dir.path().join("_staging");
        fs::create_dir(&staged).unwrap();
        fs::write(staged.join("a"), b"data").unwrap();
        let p = Publish {
            staged: staged.join("a"),
            target: dir.path().join("a"),
            size: 4,
            crc32: crc32fast::hash(b"data"),
            transient: false,
        };
        publish(std::slice::from_ref(&p)).unwrap();
        publish(std::slice::from_ref(&p)).unwrap();
        assert_eq!(fs::read(dir.path().join("a")).unwrap(), b"data");
        fs::write(dir.path().join("a"), b"datb").unwrap();
        assert!(publish(std::slice::from_ref(&p)).is_err());
        fs::remove_file(dir.path().join("a")).unwrap();
        assert!(publish(std::slice::from_ref(&p)).is_err());
        // An outbox entry its sink delivered and removed is done.
        assert!(publish(&[Publish { transient: true, ..p }]).is_ok());
    }

    #[test]
    fn a_truncated_staged_file_is_never_published() {
        use crate::storage::{FaultFs, Storage};
        let fs = FaultFs::new();
        fs.prepare_dir("/out/_staging");
        let staged = std::path::PathBuf::from("/out/_staging/a");
        let mut f = fs.create(&staged).unwrap();
        std::io::Write::write_all(&mut f, b"da").unwrap();
        let p = Publish {
            staged: staged.clone(),
            target: "/out/a".into(),
            size: 4,
            crc32: crc32fast::hash(b"data"),
            transient: false,
        };
        // Publishing renamed it silently before it was verified.
        let err = publish(&fs, std::slice::from_ref(&p)).unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }) && err.to_string().contains("/out/_staging/a"), "{err}");
        assert!(!fs.exists(std::path::Path::new("/out/a")).unwrap());
        // Same size, other bytes: the checksum catches it.
        let mut f = fs.create(&staged).unwrap();
        std::io::Write::write_all(&mut f, b"datb").unwrap();
        let err = publish(&fs, &[p]).unwrap_err().to_string();
        assert!(err.contains("crc") && err.contains("/out/_staging/a"), "{err}");
    }
}
