//! Does a checkpoint belong to this pipeline? The checks every start makes
//! before anything is read or written, as plain logic over the manifest and
//! the pipeline's [`Plan`] (its sources and stateful steps, recorded by
//! running the build function once on a dataflow that never runs).
//!
//! Refused: another group name; a source or stateful step the checkpoint has
//! and the pipeline lacks; a new source; a source whose identity (file path
//! and fingerprint, topic id and partition count) differs; a source that no
//! longer holds the records the checkpoint consumed or the end offsets a
//! bounded run recorded. Allowed to differ: the worker count, the checkpoint
//! interval, the working directory. A stateful step new to the pipeline
//! starts empty.

use std::collections::BTreeMap;
use std::path::Path;

use crate::checkpoint::manifest::Manifest;
use crate::error::{Error, Result};
use crate::source::PartitionSpec;

/// One source of the pipeline, as the plan saw it.
#[derive(Clone, Debug, PartialEq)]
pub struct SourcePlan {
    /// Its partitions with the end offsets they had when the run started
    /// (computed once: every worker of the run uses the same).
    pub specs: Vec<PartitionSpec>,
    /// Its identity ([`crate::source::Source::fingerprint`]).
    pub fingerprint: serde_json::Value,
}

/// What the pipeline consists of: its sources by name and its stateful
/// steps (windows, sinks) by id, with their kind.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Sources by name.
    pub sources: BTreeMap<String, SourcePlan>,
    /// Stateful steps, id to kind.
    pub steps: BTreeMap<String, String>,
    /// Sinks that deliver committed output elsewhere ([`crate::sink::Sink::delivers`]).
    pub delivering: Vec<String>,
}

fn refuse(state_dir: &Path, message: String) -> Error {
    Error::Checkpoint { path: state_dir.to_path_buf(), message }
}

fn list<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<String> = names.map(|n| format!("`{n}`")).collect();
    if v.is_empty() { "none".into() } else { v.join(", ") }
}

/// Checks the newest committed checkpoint `m` (in `state_dir`) against the
/// pipeline named `name` with `plan`, run bounded or not.
pub fn check_restore(m: &Manifest, plan: &Plan, name: &str, bounded: bool, state_dir: &Path) -> Result<()> {
    if m.pipeline != name {
        return Err(refuse(
            state_dir,
            format!("the checkpoint belongs to pipeline (group) `{}`, not `{name}`", m.pipeline),
        ));
    }
    let recorded: Vec<&String> = {
        let mut v: Vec<&String> = m.offsets.keys().chain(m.inputs.keys()).collect();
        v.sort();
        v.dedup();
        v
    };
    let missing: Vec<&String> = recorded.iter().copied().filter(|s| !plan.sources.contains_key(*s)).collect();
    let new: Vec<&String> = plan.sources.keys().filter(|s| !recorded.contains(s)).collect();
    if missing.len() == 1 && new.len() == 1 {
        return Err(refuse(
            state_dir,
            format!(
                "the checkpoint was taken on input `{}`, this run reads `{}`: use another state directory \
                 for another input",
                missing[0], new[0]
            ),
        ));
    }
    if let Some(s) = missing.first() {
        return Err(refuse(
            state_dir,
            format!(
                "the checkpoint has source `{s}`, which this pipeline does not read (it reads {})",
                list(plan.sources.keys())
            ),
        ));
    }
    if let Some(s) = new.first() {
        return Err(refuse(
            state_dir,
            format!(
                "source `{s}` is new: the checkpoint was taken on {} and has no offsets for it",
                list(recorded.iter().copied())
            ),
        ));
    }
    for (source, p) in &plan.sources {
        let committed = m.offsets.get(source);
        if let Some(input) = m.inputs.get(source) {
            if input.fingerprint != p.fingerprint {
                return Err(refuse(
                    state_dir,
                    format!(
                        "source `{source}` is not the input the checkpoint was taken on: recorded {}, now {}",
                        input.fingerprint, p.fingerprint
                    ),
                ));
            }
            if input.bounded != bounded {
                let was = if input.bounded { "bounded" } else { "unbounded" };
                return Err(refuse(
                    state_dir,
                    format!("source `{source}` was read {was} when the checkpoint was taken; run it {was} again"),
                ));
            }
        }
        for spec in &p.specs {
            if bounded
                && let Some(&end) = m.inputs.get(source).and_then(|i| i.ends.get(&spec.id))
                && spec.end < end
            {
                return Err(refuse(
                    state_dir,
                    format!(
                        "partition {} of `{source}` ends at offset {}, but this bounded run recorded its end at \
                         {end}: records were lost (an unsynced tail?) or the input was recreated",
                        spec.id, spec.end
                    ),
                ));
            }
            if let Some(&next) = committed.and_then(|c| c.get(&spec.id))
                && spec.end < next
            {
                return Err(refuse(
                    state_dir,
                    format!(
                        "partition {} of `{source}` ends at offset {}, but the checkpoint consumed it up to {next}: \
                         records were lost (an unsynced tail?) or the input was recreated",
                        spec.id, spec.end
                    ),
                ));
            }
        }
    }
    let mut stateful: Vec<&String> = m.state.keys().chain(m.steps.keys()).collect();
    stateful.sort();
    stateful.dedup();
    let lacking: Vec<String> = stateful
        .into_iter()
        .filter(|s| !plan.steps.contains_key(*s))
        .map(|s| match m.steps.get(s) {
            Some(kind) => format!("`{s}` ({kind})"),
            None => format!("`{s}`"),
        })
        .collect();
    if !lacking.is_empty() {
        return Err(refuse(
            state_dir,
            format!(
                "the checkpoint has state of step {}, which this pipeline lacks (its steps: {}); a step's state \
                 is kept under its name (`Flow::named`, or the default: the step's kind, `-2`, `-3`, ... for \
                 later steps of the same kind), so renaming or removing a stateful step orphans its state",
                lacking.join(", "),
                list(plan.steps.keys())
            ),
        ));
    }
    let changed: Vec<String> = m
        .steps
        .iter()
        .filter_map(|(s, was)| {
            let now = plan.steps.get(s)?;
            (now != was).then(|| format!("`{s}` was a {was} step and is now a {now} step"))
        })
        .collect();
    if !changed.is_empty() {
        return Err(refuse(
            state_dir,
            format!(
                "the checkpoint's state does not match this pipeline: {}; give the new step another name",
                changed.join(", ")
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::manifest::{FORMAT_VERSION, FileEntry, InputBound};

    fn spec(id: u32, end: u64) -> PartitionSpec {
        PartitionSpec { id, start: 0, end }
    }

    fn setup() -> (Manifest, Plan) {
        let fp = serde_json::json!({"path": "/data/in.jsonl", "size": 100});
        let mut m = Manifest { version: FORMAT_VERSION, pipeline: "g".into(), epoch: 4, ..Default::default() };
        m.offsets.insert("/data/in.jsonl".into(), BTreeMap::from([(0, 40), (1, 70)]));
        m.inputs.insert(
            "/data/in.jsonl".into(),
            InputBound { fingerprint: fp.clone(), bounded: true, ends: BTreeMap::from([(0, 50), (1, 100)]) },
        );
        m.state.insert("window-0".into(), vec![FileEntry { path: "chk/w".into(), size: 1, crc32: 0 }]);
        m.steps.insert("window-0".into(), "window".into());
        m.steps.insert("parquet-1".into(), "parquet".into());
        let mut plan = Plan::default();
        plan.sources
            .insert("/data/in.jsonl".into(), SourcePlan { specs: vec![spec(0, 50), spec(1, 100)], fingerprint: fp });
        plan.steps.insert("window-0".into(), "window".into());
        plan.steps.insert("parquet-1".into(), "parquet".into());
        (m, plan)
    }

    fn err(m: &Manifest, plan: &Plan, bounded: bool) -> String {
        match check_restore(m, plan, "g", bounded, Path::new("state")) {
            Ok(()) => panic!("accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_same_pipeline_is_accepted_with_new_steps() {
        let (m, mut plan) = setup();
        check_restore(&m, &plan, "g", true, Path::new("state")).unwrap();
        plan.steps.insert("window-2".into(), "window".into());
        check_restore(&m, &plan, "g", true, Path::new("state")).unwrap();
    }

    #[test]
    fn another_group_input_or_shape_is_refused() {
        let (m, plan) = setup();
        assert!(check_restore(&m, &plan, "other", true, Path::new("s")).unwrap_err().to_string().contains("`g`"));

        let mut other = plan.clone();
        let p = other.sources.remove("/data/in.jsonl").unwrap();
        other.sources.insert("/data/b.jsonl".into(), p.clone());
        let e = err(&m, &other, true);
        assert!(e.contains("/data/in.jsonl") && e.contains("/data/b.jsonl"), "{e}");

        let mut two = plan.clone();
        two.sources.insert("/data/b.jsonl".into(), p.clone());
        assert!(err(&m, &two, true).contains("source `/data/b.jsonl` is new"));

        let mut none = plan.clone();
        none.sources.clear();
        assert!(err(&m, &none, true).contains("does not read"));

        let mut changed = plan.clone();
        changed.sources.get_mut("/data/in.jsonl").unwrap().fingerprint = serde_json::json!({"size": 101});
        assert!(err(&m, &changed, true).contains("not the input"));

        assert!(err(&m, &plan, false).contains("bounded"));

        let mut lacking = plan.clone();
        lacking.steps.remove("parquet-1");
        assert!(err(&m, &lacking, true).contains("`parquet-1` (parquet)"));
        let mut no_window = plan.clone();
        no_window.steps.remove("window-0");
        assert!(err(&m, &no_window, true).contains("`window-0` (window)"));
        let mut retyped = plan.clone();
        retyped.steps.insert("window-0".into(), "session-window".into());
        let e = err(&m, &retyped, true);
        assert!(e.contains("`window-0` was a window step and is now a session-window step"), "{e}");
    }

    #[test]
    fn lost_records_are_refused() {
        let (m, plan) = setup();
        let mut shorter = plan.clone();
        shorter.sources.get_mut("/data/in.jsonl").unwrap().specs[1].end = 90;
        let e = err(&m, &shorter, true);
        assert!(e.contains("partition 1") && e.contains("recorded its end at 100"), "{e}");
        // Unbounded: the end must still cover what the checkpoint consumed.
        let mut m2 = m.clone();
        for i in m2.inputs.values_mut() {
            i.bounded = false;
        }
        check_restore(&m2, &shorter, "g", false, Path::new("s")).unwrap();
        shorter.sources.get_mut("/data/in.jsonl").unwrap().specs[1].end = 60;
        assert!(err(&m2, &shorter, false).contains("consumed it up to 70"));
    }
}
