//! Applying input in epoch order.
//!
//! Data of epoch `e + 1` can arrive before the frontier passes `e`. A snapshot
//! for `e` must hold exactly the effect of epochs `<= e`, so stateful operators
//! and sinks stash input by epoch and apply it in order once the frontier has
//! passed, stopping at every checkpoint epoch to snapshot. [`EpochDriver`] is
//! that loop, shared by every stateful operator.

use std::collections::BTreeMap;

use timely::dataflow::operators::Capability;

use crate::time::{CheckpointSchedule, Epoch};

/// Moves held capabilities forward to the input frontier `f`, or drops them
/// when the input is finished (`None`). Never moves one backwards: an
/// operator's first view of its frontier can lag the times it already holds.
pub fn follow_frontier(caps: &mut Option<Vec<Capability<Epoch>>>, f: Option<Epoch>) {
    match (caps.as_mut(), f) {
        (Some(held), Some(f)) => {
            for c in held.iter_mut().filter(|c| f > *c.time()) {
                c.downgrade(&f);
            }
        }
        (_, None) => *caps = None,
        (None, Some(_)) => {}
    }
}

/// Stashes input by epoch and releases it in epoch order.
#[derive(Debug)]
pub struct EpochDriver<D> {
    stash: BTreeMap<Epoch, Vec<D>>,
    done: Epoch,
    schedule: CheckpointSchedule,
}

/// One step of [`EpochDriver::advance`].
#[derive(Debug)]
pub struct EpochStep<D> {
    /// The epoch.
    pub epoch: Epoch,
    /// Its input (possibly empty).
    pub data: Vec<D>,
    /// Whether a checkpoint follows this epoch.
    pub checkpoint: bool,
}

impl<D> EpochDriver<D> {
    /// A driver whose epochs before `start` are already reflected in restored state.
    pub fn new(start: Epoch, schedule: CheckpointSchedule) -> Self {
        EpochDriver { stash: BTreeMap::new(), done: start, schedule }
    }

    /// Stashes input of `epoch`.
    pub fn push(&mut self, epoch: Epoch, data: D) {
        self.stash.entry(epoch).or_default().push(data);
    }

    /// The first epoch not yet released.
    pub fn done(&self) -> Epoch {
        self.done
    }

    /// Whether input is waiting.
    pub fn has_pending(&self) -> bool {
        !self.stash.is_empty()
    }

    /// Releases, in order, every epoch before `frontier` that has input or ends
    /// with a checkpoint (`None`: the input is finished; everything is released).
    pub fn advance(&mut self, frontier: Option<Epoch>) -> Vec<EpochStep<D>> {
        let until = frontier.unwrap_or(Epoch::MAX);
        if until <= self.done {
            return Vec::new();
        }
        let mut steps: Vec<EpochStep<D>> = Vec::new();
        let later = match frontier {
            Some(f) => self.stash.split_off(&f),
            None => BTreeMap::new(),
        };
        let ready = std::mem::replace(&mut self.stash, later);
        let mut ckpts =
            if frontier.is_some() { self.schedule.between(self.done, until).collect::<Vec<_>>() } else { Vec::new() }
                .into_iter()
                .peekable();
        for (epoch, data) in ready {
            while let Some(&c) = ckpts.peek().filter(|&&c| c < epoch) {
                steps.push(EpochStep { epoch: c, data: Vec::new(), checkpoint: true });
                ckpts.next();
            }
            let checkpoint = ckpts.peek() == Some(&epoch);
            if checkpoint {
                ckpts.next();
            }
            steps.push(EpochStep { epoch, data, checkpoint });
        }
        for c in ckpts {
            steps.push(EpochStep { epoch: c, data: Vec::new(), checkpoint: true });
        }
        self.done = until;
        steps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_in_order_with_checkpoints() {
        let mut d = EpochDriver::new(0, CheckpointSchedule { every: Some(4) });
        d.push(5, 'b');
        d.push(2, 'a');
        d.push(9, 'c');
        let steps: Vec<_> = d.advance(Some(9)).into_iter().map(|s| (s.epoch, s.data, s.checkpoint)).collect();
        assert_eq!(steps, vec![(2, vec!['a'], false), (4, vec![], true), (5, vec!['b'], false), (8, vec![], true)]);
        assert!(d.advance(Some(9)).is_empty());
        let rest: Vec<_> = d.advance(None).into_iter().map(|s| (s.epoch, s.data)).collect();
        assert_eq!(rest, vec![(9, vec!['c'])]);
    }
}
