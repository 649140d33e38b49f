//! Polling mode: one process reads every shard of the stream, no checkpoints.
//!
//! Shards are discovered with `ListShards` at start and every `CONSUMER_SHARD_SYNC_MS`, and
//! from the `ChildShards` a closed shard reports when it ends. A shard is read only after all
//! of its parents that this consumer reads were read to their end, so per partition key no
//! record of a child comes before the parent's last record. Shards present at start are read
//! from `CONSUMER_INITIAL_POSITION` (from `LATEST`, shards closed before the start are never
//! read: they hold only history); shards that appear later (children of a split or merge)
//! from `TRIM_HORIZON`, so nothing written to them is missed.
//!
//! A reader retries every failure itself ([`crate::reader`]); the stream being deleted is the
//! one error that ends polling mode ([`PollingError`], exit 1).
//!
//! Delivery: each record is handled once per run (no checkpoints: a restart reads again from
//! the initial position).

use std::collections::{HashMap, HashSet};

use aws_sdk_kinesis::types::Shard;
use aws_sdk_kinesis::Client;
use common::config::{ConsumerSettings, InitialPosition};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::reader::{ReadError, StartPosition};
use crate::retrieval::{Retrieval, RetrievalConfig, ShardSource};

#[derive(Debug, Clone, PartialEq, Eq)]
enum ShardState {
    /// Known, waiting for these parents to end.
    Waiting(Vec<String>),
    Reading,
    Ended,
}

/// The shard bookkeeping of polling mode: pure logic, no I/O.
#[derive(Debug, Default)]
pub struct ShardGraph {
    shards: HashMap<String, ShardState>,
}

impl ShardGraph {
    /// Adds shards not seen before with the parents they wait for. Returns the new shard ids.
    pub fn add(&mut self, shards: impl IntoIterator<Item = (String, Vec<String>)>) -> Vec<String> {
        let mut added = Vec::new();
        let shards: Vec<_> = shards.into_iter().collect();
        let listed: HashSet<&String> = shards.iter().map(|(id, _)| id).collect();
        for (id, parents) in &shards {
            if self.shards.contains_key(id) {
                continue;
            }
            // A parent neither known nor in this listing has been trimmed: nothing to wait for.
            let parents = parents
                .iter()
                .filter(|p| self.shards.contains_key(*p) || listed.contains(p))
                .cloned()
                .collect();
            self.shards.insert(id.clone(), ShardState::Waiting(parents));
            added.push(id.clone());
        }
        added
    }

    /// Shards whose parents have all ended, now marked as reading.
    pub fn take_ready(&mut self) -> Vec<String> {
        let ended: HashSet<String> = self
            .shards
            .iter()
            .filter(|(_, s)| **s == ShardState::Ended)
            .map(|(id, _)| id.clone())
            .collect();
        let mut ready: Vec<String> = self
            .shards
            .iter()
            .filter(
                |(_, s)| matches!(s, ShardState::Waiting(p) if p.iter().all(|p| ended.contains(p))),
            )
            .map(|(id, _)| id.clone())
            .collect();
        ready.sort();
        for id in &ready {
            self.shards.insert(id.clone(), ShardState::Reading);
        }
        ready
    }

    pub fn mark_ended(&mut self, shard_id: &str) {
        self.shards.insert(shard_id.to_string(), ShardState::Ended);
    }

    /// Shards that are never to be read (closed before a `LATEST` start: history only). They
    /// count as ended, so listing them again later adds nothing, and their children start.
    pub fn skip(&mut self, shard_ids: impl IntoIterator<Item = String>) {
        for id in shard_ids {
            self.shards.insert(id, ShardState::Ended);
        }
    }
}

/// Records each shard's inclusive hash key range, to skip aggregates with a member outside it.
fn remember_ranges(ranges: &mut HashMap<String, (u128, u128)>, shards: &[Shard]) {
    for shard in shards {
        if let Some(range) = common::kinesis::hash_range(shard) {
            ranges.insert(shard.shard_id().to_string(), range);
        }
    }
}

fn parents_of(shard: &Shard) -> (String, Vec<String>) {
    let parents = [shard.parent_shard_id(), shard.adjacent_parent_shard_id()]
        .into_iter()
        .flatten()
        .map(str::to_string)
        .collect();
    (shard.shard_id().to_string(), parents)
}

/// The shards to read at start, and those to skip. From `LATEST` only the open shards matter:
/// closed ones hold nothing newer, so they are skipped for good, and the open ones start at
/// once rather than after parents that will yield nothing.
fn first_listing(
    shards: &[Shard],
    position: InitialPosition,
) -> (Vec<(String, Vec<String>)>, Vec<String>) {
    let mut read = Vec::new();
    let mut skip = Vec::new();
    for shard in shards {
        match position {
            InitialPosition::Latest if !common::kinesis::is_open(shard) => {
                skip.push(shard.shard_id().to_string())
            }
            InitialPosition::Latest => read.push((shard.shard_id().to_string(), Vec::new())),
            _ => read.push(parents_of(shard)),
        }
    }
    (read, skip)
}

fn initial(position: InitialPosition) -> StartPosition {
    match position {
        InitialPosition::TrimHorizon => StartPosition::TrimHorizon,
        InitialPosition::Latest => StartPosition::Latest,
        InitialPosition::AtTimestamp(t) => StartPosition::AtTimestamp(t),
    }
}

/// Why polling mode ended with an error.
#[derive(Debug, thiserror::Error)]
pub enum PollingError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("stream {stream:?} was deleted while being read ({message})")]
    StreamGone { stream: String, message: String },
    /// Fan-out: the stream consumer could not be registered (or did not become `ACTIVE`).
    #[error(transparent)]
    Register(crate::fanout::RegisterError),
    #[error("listing the shards of stream {stream:?} at start")]
    FirstListing {
        stream: String,
        #[source]
        source: anyhow::Error,
    },
}

/// Lists the shards; `Ok(None)` when `cancel` fired first.
async fn list(
    client: &Client,
    stream: &str,
    cancel: &CancellationToken,
) -> anyhow::Result<Option<Vec<Shard>>> {
    tokio::select! {
        _ = cancel.cancelled() => Ok(None),
        listed = common::kinesis::list_shards(client, stream) => listed.map(Some),
    }
}

/// Reads every shard until `cancel` fires. Ends with an error only when the stream is deleted.
pub async fn run(
    settings: &ConsumerSettings,
    client: Client,
    cancel: CancellationToken,
) -> Result<(), PollingError> {
    let stream = settings.shared.stream_name.clone();
    let retrieval = match Retrieval::prepare(
        &RetrievalConfig::from_settings(settings),
        &client,
        &stream,
        settings.shared.stream_wait_timeout,
        &cancel,
    )
    .await
    {
        Ok(retrieval) => retrieval,
        Err(crate::fanout::RegisterError::Cancelled(_)) => return Ok(()),
        Err(err) => return Err(PollingError::Register(err)),
    };
    let mut graph = ShardGraph::default();
    let listed = match list(&client, &stream, &cancel).await {
        Ok(Some(listed)) => listed,
        Ok(None) => return Ok(()),
        Err(source) => {
            return Err(PollingError::FirstListing {
                stream: stream.clone(),
                source,
            })
        }
    };
    let mut ranges = HashMap::new();
    remember_ranges(&mut ranges, &listed);
    retrieval.note_listing(&listed);
    let (read, skip) = first_listing(&listed, settings.initial_position);
    graph.skip(skip);
    let first: HashSet<String> = graph.add(read).into_iter().collect();
    tracing::info!(stream = %stream, shards = first.len(), mode = "polling", retrieval = retrieval.name(), "consumer started");

    // Readers stop with `cancel`, or with `stop_readers` when the stream is gone.
    let stop_readers = cancel.child_token();
    let mut readers: JoinSet<(String, Result<Vec<String>, ReadError>)> = JoinSet::new();
    let mut sync = tokio::time::interval(settings.shard_sync_interval);
    sync.tick().await;
    let mut failure = None;
    while failure.is_none() {
        for shard_id in graph.take_ready() {
            let start = if first.contains(&shard_id) {
                initial(settings.initial_position)
            } else {
                StartPosition::TrimHorizon
            };
            tracing::info!(shard_id = %shard_id, start = ?start, "reading shard");
            let reader = retrieval.open(client.clone(), &stream, &shard_id, start);
            readers.spawn(read_shard(
                reader,
                ranges.get(&shard_id).copied(),
                stop_readers.clone(),
            ));
        }
        // A listing: at every sync tick, and when a shard ended (to learn its children's
        // parents now rather than at the next sync).
        let listing = tokio::select! {
            _ = cancel.cancelled() => break,
            _ = sync.tick() => true,
            Some(done) = readers.join_next(), if !readers.is_empty() => match done {
                Ok((shard_id, Ok(children))) => {
                    tracing::info!(shard_id = %shard_id, child_shards = ?children, "shard ended");
                    graph.mark_ended(&shard_id);
                    !children.is_empty()
                }
                Ok((_, Err(ReadError::Cancelled))) => false,
                Ok((_, Err(err))) => {
                    failure = Some(PollingError::from(err));
                    false
                }
                Err(join) => {
                    tracing::error!(error = %join, "shard reader panicked");
                    false
                }
            },
        };
        if !listing {
            continue;
        }
        match list(&client, &stream, &cancel).await {
            Ok(Some(shards)) => {
                remember_ranges(&mut ranges, &shards);
                retrieval.note_listing(&shards);
                for id in graph.add(shards.iter().map(parents_of)) {
                    tracing::info!(shard_id = %id, "new shard discovered");
                }
            }
            Ok(None) => break,
            Err(err) if crate::reader::stream_gone(&client, &stream).await => {
                failure = Some(PollingError::StreamGone {
                    stream: stream.clone(),
                    message: format!("{err:#}"),
                });
            }
            Err(err) => {
                tracing::warn!(error = %format!("{err:#}"), "shard list refresh failed, keeping the current list")
            }
        }
    }
    // Readers stop at their next wait or call; none is in the middle of logging a batch.
    stop_readers.cancel();
    while readers.join_next().await.is_some() {}
    match failure {
        Some(err) => Err(err),
        None => {
            tracing::info!(stream = %stream, "consumer stopped");
            Ok(())
        }
    }
}

async fn read_shard(
    mut reader: ShardSource,
    hash_range: Option<(u128, u128)>,
    cancel: CancellationToken,
) -> (String, Result<Vec<String>, ReadError>) {
    let shard_id = reader.shard_id().to_string();
    loop {
        match reader.next_batch(&cancel).await {
            Ok(batch) => {
                let started = std::time::Instant::now();
                for record in &batch.records {
                    crate::record::log_record_in_range(&shard_id, hash_range, record);
                }
                if let Some(o) = crate::observe::observer() {
                    o.metrics
                        .process_records_seconds
                        .observe(started.elapsed().as_secs_f64());
                }
                if let Some(children) = batch.ended {
                    return (shard_id, Ok(children));
                }
            }
            Err(err) => return (shard_id, Err(err)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(id: &str, parents: &[&str]) -> (String, Vec<String>) {
        (
            id.to_string(),
            parents.iter().map(|p| p.to_string()).collect(),
        )
    }

    #[test]
    fn children_wait_for_every_parent() {
        let mut g = ShardGraph::default();
        g.add([s("a", &[]), s("b", &[]), s("c", &["a", "b"])]);
        assert_eq!(g.take_ready(), vec!["a", "b"]);
        g.mark_ended("a");
        assert!(
            g.take_ready().is_empty(),
            "merge child waits for both parents"
        );
        g.mark_ended("b");
        assert_eq!(g.take_ready(), vec!["c"]);
        assert!(g.take_ready().is_empty());
    }

    #[test]
    fn trimmed_parents_are_not_waited_for() {
        let mut g = ShardGraph::default();
        g.add([s("child", &["gone"])]);
        assert_eq!(g.take_ready(), vec!["child"]);
    }

    #[test]
    fn split_children_discovered_later_wait_for_a_reading_parent() {
        let mut g = ShardGraph::default();
        g.add([s("p", &[])]);
        assert_eq!(g.take_ready(), vec!["p"]);
        let added = g.add([s("p", &[]), s("c1", &["p"]), s("c2", &["p"])]);
        assert_eq!(added, vec!["c1", "c2"]);
        assert!(g.take_ready().is_empty());
        g.mark_ended("p");
        assert_eq!(g.take_ready(), vec!["c1", "c2"]);
    }

    #[test]
    fn skipped_shards_are_never_read_and_do_not_hold_their_children_back() {
        let mut g = ShardGraph::default();
        g.skip(["old".to_string()]);
        g.add([s("open", &[])]);
        assert_eq!(g.take_ready(), vec!["open"]);
        // A later listing shows the old shard again, and a child of it.
        let added = g.add([s("old", &[]), s("open", &[]), s("late", &["old"])]);
        assert_eq!(added, vec!["late"]);
        assert_eq!(g.take_ready(), vec!["late"]);
    }
}
