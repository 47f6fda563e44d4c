//! Checkpoints: consumed offsets, operator state and staged sink output,
//! committed together by one `MANIFEST` rename.
//!
//! - [`manifest`]: what a checkpoint holds and its checksummed encoding.
//! - [`protocol`]: the pure logic that folds part descriptors into the next
//!   manifest and publishes staged files; the same code runs at commit time and
//!   at recovery, and is unit-tested without a disk.
//! - [`store`]: where parts and manifests live (a local directory), with the
//!   durability rules of the commit (fsync before rename, directory fsync
//!   after it).
//! - [`identity`]: whether a checkpoint belongs to this pipeline (group,
//!   sources and their identity, stateful steps), checked at every start.
//! - [`state`]: the part-file format of keyed state, indexed by key group so a
//!   restart with another worker count reads only the groups it owns.

pub mod identity;
pub mod manifest;
pub mod protocol;
pub mod state;
pub mod store;

pub use manifest::{FileEntry, Manifest, Publish};
pub use protocol::{Part, PartBody};
pub use store::{CheckpointStore, LocalStore};
