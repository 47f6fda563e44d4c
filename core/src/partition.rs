//! Partition assignment of a consumer group: which worker of the dataflow reads
//! which partition of the input.
//!
//! Every worker computes the [`Assignment`] itself, from the same inputs (the
//! partition list, the worker count and the previous assignment kept in the
//! checkpoint), so there is no coordinator round-trip and the computation is
//! deterministic: no randomness, no hash-map iteration order, and the order of
//! the partition list does not matter. Every assignor balances: each worker
//! ends with `floor(n / w)` or `ceil(n / w)` of the `n` partitions.
//! [`Assignor::Sticky`] also looks at the previous assignment and, after a
//! rescale or a change of the partition list, moves as few partitions as a
//! balanced assignment allows.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::record::PartitionId;

/// How the partitions of a consumer group are spread over its workers.
///
/// ```
/// use weir_core::partition::Assignor;
///
/// let assignment = Assignor::Range.assign(&[0, 1, 2, 3, 4], 3, None)?;
/// assert_eq!(assignment.partitions_of(0), &[0, 1]);
/// assert_eq!(assignment.partitions_of(1), &[2, 3]);
/// assert_eq!(assignment.partitions_of(2), &[4]);
/// # Ok::<(), weir_core::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Assignor {
    /// Contiguous blocks of the sorted partitions; the first `n % w` workers
    /// get one partition more (5 partitions over 3 workers: `[0, 1]`, `[2, 3]`, `[4]`).
    /// The default: it is what Kafka consumers do, and what `Sticky` starts from.
    #[default]
    Range,
    /// The `i`-th partition in ascending order goes to worker `i % w`.
    #[serde(alias = "round-robin")]
    RoundRobin,
    /// Like `Range` the first time; after that every partition stays with its
    /// previous owner unless that owner is gone or over its quota, so a rescale
    /// moves as few partitions as possible.
    Sticky,
}

impl Assignor {
    /// The name used in configuration and on the command line (`range`, `round_robin`, `sticky`).
    pub fn name(self) -> &'static str {
        match self {
            Assignor::Range => "range",
            Assignor::RoundRobin => "round_robin",
            Assignor::Sticky => "sticky",
        }
    }

    /// Assigns `partitions` (in any order, each listed once) to `workers` workers.
    ///
    /// `previous` is the assignment the group had before (from the last
    /// checkpoint, possibly for another worker count and another partition
    /// list); only [`Assignor::Sticky`] looks at it.
    ///
    /// Sticky keeps a partition with its previous owner when that owner is
    /// still a worker (its index is below `workers`) and stays within its
    /// quota; a worker that held more than its quota keeps its lowest
    /// partitions. Everything else (new partitions, those of removed workers,
    /// the surplus) is then handed out in ascending order, each to the
    /// least-loaded worker, ties to the lowest index. This moves the minimum
    /// number of partitions a balanced assignment allows.
    ///
    /// Fails when `workers` is 0 or a partition is listed twice.
    pub fn assign(
        &self,
        partitions: &[PartitionId],
        workers: usize,
        previous: Option<&Assignment>,
    ) -> Result<Assignment> {
        if workers == 0 {
            return Err(Error::config("workers", "a consumer group needs at least one worker, got 0"));
        }
        let mut sorted = partitions.to_vec();
        sorted.sort_unstable();
        if let Some(pair) = sorted.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(Error::config("partitions", format!("partition {} is listed twice", pair[0])));
        }
        let lists = match (self, previous) {
            (Assignor::Range, _) | (Assignor::Sticky, None) => range(&sorted, workers),
            (Assignor::RoundRobin, _) => round_robin(&sorted, workers),
            (Assignor::Sticky, Some(previous)) => sticky(&sorted, workers, previous),
        };
        Assignment::from_workers(lists)
    }
}

impl fmt::Display for Assignor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Assignor {
    type Err = Error;

    /// Parses `range`, `round_robin` (or `round-robin`) and `sticky`, in any case.
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "range" => Ok(Assignor::Range),
            "round_robin" | "round-robin" => Ok(Assignor::RoundRobin),
            "sticky" => Ok(Assignor::Sticky),
            _ => Err(Error::config(
                "assignor",
                format!("unknown assignor `{s}`, expected `range`, `round_robin` or `sticky`"),
            )),
        }
    }
}

/// The number of partitions every worker gets: `base`, and `base + 1` for `extra` of them.
fn quotas(partitions: usize, workers: usize) -> (usize, usize) {
    (partitions / workers, partitions % workers)
}

fn range(sorted: &[PartitionId], workers: usize) -> Vec<Vec<PartitionId>> {
    let (base, extra) = quotas(sorted.len(), workers);
    let mut rest = sorted;
    (0..workers)
        .map(|worker| {
            let (block, tail) = rest.split_at(base + usize::from(worker < extra));
            rest = tail;
            block.to_vec()
        })
        .collect()
}

fn round_robin(sorted: &[PartitionId], workers: usize) -> Vec<Vec<PartitionId>> {
    let mut lists = vec![Vec::new(); workers];
    for (i, &partition) in sorted.iter().enumerate() {
        lists[i % workers].push(partition);
    }
    lists
}

fn sticky(sorted: &[PartitionId], workers: usize, previous: &Assignment) -> Vec<Vec<PartitionId>> {
    let (base, extra) = quotas(sorted.len(), workers);
    // Each surviving worker starts with its previous partitions that still exist.
    let mut lists: Vec<Vec<PartitionId>> = (0..workers)
        .map(|worker| {
            let mut kept = previous.partitions_of(worker).to_vec();
            kept.retain(|p| sorted.binary_search(p).is_ok());
            kept
        })
        .collect();

    // Partitions no surviving worker keeps: new ones and those of removed workers...
    let mut pool: Vec<PartitionId> =
        sorted.iter().copied().filter(|&p| previous.owner_of(p).is_none_or(|owner| owner >= workers)).collect();
    // ...and the surplus of workers over their quota. Any worker over `base`
    // gains exactly one kept partition from a `base + 1` quota, so which of
    // them get the `extra` larger quotas does not change how many move: the
    // lowest indices, to stay simple.
    let mut larger_quotas = extra;
    for kept in &mut lists {
        if kept.len() > base {
            let quota = if larger_quotas > 0 {
                larger_quotas -= 1;
                base + 1
            } else {
                base
            };
            pool.extend(kept.drain(quota..));
        }
    }
    pool.sort_unstable();

    // Least-loaded first, ties to the lowest index. While partitions remain the
    // least load is at most `base`, so nobody ends above `base + 1`, and at
    // most `extra` workers reach it: the result is balanced.
    let mut loads: BinaryHeap<Reverse<(usize, usize)>> =
        lists.iter().enumerate().map(|(worker, kept)| Reverse((kept.len(), worker))).collect();
    for partition in pool {
        if let Some(Reverse((load, worker))) = loads.pop() {
            lists[worker].push(partition);
            loads.push(Reverse((load + 1, worker)));
        }
    }
    for list in &mut lists {
        list.sort_unstable();
    }
    lists
}

/// Which worker owns which partition: for each worker, its partitions in ascending order.
///
/// Serialized (for checkpoints) as the list of each worker's partitions, and
/// validated when read back.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "Vec<Vec<PartitionId>>", into = "Vec<Vec<PartitionId>>")]
pub struct Assignment {
    /// For each worker, its partitions in ascending order.
    workers: Vec<Vec<PartitionId>>,
    /// Every assigned partition with its owner, by ascending partition: the owner lookup.
    owners: Vec<(PartitionId, usize)>,
}

impl Assignment {
    /// An assignment from each worker's partitions (in any order), for
    /// example one read back from a checkpoint.
    ///
    /// Fails when a partition appears twice.
    pub fn from_workers(workers: Vec<Vec<PartitionId>>) -> Result<Self> {
        let mut workers = workers;
        let mut owners = Vec::with_capacity(workers.iter().map(Vec::len).sum());
        for (worker, partitions) in workers.iter_mut().enumerate() {
            partitions.sort_unstable();
            owners.extend(partitions.iter().map(|&p| (p, worker)));
        }
        owners.sort_unstable();
        if let Some(pair) = owners.windows(2).find(|pair| pair[0].0 == pair[1].0) {
            let (partition, first, second) = (pair[0].0, pair[0].1, pair[1].1);
            let owners = if first == second {
                format!("twice to worker {first}")
            } else {
                format!("to both worker {first} and worker {second}")
            };
            return Err(Error::config("assignment", format!("partition {partition} is assigned {owners}")));
        }
        Ok(Assignment { workers, owners })
    }

    /// The number of workers.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// The partitions of `worker`, in ascending order; empty for a worker that
    /// is not part of this assignment.
    pub fn partitions_of(&self, worker: usize) -> &[PartitionId] {
        self.workers.get(worker).map_or(&[], Vec::as_slice)
    }

    /// The worker that owns `partition`, or `None` when it is not assigned.
    pub fn owner_of(&self, partition: PartitionId) -> Option<usize> {
        self.owners.binary_search_by_key(&partition, |&(p, _)| p).ok().map(|i| self.owners[i].1)
    }

    /// Every assigned partition with its owner, by ascending partition.
    pub fn iter(&self) -> impl Iterator<Item = (PartitionId, usize)> + '_ {
        self.owners.iter().copied()
    }

    /// The number of assigned partitions.
    pub fn len(&self) -> usize {
        self.owners.len()
    }

    /// Whether no partition is assigned.
    pub fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }

    /// How many partitions changed owner since `previous`: those that had an
    /// owner there and have another one here (new partitions do not count).
    pub fn moves_from(&self, previous: &Assignment) -> usize {
        self.owners
            .iter()
            .filter(|&&(partition, worker)| previous.owner_of(partition).is_some_and(|owner| owner != worker))
            .count()
    }
}

impl TryFrom<Vec<Vec<PartitionId>>> for Assignment {
    type Error = Error;

    fn try_from(workers: Vec<Vec<PartitionId>>) -> Result<Self> {
        Assignment::from_workers(workers)
    }
}

impl From<Assignment> for Vec<Vec<PartitionId>> {
    fn from(assignment: Assignment) -> Self {
        assignment.workers
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALL: [Assignor; 3] = [Assignor::Range, Assignor::RoundRobin, Assignor::Sticky];

    fn lists(assignment: &Assignment) -> Vec<Vec<PartitionId>> {
        assignment.clone().into()
    }

    /// Every partition exactly once, and every worker within one of the others.
    fn assert_valid(assignment: &Assignment, partitions: &[PartitionId], workers: usize) {
        assert_eq!(assignment.workers(), workers);
        let mut all: Vec<PartitionId> = lists(assignment).concat();
        all.sort_unstable();
        let mut expected = partitions.to_vec();
        expected.sort_unstable();
        assert_eq!(all, expected, "every partition assigned exactly once");
        let loads: Vec<usize> = (0..workers).map(|w| assignment.partitions_of(w).len()).collect();
        let (min, max) = (loads.iter().min(), loads.iter().max());
        assert!(max.zip(min).is_none_or(|(max, min)| max - min <= 1), "unbalanced: {loads:?}");
        for worker in 0..workers {
            let mine = assignment.partitions_of(worker);
            assert!(mine.windows(2).all(|pair| pair[0] < pair[1]), "not sorted: {mine:?}");
            for &p in mine {
                assert_eq!(assignment.owner_of(p), Some(worker));
            }
        }
    }

    /// The fewest partitions any balanced assignment of `partitions` over
    /// `workers` must move from `previous`. Worker `w` can keep at most
    /// `min(k_w, quota_w)` of the `k_w` partitions it held that still exist;
    /// quotas are `base`, plus one for `extra` workers, and a larger quota
    /// helps exactly the workers with `k_w > base`, by one each. Everything
    /// else that had an owner moves.
    fn minimum_moves(partitions: &[PartitionId], workers: usize, previous: &Assignment) -> usize {
        let (base, extra) = quotas(partitions.len(), workers);
        let had_owner = partitions.iter().filter(|&&p| previous.owner_of(p).is_some()).count();
        let held: Vec<usize> =
            (0..workers).map(|w| partitions.iter().filter(|&&p| previous.owner_of(p) == Some(w)).count()).collect();
        let over = held.iter().filter(|&&k| k > base).count();
        let keepable: usize = held.iter().map(|&k| k.min(base)).sum::<usize>() + over.min(extra);
        had_owner - keepable
    }

    #[test]
    fn range_gives_the_first_workers_one_more() {
        let a = Assignor::Range.assign(&[4, 2, 0, 3, 1], 3, None).unwrap();
        assert_eq!(lists(&a), vec![vec![0, 1], vec![2, 3], vec![4]]);
        assert_eq!(a.owner_of(3), Some(1));
        assert_eq!(a.owner_of(5), None);
        assert_eq!(a.partitions_of(3), &[] as &[PartitionId]);
    }

    #[test]
    fn round_robin_deals_in_turn() {
        let a = Assignor::RoundRobin.assign(&[0, 1, 2, 3, 4], 3, None).unwrap();
        assert_eq!(lists(&a), vec![vec![0, 3], vec![1, 4], vec![2]]);
        // Positions in the sorted list, not ids, so sparse ids stay balanced.
        let a = Assignor::RoundRobin.assign(&[30, 10, 20, 40], 2, None).unwrap();
        assert_eq!(lists(&a), vec![vec![10, 30], vec![20, 40]]);
    }

    #[test]
    fn more_workers_than_partitions() {
        for assignor in ALL {
            let a = assignor.assign(&[7, 8], 4, None).unwrap();
            assert_valid(&a, &[7, 8], 4);
            assert_eq!(lists(&a), vec![vec![7], vec![8], vec![], vec![]]);
        }
    }

    #[test]
    fn no_partitions() {
        for assignor in ALL {
            let a = assignor.assign(&[], 3, None).unwrap();
            assert_valid(&a, &[], 3);
            assert!(a.is_empty());
        }
    }

    #[test]
    fn every_assignor_balances_and_assigns_each_once() {
        for assignor in ALL {
            for n in 0..40u32 {
                let partitions: Vec<PartitionId> = (0..n).map(|i| i * 3 + 1).collect();
                for workers in 1..12 {
                    let a = assignor.assign(&partitions, workers, None).unwrap();
                    assert_valid(&a, &partitions, workers);
                }
            }
        }
    }

    #[test]
    fn zero_workers_is_a_config_error() {
        for assignor in ALL {
            let err = assignor.assign(&[0, 1], 0, None).unwrap_err();
            assert!(matches!(&err, Error::Config { field, .. } if field == "workers"), "{err}");
        }
    }

    #[test]
    fn duplicate_partition_is_a_config_error() {
        let err = Assignor::Range.assign(&[0, 3, 1, 3], 2, None).unwrap_err();
        assert_eq!(err.to_string(), "invalid configuration `partitions`: partition 3 is listed twice");
    }

    #[test]
    fn sticky_without_previous_is_range() {
        let partitions: Vec<PartitionId> = (0..11).collect();
        for workers in 1..6 {
            assert_eq!(
                Assignor::Sticky.assign(&partitions, workers, None).unwrap(),
                Assignor::Range.assign(&partitions, workers, None).unwrap(),
            );
        }
    }

    #[test]
    fn sticky_keeps_a_balanced_assignment() {
        let partitions: Vec<PartitionId> = (0..10).collect();
        let previous = Assignor::RoundRobin.assign(&partitions, 3, None).unwrap();
        let next = Assignor::Sticky.assign(&partitions, 3, Some(&previous)).unwrap();
        assert_eq!(next, previous);
    }

    #[test]
    fn sticky_scale_up_moves_only_to_the_new_worker() {
        let partitions: Vec<PartitionId> = (0..6).collect();
        let previous = Assignor::Range.assign(&partitions, 2, None).unwrap();
        let next = Assignor::Sticky.assign(&partitions, 3, Some(&previous)).unwrap();
        // Each old worker gives up its highest partition.
        assert_eq!(lists(&next), vec![vec![0, 1], vec![3, 4], vec![2, 5]]);
        assert_eq!(next.moves_from(&previous), 2);
    }

    #[test]
    fn sticky_scale_down_hands_out_the_removed_workers_partitions() {
        let partitions: Vec<PartitionId> = (0..5).collect();
        let previous = Assignor::Range.assign(&partitions, 3, None).unwrap();
        let next = Assignor::Sticky.assign(&partitions, 2, Some(&previous)).unwrap();
        assert_eq!(lists(&next), vec![vec![0, 1, 4], vec![2, 3]]);
        assert_eq!(next.moves_from(&previous), 1);
    }

    #[test]
    fn sticky_with_new_and_removed_partitions() {
        let previous = Assignment::from_workers(vec![vec![0, 1, 2], vec![3, 4, 5]]).unwrap();
        // 1 and 2 are gone, 6 and 7 are new.
        let next = Assignor::Sticky.assign(&[0, 3, 4, 5, 6, 7], 2, Some(&previous)).unwrap();
        assert_eq!(lists(&next), vec![vec![0, 6, 7], vec![3, 4, 5]]);
        assert_eq!(next.moves_from(&previous), 0);
    }

    #[test]
    fn from_workers_rejects_a_partition_owned_twice() {
        let err = Assignment::from_workers(vec![vec![0, 1], vec![2, 1]]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid configuration `assignment`: partition 1 is assigned to both worker 0 and worker 1"
        );
        let err = Assignment::from_workers(vec![vec![2, 2]]).unwrap_err();
        assert!(err.to_string().contains("partition 2 is assigned twice to worker 0"), "{err}");
    }

    #[test]
    fn assignment_serde_round_trip_validates() {
        let a = Assignor::Range.assign(&[0, 1, 2, 3, 4], 3, None).unwrap();
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, "[[0,1],[2,3],[4]]");
        assert_eq!(serde_json::from_str::<Assignment>(&json).unwrap(), a);
        assert!(serde_json::from_str::<Assignment>("[[0,1],[1]]").is_err());
    }

    #[test]
    fn assignor_names() {
        for assignor in ALL {
            assert_eq!(assignor.to_string().parse::<Assignor>().unwrap(), assignor);
            let json = serde_json::to_string(&assignor).unwrap();
            assert_eq!(json, format!("\"{assignor}\""));
            assert_eq!(serde_json::from_str::<Assignor>(&json).unwrap(), assignor);
        }
        assert_eq!("round-robin".parse::<Assignor>().unwrap(), Assignor::RoundRobin);
        assert_eq!("Sticky".parse::<Assignor>().unwrap(), Assignor::Sticky);
        assert_eq!(serde_json::from_str::<Assignor>("\"round-robin\"").unwrap(), Assignor::RoundRobin);
        let err = "hash".parse::<Assignor>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid configuration `assignor`: unknown assignor `hash`, expected `range`, `round_robin` or `sticky`"
        );
        assert_eq!(Assignor::default(), Assignor::Range);
    }

    fn any_assignor() -> impl Strategy<Value = Assignor> {
        prop_oneof![Just(Assignor::Range), Just(Assignor::RoundRobin), Just(Assignor::Sticky)]
    }

    proptest! {
        /// A rescale from `w1` to `w2` workers (and from `n1` to `n2` partitions)
        /// moves exactly the minimum, stays balanced, and is deterministic.
        #[test]
        fn sticky_rescale_moves_the_minimum(
            n1 in 0u32..200,
            n2 in 0u32..200,
            w1 in 1usize..16,
            w2 in 1usize..16,
            first in any_assignor(),
        ) {
            let before: Vec<PartitionId> = (0..n1).collect();
            let after: Vec<PartitionId> = (0..n2).collect();
            let previous = first.assign(&before, w1, None).unwrap();
            let next = Assignor::Sticky.assign(&after, w2, Some(&previous)).unwrap();
            assert_valid(&next, &after, w2);
            prop_assert_eq!(next.moves_from(&previous), minimum_moves(&after, w2, &previous));
            let mut reversed = after.clone();
            reversed.reverse();
            prop_assert_eq!(&Assignor::Sticky.assign(&reversed, w2, Some(&previous)).unwrap(), &next);
            // Same inputs again: nothing moves.
            let again = Assignor::Sticky.assign(&after, w2, Some(&next)).unwrap();
            prop_assert_eq!(&again, &next);
        }

        /// The same from any previous assignment, however unbalanced, with
        /// partitions appearing and disappearing.
        #[test]
        fn sticky_from_any_previous_moves_the_minimum(
            owned in proptest::collection::btree_map(0u32..300, 0usize..20, 0..200),
            after in proptest::collection::btree_set(0u32..300, 0..200),
            workers in 1usize..16,
        ) {
            let mut lists = vec![Vec::new(); owned.values().max().map_or(0, |&w| w + 1)];
            for (&partition, &worker) in &owned {
                lists[worker].push(partition);
            }
            let previous = Assignment::from_workers(lists).unwrap();
            let after: Vec<PartitionId> = after.into_iter().collect();
            let next = Assignor::Sticky.assign(&after, workers, Some(&previous)).unwrap();
            assert_valid(&next, &after, workers);
            prop_assert_eq!(next.moves_from(&previous), minimum_moves(&after, workers, &previous));
            prop_assert_eq!(&Assignor::Sticky.assign(&after, workers, Some(&previous)).unwrap(), &next);
        }

        /// Range and round robin are balanced for any partition set and worker count.
        #[test]
        fn every_assignor_is_balanced(
            partitions in proptest::collection::btree_set(any::<u32>(), 0..200),
            workers in 1usize..16,
            assignor in any_assignor(),
        ) {
            let partitions: Vec<PartitionId> = partitions.into_iter().collect();
            let a = assignor.assign(&partitions, workers, None).unwrap();
            assert_valid(&a, &partitions, workers);
        }
    }
}
