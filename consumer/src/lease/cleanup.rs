//! Lease cleanup: which leases may be deleted, so the table does not grow with resharding
//! history. Pure logic; the coordinator does the I/O (the Java KCL's `LeaseCleanupManager`).
//!
//! - **Completed**: a lease at `SHARD_END` whose every child has a lease checkpointed past its
//!   start (a sequence number or `SHARD_END`, not `TRIM_HORIZON` / `LATEST` /
//!   `AT_TIMESTAMP`), and none of whose parents still has a lease (ancestors go first, as in
//!   the KCL). The children are the lease's `childShardIds`, or, when it has none, the leases
//!   naming it as a parent; a lease with no known child is kept.
//! - **Garbage**: a lease whose shard `ListShards` no longer reports (trimmed after the
//!   retention period), decided only from a listing that succeeded and was made *after* the
//!   scan (so every lease scanned was created from an older listing), and never a lease that a
//!   child still waits on (a parent of a lease not yet past its start).
//!
//! Every delete is conditional on the counter scanned: a lease written since is kept. Shard
//! sync does not create a lease again for a deleted parent: see [`super::sync`].

use std::collections::{HashMap, HashSet};

use super::table::{Checkpoint, Lease};

/// Past the start: something was processed (or the whole shard was).
pub fn past_start(lease: &Lease) -> bool {
    matches!(lease.checkpoint, Checkpoint::At(_) | Checkpoint::ShardEnd)
}

/// The completed leases that may be deleted.
pub fn completed(leases: &[Lease]) -> Vec<&Lease> {
    let by_key: HashMap<&str, &Lease> = leases.iter().map(|l| (l.key.as_str(), l)).collect();
    let mut children_of: HashMap<&str, Vec<&str>> = HashMap::new();
    for lease in leases {
        for parent in &lease.parent_shard_ids {
            children_of
                .entry(parent.as_str())
                .or_default()
                .push(lease.key.as_str());
        }
    }
    leases
        .iter()
        .filter(|l| l.checkpoint == Checkpoint::ShardEnd)
        .filter(|l| {
            l.parent_shard_ids
                .iter()
                .all(|p| !by_key.contains_key(p.as_str()))
        })
        .filter(|l| {
            let children: Vec<&str> = if l.child_shard_ids.is_empty() {
                children_of.get(l.key.as_str()).cloned().unwrap_or_default()
            } else {
                l.child_shard_ids.iter().map(String::as_str).collect()
            };
            !children.is_empty()
                && children
                    .iter()
                    .all(|c| by_key.get(c).is_some_and(|child| past_start(child)))
        })
        .collect()
}

/// The leases of shards that no longer exist and that no child waits on. `listed`: every shard
/// id `ListShards` reported, listed after `leases` were scanned.
pub fn garbage<'a>(leases: &'a [Lease], listed: &HashSet<String>) -> Vec<&'a Lease> {
    let waited_on: HashSet<&str> = leases
        .iter()
        .filter(|l| !past_start(l))
        .flat_map(|l| l.parent_shard_ids.iter().map(String::as_str))
        .collect();
    leases
        .iter()
        .filter(|l| !listed.contains(&l.key) && !waited_on.contains(l.key.as_str()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::table::ExtendedSequenceNumber;

    fn lease(key: &str, parents: &[&str], children: &[&str], checkpoint: Checkpoint) -> Lease {
        let mut l = Lease::new_for_shard(
            key,
            parents.iter().map(|p| p.to_string()).collect(),
            None,
            checkpoint,
        );
        l.child_shard_ids = children.iter().map(|c| c.to_string()).collect();
        l
    }

    fn at(seq: &str) -> Checkpoint {
        Checkpoint::At(ExtendedSequenceNumber::new(seq, 0))
    }

    fn keys(leases: Vec<&Lease>) -> Vec<&str> {
        let mut k: Vec<&str> = leases.into_iter().map(|l| l.key.as_str()).collect();
        k.sort();
        k
    }

    #[test]
    fn an_ended_parent_goes_once_every_child_is_past_its_start() {
        // p split into c1, c2.
        let mut leases = vec![
            lease("p", &[], &["c1", "c2"], Checkpoint::ShardEnd),
            lease("c1", &["p"], &[], at("5")),
            lease("c2", &["p"], &[], Checkpoint::TrimHorizon),
        ];
        assert!(completed(&leases).is_empty(), "c2 has not started");
        leases[2].checkpoint = at("7");
        assert_eq!(keys(completed(&leases)), vec!["p"]);
        // A child at LATEST or AT_TIMESTAMP is not past its start either.
        for start in [Checkpoint::Latest, Checkpoint::AtTimestamp] {
            leases[2].checkpoint = start;
            assert!(completed(&leases).is_empty());
        }
        // A child without a lease (yet): kept.
        let lone = vec![lease("p", &[], &["c1"], Checkpoint::ShardEnd)];
        assert!(completed(&lone).is_empty());
    }

    #[test]
    fn children_are_found_by_their_parent_ids_when_childshardids_is_missing_and_ancestors_go_first()
    {
        let leases = vec![
            lease("p", &[], &[], Checkpoint::ShardEnd),
            lease("c", &["p"], &[], Checkpoint::ShardEnd),
            lease("g", &["c"], &[], at("9")),
        ];
        // c is done too, but its parent p still has a lease: p first.
        assert_eq!(keys(completed(&leases)), vec!["p"]);
        assert_eq!(keys(completed(&leases[1..])), vec!["c"]);
        // Open or never-ended shards are never completed.
        assert!(completed(&leases[2..]).is_empty());
    }

    #[test]
    fn garbage_is_what_is_not_listed_unless_a_child_waits_on_it() {
        let leases = vec![
            lease("gone", &[], &[], at("1")),
            lease("gone-parent", &[], &[], at("1")),
            lease("child", &["gone-parent"], &[], Checkpoint::TrimHorizon),
            lease("here", &[], &[], at("1")),
        ];
        let listed: HashSet<String> = ["child", "here"].map(String::from).into();
        assert_eq!(keys(garbage(&leases, &listed)), vec!["gone"]);
        // Once the child is past its start, its vanished parent goes too.
        let mut leases = leases;
        leases[2].checkpoint = at("3");
        assert_eq!(keys(garbage(&leases, &listed)), vec!["gone", "gone-parent"]);
    }
}
