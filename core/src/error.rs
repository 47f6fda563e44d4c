//! The error type of weir-core: what failed, where (file, offset, field), and
//! what was expected.

use std::path::PathBuf;

/// Result with a [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the runtime, the checkpoint store and connectors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation on a file or directory failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done (`open`, `write`, `fsync`, `rename`, ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Stored data failed validation (checksum, framing, format version).
    #[error("corrupt data in {path} at offset {offset}: {what}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Byte offset of the damage.
        offset: u64,
        /// What was expected and what was found.
        what: String,
    },
    /// A configuration value is invalid.
    #[error("invalid configuration `{field}`: {message}")]
    Config {
        /// The field or option name.
        field: String,
        /// What is wrong and what is accepted.
        message: String,
    },
    /// The checkpoint state does not fit this pipeline (different input, version, ...).
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The state directory or manifest.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A record or state could not be (de)serialized.
    #[error("encoding {what}: {message}")]
    Encoding {
        /// What was being encoded or decoded.
        what: String,
        /// The encoder's message.
        message: String,
    },
    /// Another process holds the lock on a state directory or log partition.
    #[error("{path} is locked by another process")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// A worker failed; the pipeline stopped.
    #[error("pipeline failed: {0}")]
    Pipeline(String),
}

impl Error {
    /// An [`Error::Io`] for `op` on `path`.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { op, path: path.into(), source }
    }

    /// An [`Error::Config`] naming the field.
    pub fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config { field: field.into(), message: message.into() }
    }

    /// An [`Error::Corrupt`] naming file and offset.
    pub fn corrupt(path: impl Into<PathBuf>, offset: u64, what: impl Into<String>) -> Self {
        Error::Corrupt { path: path.into(), offset, what: what.into() }
    }
}

/// Adds the file path to `std::io::Result`s.
pub trait IoContext<T> {
    /// Maps an I/O error to [`Error::Io`] with the operation and path.
    fn ctx(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(op, path, e))
    }
}
