//! The window operator: keyed state per window, fired by the watermark,
//! checkpointed per key group.

use std::collections::BTreeMap;
use std::hash::Hash;
use std::sync::atomic::Ordering;

use rustc_hash::FxHashMap;
use serde::Serialize;
use serde::de::DeserializeOwned;
use timely::ExchangeData;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use weir_core::checkpoint::state::{GLOBAL_GROUP, StateReader, StateWriter};
use weir_core::checkpoint::{FileEntry, Part, PartBody};
use weir_core::flow::VecOutput;
use weir_core::flow::WatermarkUpdate;
use weir_core::record::{DeadLetter, EventTime, Meta, Rec};
use weir_core::runtime::epochs::EpochDriver;
use weir_core::time::Epoch;
use weir_core::{Error, Flow, Result};

use super::{Tumbling, WindowResult};
use crate::aggregate::Aggregator;

/// A keyed flow with a window spec; `aggregate` builds the operator.
pub struct Windowed<'s, K, T> {
    pub(super) flow: Flow<'s, (K, T)>,
    pub(super) spec: Tumbling,
}

enum Input<K, T> {
    Records(Vec<Rec<(K, T)>>),
    Watermarks(Vec<WatermarkUpdate>),
}

/// Keyed window state of one worker.
struct WindowState<K, Acc> {
    /// Open windows by start, then key.
    windows: BTreeMap<EventTime, FxHashMap<K, Acc>>,
    /// Latest watermark per input partition.
    table: Vec<EventTime>,
    /// Minimum of `table`: windows ending at or below it have fired.
    watermark: EventTime,
}

type GroupEntries<K, Acc> = Vec<(EventTime, K, Acc)>;

impl<'s, K, T> Windowed<'s, K, T>
where
    K: ExchangeData + Hash + Eq + Clone + Serialize + DeserializeOwned,
    T: ExchangeData + Serialize,
{
    /// Aggregates every window with `agg`; emits one [`WindowResult`] per key and
    /// window when the watermark passes the window's end.
    pub fn aggregate<A: Aggregator<T>>(self, agg: A) -> Result<Flow<'s, WindowResult<K, A::Out>>>
    where
        A::Out: 'static,
    {
        let Windowed { flow, spec } = self;
        let ctx = flow.ctx.clone();
        let (Some(info), Some(wm_stream)) = (flow.input.clone(), flow.watermarks.clone()) else {
            return Err(Error::config(
                "window",
                "needs event times: call .event_time(...) on the flow before .window(...)",
            ));
        };
        let op = ctx.operator_id("window");
        let worker = ctx.worker();
        let peers = ctx.peers();
        let groups = ctx.key_groups();
        let store = ctx.store();
        let failure = ctx.failure();
        let source = info.source.clone();
        let fired = ctx.counter(&format!("{op}.fired"));
        let late = ctx.counter("dead_letters.late");
        let size = spec.size;

        // Restore this worker's key groups (any worker count wrote them).
        let mut state: WindowState<K, A::Acc> = WindowState {
            windows: BTreeMap::new(),
            table: vec![EventTime::MIN; info.partitions as usize],
            watermark: EventTime::MIN,
        };
        if let (Some(m), Some(store)) = (ctx.restored(), store.as_ref())
            && let Some(files) = m.state.get(&op)
        {
            let mine = groups.groups_of(worker, peers);
            for file in files {
                let bytes = store.read_part(file)?;
                let reader = StateReader::new(&bytes, &file.path)?;
                if let Some((table, _)) = reader.read::<(Vec<EventTime>, EventTime)>(GLOBAL_GROUP)? {
                    for (mine, theirs) in state.table.iter_mut().zip(table) {
                        *mine = (*mine).max(theirs);
                    }
                }
                for g in reader.groups().filter(|g| mine.contains(g)).collect::<Vec<_>>() {
                    let entries: GroupEntries<K, A::Acc> = reader.read(g)?.unwrap_or_default();
                    for (start, key, acc) in entries {
                        state.windows.entry(start).or_default().insert(key, acc);
                    }
                }
            }
            state.watermark = state.table.iter().copied().min().unwrap_or(EventTime::MAX);
        }

        let route = move |r: &Rec<(K, T)>| groups.owner(groups.group_of(&r.value.0), peers) as u64;
        let mut builder = OperatorBuilder::new(format!("Window({op})"), ctx.scope());
        let mut records = builder.new_input(flow.stream, Exchange::new(route));
        let mut wms = builder.new_input(wm_stream, Pipeline);
        let (res_out, results) = builder.new_output::<Vec<Rec<WindowResult<K, A::Out>>>>();
        let (part_out, parts) = builder.new_output::<Vec<Part>>();
        let (late_out, lates) = builder.new_output::<Vec<DeadLetter>>();
        let mut res_out: VecOutput<Rec<WindowResult<K, A::Out>>> = OutputBuilder::from(res_out);
        let mut part_out: VecOutput<Part> = OutputBuilder::from(part_out);
        let mut late_out: VecOutput<DeadLetter> = OutputBuilder::from(late_out);
        let mut driver: EpochDriver<Input<K, T>> = EpochDriver::new(ctx.start_epoch(), ctx.schedule());
        let part_name = format!("{op}.w{worker}.part");

        builder.build(move |caps| {
            let mut caps: Option<Vec<_>> = Some(caps);
            let mut last_snapshot: Option<FileEntry> = None;
            let mut dirty = true;
            move |frontiers| {
                records.for_each(|cap, data: &mut Vec<Rec<(K, T)>>| {
                    if let Some(&t) = cap.least() {
                        driver.push(t, Input::Records(std::mem::take(data)));
                    }
                });
                wms.for_each(|cap, data: &mut Vec<WatermarkUpdate>| {
                    if let Some(&t) = cap.least() {
                        driver.push(t, Input::Watermarks(std::mem::take(data)));
                    }
                });
                let Some(held) = caps.as_mut() else { return };
                if failure.aborted() {
                    return;
                }
                let f = frontiers.iter().flat_map(|f| f.frontier().iter().copied().collect::<Vec<_>>()).min();
                let mut res_h = res_out.activate();
                let mut part_h = part_out.activate();
                let mut late_h = late_out.activate();
                let mut run = || -> Result<()> {
                    let mut fire = |state: &mut WindowState<K, A::Acc>, epoch: Epoch, upto: EventTime| {
                        let cap = held[0].delayed(&epoch);
                        let mut session = res_h.session(&cap);
                        while let Some(entry) = state.windows.first_entry() {
                            let start = *entry.key();
                            if start.saturating_add(size) > upto {
                                break;
                            }
                            let keys = entry.remove();
                            fired.fetch_add(keys.len() as u64, Ordering::Relaxed);
                            let end = start + size;
                            for (key, acc) in keys {
                                session.give(Rec {
                                    meta: Meta::derived(end - 1),
                                    value: WindowResult { key, start, end, value: agg.finish(&acc) },
                                });
                            }
                        }
                    };
                    for step in driver.advance(f) {
                        let epoch = step.epoch;
                        for input in step.data {
                            dirty = true;
                            match input {
                                Input::Records(recs) => {
                                    let mut lates = Vec::new();
                                    for r in recs {
                                        let t = r.meta.event_time;
                                        let start = spec.start_of(t);
                                        if start.saturating_add(size) <= state.watermark {
                                            lates.push(r);
                                            continue;
                                        }
                                        let (key, value) = &r.value;
                                        let window = state.windows.entry(start).or_default();
                                        match window.get_mut(key) {
                                            Some(acc) => agg.add(acc, value),
                                            None => {
                                                let mut acc = agg.init();
                                                agg.add(&mut acc, value);
                                                window.insert(key.clone(), acc);
                                            }
                                        }
                                    }
                                    if !lates.is_empty() {
                                        late.fetch_add(lates.len() as u64, Ordering::Relaxed);
                                        let cap = held[2].delayed(&epoch);
                                        let mut session = late_h.session(&cap);
                                        for r in lates {
                                            session.give(DeadLetter {
                                                payload: serde_json::to_vec(&r.value.1).unwrap_or_default(),
                                                error: format!(
                                                    "late event: time {} is behind the watermark {}",
                                                    r.meta.event_time, state.watermark
                                                ),
                                                stage: "late".into(),
                                                source: source.clone(),
                                                partition: r.meta.partition,
                                                offset: r.meta.offset,
                                                event_time: Some(r.meta.event_time),
                                            });
                                        }
                                    }
                                }
                                Input::Watermarks(updates) => {
                                    for u in updates {
                                        if let Some(slot) = state.table.get_mut(u.partition as usize) {
                                            *slot = (*slot).max(u.watermark);
                                        }
                                    }
                                    let wm = state.table.iter().copied().min().unwrap_or(EventTime::MAX);
                                    if wm > state.watermark {
                                        state.watermark = wm;
                                        fire(&mut state, epoch, wm);
                                    }
                                }
                            }
                        }
                        if step.checkpoint
                            && let Some(store) = &store
                        {
                            let file = match (&last_snapshot, dirty) {
                                (Some(file), false) => file.clone(),
                                _ => {
                                    let bytes = snapshot(&state, groups)?;
                                    store.write_part(epoch, &part_name, &bytes)?
                                }
                            };
                            dirty = false;
                            last_snapshot = Some(file.clone());
                            let cap = held[1].delayed(&epoch);
                            part_h.session(&cap).give(Part {
                                epoch,
                                worker,
                                body: PartBody::State { operator: op.clone(), file },
                            });
                        }
                    }
                    if f.is_none() {
                        // Input finished: flush every window, then the final snapshot.
                        let at = *held[0].time();
                        fire(&mut state, at, EventTime::MAX);
                        if let Some(store) = &store {
                            let bytes = snapshot(&state, groups)?;
                            let file = store.write_part(at, &format!("{part_name}.final"), &bytes)?;
                            let cap = held[1].delayed(&at);
                            part_h.session(&cap).give(Part {
                                epoch: at,
                                worker,
                                body: PartBody::State { operator: op.clone(), file },
                            });
                        }
                    }
                    Ok(())
                };
                if let Err(e) = run() {
                    failure.fail(e);
                    return;
                }
                drop((res_h, part_h, late_h));
                match f {
                    Some(f) => {
                        for c in held.iter_mut() {
                            if f > *c.time() {
                                c.downgrade(&f);
                            }
                        }
                    }
                    None => caps = None,
                }
            }
        });
        ctx.register_parts(parts);
        ctx.register_dead_letters(lates);
        Ok(Flow { stream: results, ctx, input: None, watermarks: None })
    }
}

fn snapshot<K: Hash + Serialize + Clone, Acc: Serialize + Clone>(
    state: &WindowState<K, Acc>,
    groups: weir_core::keygroup::KeyGroups,
) -> Result<Vec<u8>> {
    let mut by_group: BTreeMap<u32, GroupEntries<&K, &Acc>> = BTreeMap::new();
    for (&start, keys) in &state.windows {
        for (key, acc) in keys {
            by_group.entry(groups.group_of(key)).or_default().push((start, key, acc));
        }
    }
    let mut w = StateWriter::default();
    w.group(GLOBAL_GROUP, &(&state.table, state.watermark))?;
    for (g, entries) in by_group {
        w.group(g, &entries)?;
    }
    w.finish()
}
