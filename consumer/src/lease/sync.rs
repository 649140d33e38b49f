//! Shard sync: which leases to create for the shards `ListShards` reports, and when a child
//! shard may start. Pure logic; the coordinator does the I/O.
//!
//! Every worker syncs (at start, every `CONSUMER_SHARD_SYNC_MS`, and when one of its shards
//! ends); lease creation is a conditional put, so racing workers create each lease once.
//!
//! - From `TRIM_HORIZON` or `AT_TIMESTAMP`, every shard gets a lease at that position, closed
//!   ancestors included, so nothing still retained is skipped.
//! - From `LATEST`, an open shard whose parents have no lease starts at `LATEST`; a shard with a
//!   parent that has (or gets) a lease is a child born while we were reading and starts at
//!   `TRIM_HORIZON`; a closed shard with no leased parent is history and gets no lease.
//!
//! Parents are created before their children in one pass. A child may start once each of its
//! parents either has no lease (trimmed, or never leased under `LATEST`) or is checkpointed at
//! `SHARD_END`: this is what orders a child's records after its parents' for every partition
//! key, for splits (one parent) and merges (two).

use std::collections::{HashMap, HashSet};

use kinesis_common::config::InitialPosition;

use super::table::{Checkpoint, Lease};

/// What shard sync needs to know about one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardInfo {
    pub shard_id: String,
    /// Parent and adjacent parent.
    pub parents: Vec<String>,
    /// No ending sequence number yet.
    pub open: bool,
    pub hash_key_range: Option<(String, String)>,
}

impl ShardInfo {
    pub fn from_shard(shard: &aws_sdk_kinesis::types::Shard) -> Self {
        Self {
            shard_id: shard.shard_id().to_string(),
            parents: [shard.parent_shard_id(), shard.adjacent_parent_shard_id()]
                .into_iter()
                .flatten()
                .map(str::to_string)
                .collect(),
            open: kinesis_common::kinesis::is_open(shard),
            hash_key_range: shard.hash_key_range().map(|r| {
                (
                    r.starting_hash_key().to_string(),
                    r.ending_hash_key().to_string(),
                )
            }),
        }
    }
}

fn initial_checkpoint(position: InitialPosition) -> Checkpoint {
    match position {
        InitialPosition::TrimHorizon => Checkpoint::TrimHorizon,
        InitialPosition::Latest => Checkpoint::Latest,
        InitialPosition::AtTimestamp(_) => Checkpoint::AtTimestamp,
    }
}

/// The leases to create, parents before children.
pub fn leases_to_create(
    shards: &[ShardInfo],
    existing: &HashSet<String>,
    position: InitialPosition,
) -> Vec<Lease> {
    let listed: HashSet<&str> = shards.iter().map(|s| s.shard_id.as_str()).collect();
    let finished = finished_ancestors(shards, existing);
    let mut leased: HashSet<String> = existing.clone();
    let mut decided: HashSet<&str> = HashSet::new();
    let mut created = Vec::new();
    // Repeat until nothing changes: each pass settles the shards whose listed parents are
    // settled, so the output is in ancestor order whatever order ListShards used.
    loop {
        let mut progress = false;
        for shard in shards {
            let id = shard.shard_id.as_str();
            if decided.contains(id) {
                continue;
            }
            let parents_settled = shard
                .parents
                .iter()
                .all(|p| !listed.contains(p.as_str()) || decided.contains(p.as_str()));
            if !parents_settled {
                continue;
            }
            decided.insert(id);
            progress = true;
            if leased.contains(id) || finished.contains(id) {
                continue;
            }
            let checkpoint = match position {
                InitialPosition::Latest => {
                    if shard.parents.iter().any(|p| leased.contains(p)) {
                        Some(Checkpoint::TrimHorizon)
                    } else if shard.open {
                        Some(Checkpoint::Latest)
                    } else {
                        None
                    }
                }
                other => Some(initial_checkpoint(other)),
            };
            if let Some(checkpoint) = checkpoint {
                leased.insert(id.to_string());
                created.push(Lease::new_for_shard(
                    id,
                    shard.parents.clone(),
                    shard.hash_key_range.clone(),
                    checkpoint,
                ));
            }
        }
        if !progress {
            break;
        }
    }
    created
}

/// Shards without a lease that have a descendant with one: finished, their leases deleted by
/// lease cleanup (which deletes a parent only once its children are past their start; a child
/// lease is never created before its parent's). Giving them a lease again would read them
/// twice.
fn finished_ancestors<'a>(shards: &'a [ShardInfo], existing: &HashSet<String>) -> HashSet<&'a str> {
    let mut finished: HashSet<&str> = HashSet::new();
    loop {
        let mut progress = false;
        for shard in shards {
            if !existing.contains(&shard.shard_id) && !finished.contains(shard.shard_id.as_str()) {
                continue;
            }
            for parent in &shard.parents {
                if let Some(listed) = shards.iter().find(|s| &s.shard_id == parent) {
                    if !existing.contains(parent) && finished.insert(listed.shard_id.as_str()) {
                        progress = true;
                    }
                }
            }
        }
        if !progress {
            return finished;
        }
    }
}

/// Whether a shard with these parents may start, given the parents' leases (`None`: no lease).
pub fn parents_done<'a>(parents: impl IntoIterator<Item = (&'a str, Option<&'a Lease>)>) -> bool {
    parents
        .into_iter()
        .all(|(_, lease)| lease.is_none_or(|l| l.checkpoint == Checkpoint::ShardEnd))
}

/// The leases someone can work on now: not at `SHARD_END`, and every parent done (so parents
/// are always taken before their children, and a child never takes the slot its parent needs).
pub fn workable(leases: &[Lease]) -> impl Iterator<Item = &Lease> {
    let by_key: HashMap<&str, &Lease> = leases.iter().map(|l| (l.key.as_str(), l)).collect();
    leases.iter().filter(move |l| {
        l.checkpoint != Checkpoint::ShardEnd
            && parents_done(
                l.parent_shard_ids
                    .iter()
                    .map(|p| (p.as_str(), by_key.get(p.as_str()).copied())),
            )
    })
}

/// Parents of `lease` not yet done, for a log line.
pub fn pending_parents(lease: &Lease, parents: &HashMap<String, Option<Lease>>) -> Vec<String> {
    lease
        .parent_shard_ids
        .iter()
        .filter(|p| {
            parents
                .get(*p)
                .and_then(Option::as_ref)
                .is_some_and(|l| l.checkpoint != Checkpoint::ShardEnd)
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::table::ExtendedSequenceNumber;

    fn shard(id: &str, parents: &[&str], open: bool) -> ShardInfo {
        ShardInfo {
            shard_id: id.into(),
            parents: parents.iter().map(|p| p.to_string()).collect(),
            open,
            hash_key_range: None,
        }
    }

    fn keys(leases: &[Lease]) -> Vec<(&str, &str)> {
        leases
            .iter()
            .map(|l| (l.key.as_str(), l.checkpoint.value()))
            .collect()
    }

    /// p split into c1, c2; c2 and o merged into m.
    fn history() -> Vec<ShardInfo> {
        vec![
            shard("m", &["c2", "o"], true),
            shard("c1", &["p"], true),
            shard("c2", &["p"], false),
            shard("o", &[], false),
            shard("p", &[], false),
        ]
    }

    #[test]
    fn trim_horizon_leases_every_shard_parents_first() {
        let created = leases_to_create(&history(), &HashSet::new(), InitialPosition::TrimHorizon);
        let order: Vec<&str> = created.iter().map(|l| l.key.as_str()).collect();
        assert_eq!(order.len(), 5);
        let at = |k: &str| order.iter().position(|x| *x == k).unwrap();
        assert!(at("p") < at("c1") && at("p") < at("c2"));
        assert!(at("c2") < at("m") && at("o") < at("m"));
        assert!(created
            .iter()
            .all(|l| l.checkpoint == Checkpoint::TrimHorizon));
        let m = created.iter().find(|l| l.key == "m").unwrap();
        assert_eq!(m.parent_shard_ids, vec!["c2", "o"]);
        assert_eq!(m.owner, None);
    }

    #[test]
    fn existing_leases_are_not_created_again() {
        let existing: HashSet<String> = ["p", "c1", "c2", "o"].map(String::from).into();
        let created = leases_to_create(&history(), &existing, InitialPosition::TrimHorizon);
        assert_eq!(keys(&created), vec![("m", "TRIM_HORIZON")]);
    }

    #[test]
    fn latest_leases_only_open_shards_and_children_of_leased_shards() {
        let created = leases_to_create(&history(), &HashSet::new(), InitialPosition::Latest);
        let mut k = keys(&created);
        k.sort();
        assert_eq!(k, vec![("c1", "LATEST"), ("m", "LATEST")]);
        // Later, c1 splits: its children start from their beginning.
        let mut shards = history();
        shards.push(shard("d1", &["c1"], true));
        shards.push(shard("d2", &["c1"], true));
        let existing: HashSet<String> = ["c1", "m"].map(String::from).into();
        let created = leases_to_create(&shards, &existing, InitialPosition::Latest);
        let mut k = keys(&created);
        k.sort();
        assert_eq!(k, vec![("d1", "TRIM_HORIZON"), ("d2", "TRIM_HORIZON")]);
    }

    #[test]
    fn parents_whose_leases_were_cleaned_up_are_not_leased_again() {
        // p split into c1, c2 (c2 merged with o into m): p's lease was deleted, then c2's and
        // o's.
        for position in [InitialPosition::TrimHorizon, InitialPosition::Latest] {
            let existing: HashSet<String> = ["c1", "c2", "o", "m"].map(String::from).into();
            assert!(leases_to_create(&history(), &existing, position).is_empty());
            let existing: HashSet<String> = ["c1", "m"].map(String::from).into();
            assert!(
                leases_to_create(&history(), &existing, position).is_empty(),
                "grandparent p, parents c2 and o: all finished"
            );
        }
        // A fresh table still gets every lease.
        assert_eq!(
            leases_to_create(&history(), &HashSet::new(), InitialPosition::TrimHorizon).len(),
            5
        );
    }

    #[test]
    fn a_child_waits_for_every_parent_to_reach_shard_end() {
        let end = Lease::new_for_shard("a", vec![], None, Checkpoint::ShardEnd);
        let busy = Lease::new_for_shard(
            "b",
            vec![],
            None,
            Checkpoint::At(ExtendedSequenceNumber::new("5", 0)),
        );
        let fresh = Lease::new_for_shard("b", vec![], None, Checkpoint::TrimHorizon);
        assert!(parents_done([]));
        assert!(parents_done([("a", Some(&end))]));
        assert!(!parents_done([("a", Some(&end)), ("b", Some(&busy))]));
        assert!(!parents_done([("b", Some(&fresh))]));
        // A parent without a lease (trimmed, or history under LATEST) is not waited for.
        assert!(parents_done([("a", Some(&end)), ("gone", None)]));

        let mut child = Lease::new_for_shard(
            "m",
            vec!["a".into(), "b".into()],
            None,
            Checkpoint::TrimHorizon,
        );
        child.parent_shard_ids.push("gone".into());
        let parents: HashMap<String, Option<Lease>> = [
            ("a".to_string(), Some(end)),
            ("b".to_string(), Some(busy)),
            ("gone".to_string(), None),
        ]
        .into();
        assert_eq!(pending_parents(&child, &parents), vec!["b"]);
    }
}
