//! Entry points of the fuzz targets in `fuzz/` (and of the test that replays
//! their corpus with a plain `cargo test`): parse untrusted checkpoint files and
//! check nothing panics. Not part of the API.

use std::path::Path;

use crate::checkpoint::Manifest;
use crate::checkpoint::state::StateReader;

/// Parses `data` as a manifest and as a state part file (reading every key group
/// as a few entry types); a manifest that parses must encode and parse again alike.
pub fn checkpoint_files(data: &[u8]) {
    if let Ok(manifest) = Manifest::decode(data, Path::new("fuzz/MANIFEST"))
        && let Ok(bytes) = manifest.encode()
    {
        let again = Manifest::decode(&bytes, Path::new("fuzz/MANIFEST"));
        assert_eq!(again.ok().as_ref(), Some(&manifest), "a re-encoded manifest parses differently");
    }
    if let Ok(reader) = StateReader::new(data, "fuzz/state") {
        let groups: Vec<u32> = reader.groups().collect();
        for group in groups {
            let _ = reader.read::<Vec<(String, u64)>>(group);
            let _ = reader.read::<Vec<(Vec<u8>, i64, f64)>>(group);
            let _ = reader.read::<std::collections::BTreeMap<u64, Vec<String>>>(group);
        }
    }
}
