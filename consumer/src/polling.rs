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
//! one error that ends polling mode ([`PollingError`], exit 1). A reader task that panics (a
//! bug) is logged as an error naming its shard and started again after the last batch it
//! logged in full, with backoff (1 s doubling to 60 s, from 1 s again once it got further), so
//! the shard is neither skipped nor left half read with its children waiting for ever.
//!
//! Delivery: each record is handled once per run (no checkpoints: a restart reads again from
//! the initial position), except that the batch a reader was handling when it panicked is
//! handled again, from its first record.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use aws_sdk_kinesis::types::Shard;
use aws_sdk_kinesis::Client;
use chrono::{DateTime, Utc};
use kinesis_common::backoff::Backoff;
use kinesis_common::config::{ConsumerSettings, InitialPosition};
use tokio::sync::watch;
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
        if let Some(range) = kinesis_common::kinesis::hash_range(shard) {
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
            InitialPosition::Latest if !kinesis_common::kinesis::is_open(shard) => {
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

/// Where a reader that panicked starts again: after the last record of the last batch it
/// logged in full (the batch it was handling is read again), or, having logged none, where it
/// started, a `LATEST` start becoming the time it started so that nothing written since is
/// skipped.
fn restart_position(
    start: &StartPosition,
    handled: Option<&str>,
    started_at: DateTime<Utc>,
) -> StartPosition {
    match (handled, start) {
        (Some(sequence_number), _) => StartPosition::AfterSequence(sequence_number.to_string()),
        (None, StartPosition::Latest) => StartPosition::AtTimestamp(started_at),
        (None, start) => start.clone(),
    }
}

/// A shard being read, with what its reader needs to be started again.
struct Reading {
    shard_id: String,
    hash_range: Option<(u128, u128)>,
    /// Where the current reader started.
    start: StartPosition,
    /// When the shard's first reader started (see [`restart_position`]).
    started_at: DateTime<Utc>,
    /// The last sequence number of the last batch logged in full, as of the last restart.
    handled: Option<String>,
    /// Waits before restarts; reset when a reader got further than the one before.
    restarts: Backoff,
}

/// The reader tasks of polling mode, one per shard being read.
struct Readers {
    tasks: JoinSet<(String, Result<Vec<String>, ReadError>)>,
    /// Each task's shard, with the progress its reader reports.
    reading: HashMap<tokio::task::Id, (Reading, watch::Receiver<Option<String>>)>,
    retrieval: Retrieval,
    client: Client,
    stream: String,
    /// Stops every reader: `cancel`, or the stream being gone.
    stop: CancellationToken,
}

impl Readers {
    fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    fn start(&mut self, shard_id: &str, start: StartPosition, hash_range: Option<(u128, u128)>) {
        let reading = Reading {
            shard_id: shard_id.to_string(),
            hash_range,
            start,
            started_at: Utc::now(),
            handled: None,
            restarts: Backoff::new(Duration::from_secs(1), Duration::from_secs(60)),
        };
        self.spawn(reading, Duration::ZERO);
    }

    fn spawn(&mut self, reading: Reading, delay: Duration) {
        let reader = self.retrieval.open(
            self.client.clone(),
            &self.stream,
            &reading.shard_id,
            reading.start.clone(),
        );
        let (handled_tx, handled_rx) = watch::channel(reading.handled.clone());
        let task = read_shard(
            reader,
            reading.hash_range,
            self.stop.clone(),
            handled_tx,
            delay,
        );
        let id = self.tasks.spawn(task).id();
        self.reading.insert(id, (reading, handled_rx));
    }

    /// The next reader to end, with its shard; a reader that panicked is started again
    /// instead. Cancel-safe: a restart happens between two awaits.
    async fn join_next(&mut self) -> Option<(String, Result<Vec<String>, ReadError>)> {
        loop {
            let (id, joined) = match self.tasks.join_next_with_id().await? {
                Ok((id, done)) => (id, Ok(done)),
                Err(err) => (err.id(), Err(err)),
            };
            let Some((mut reading, handled)) = self.reading.remove(&id) else {
                continue;
            };
            let panic = match joined {
                Ok(done) => return Some(done),
                Err(err) if err.is_panic() => err,
                // Never aborted: only a runtime shutting down cancels a reader.
                Err(_) => continue,
            };
            let handled = handled.borrow().clone();
            if handled != reading.handled {
                reading.restarts.reset();
                reading.handled = handled;
            }
            reading.start = restart_position(
                &reading.start,
                reading.handled.as_deref(),
                reading.started_at,
            );
            let delay = reading.restarts.next_delay();
            tracing::error!(
                shard_id = %reading.shard_id,
                error = %panic,
                start = ?reading.start,
                retry_in_ms = delay.as_millis() as u64,
                "shard reader panicked, reading the shard again"
            );
            self.spawn(reading, delay);
        }
    }

    /// Stops every reader and waits for them. Readers stop at their next wait or call; none
    /// is in the middle of logging a batch.
    async fn stop(mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
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
        listed = kinesis_common::kinesis::list_shards(client, stream) => listed.map(Some),
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

    let mut readers = Readers {
        tasks: JoinSet::new(),
        reading: HashMap::new(),
        retrieval: retrieval.clone(),
        client: client.clone(),
        stream: stream.clone(),
        stop: cancel.child_token(),
    };
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
            readers.start(&shard_id, start, ranges.get(&shard_id).copied());
        }
        // A listing: at every sync tick, and when a shard ended (to learn its children's
        // parents now rather than at the next sync).
        let listing = tokio::select! {
            _ = cancel.cancelled() => break,
            _ = sync.tick() => true,
            Some(done) = readers.join_next(), if !readers.is_empty() => match done {
                (shard_id, Ok(children)) => {
                    tracing::info!(shard_id = %shard_id, child_shards = ?children, "shard ended");
                    graph.mark_ended(&shard_id);
                    !children.is_empty()
                }
                (_, Err(ReadError::Cancelled)) => false,
                (_, Err(err)) => {
                    failure = Some(PollingError::from(err));
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
    readers.stop().await;
    match failure {
        Some(err) => Err(err),
        None => {
            tracing::info!(stream = %stream, "consumer stopped");
            Ok(())
        }
    }
}

/// Reads one shard to its end, after `delay`, reporting the last sequence number of each
/// batch once it is logged in full to `handled`.
async fn read_shard(
    mut reader: ShardSource,
    hash_range: Option<(u128, u128)>,
    cancel: CancellationToken,
    handled: watch::Sender<Option<String>>,
    delay: Duration,
) -> (String, Result<Vec<String>, ReadError>) {
    let shard_id = reader.shard_id().to_string();
    if !delay.is_zero() {
        tokio::select! {
            _ = cancel.cancelled() => return (shard_id, Err(ReadError::Cancelled)),
            _ = tokio::time::sleep(delay) => {}
        }
    }
    loop {
        match reader.next_batch(&cancel).await {
            Ok(batch) => {
                let started = std::time::Instant::now();
                for record in &batch.records {
                    #[cfg(test)]
                    tests::panic_hook(record);
                    crate::record::log_record_in_range(&shard_id, hash_range, record);
                }
                if let Some(o) = crate::observe::observer() {
                    o.metrics
                        .process_records_seconds
                        .observe(started.elapsed().as_secs_f64());
                }
                if let Some(last) = batch.records.last() {
                    handled.send_replace(Some(last.sequence_number().to_string()));
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
    use std::sync::{Mutex, PoisonError};
    use std::time::Duration;

    use aws_sdk_kinesis::types::Record;
    use kinesis_common::message::DataMessage;
    use testkit::Kind;

    /// Payloads that make their reader panic the first time it handles them, as a bug in
    /// record handling would. Nothing real makes a reader panic on demand (record handling
    /// takes any bytes; the SDK answers errors, not panics), so the test needs this hook; it
    /// exists only in this module's test build.
    static PANIC_ONCE_ON: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

    pub(super) fn panic_hook(record: &Record) {
        let mut payloads = PANIC_ONCE_ON.lock().unwrap_or_else(PoisonError::into_inner);
        let data = record.data().as_ref();
        if let Some(i) = payloads.iter().position(|p| p.as_slice() == data) {
            payloads.remove(i);
            drop(payloads);
            panic!("test hook: panic on record {}", record.sequence_number());
        }
    }

    /// Log lines (JSON) written on this thread: the test runs on a current-thread runtime,
    /// so the readers' tasks log here too.
    fn received(logs: &testkit::LogCapture) -> Vec<(String, String)> {
        logs.events("record received")
            .iter()
            .map(|e| {
                (
                    e["id"].as_str().unwrap_or_default().to_string(),
                    e["shard_id"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    /// Issue 19, defect 5: a reader that panics is started again from where it was, so its
    /// shard is read to its end and its children start.
    #[tokio::test]
    async fn a_panicked_reader_is_restarted_and_the_children_of_its_shard_are_read() {
        let (logs, _guard) = testkit::LogCapture::start();

        let emu = testkit::shared(Kind::KinesisMock);
        let kinesis = emu.kinesis();
        let stream = testkit::unique_name("poll-panic");
        let parent = testkit::create_single_shard_stream(&kinesis, &stream).await;
        let env = testkit::env_with(
            &emu.endpoint(),
            &stream,
            &[
                ("CONSUMER_MODE", "polling"),
                ("CONSUMER_INITIAL_POSITION", "TRIM_HORIZON"),
                ("CONSUMER_POLL_INTERVAL_MS", "200"),
                ("CONSUMER_SHARD_SYNC_MS", "1000"),
            ],
        );
        let raw = kinesis_common::config::RawConfig::load(env).expect("settings");
        let settings = ConsumerSettings::from_raw(&raw).expect("settings");
        let cancel = CancellationToken::new();
        let running = tokio::spawn({
            let (kinesis, cancel) = (kinesis.clone(), cancel.clone());
            async move { run(&settings, kinesis, cancel).await }
        });

        let messages: Vec<DataMessage> = (0..6).map(|_| DataMessage::new()).collect();
        let poison = messages[1].to_json();
        PANIC_ONCE_ON.lock().unwrap().push(poison.clone());
        for (i, m) in messages[..3].iter().enumerate() {
            testkit::put_record(&kinesis, &stream, &format!("k{i}"), m.to_json()).await;
        }
        assert!(
            testkit::eventually(Duration::from_secs(30), || {
                PANIC_ONCE_ON.lock().unwrap().is_empty()
            })
            .await,
            "the reader reached the record that makes it panic"
        );
        testkit::split_in_half(&kinesis, &stream, &parent).await;
        let never = CancellationToken::new();
        kinesis_common::kinesis::wait_for_stream(
            &kinesis,
            &stream,
            Duration::from_secs(30),
            &never,
        )
        .await
        .expect("split");
        for (i, m) in messages[3..].iter().enumerate() {
            testkit::put_record(&kinesis, &stream, &format!("after-split-{i}"), m.to_json()).await;
        }

        let ids: HashSet<String> = messages.iter().map(|m| m.id.to_string()).collect();
        let all_read = testkit::eventually(Duration::from_secs(60), || {
            let read: HashSet<String> = received(&logs).into_iter().map(|(id, _)| id).collect();
            read == ids
        })
        .await;
        let received = received(&logs);
        assert!(
            all_read,
            "every record read, the children's too: {received:?}"
        );
        let panicked = logs.events("shard reader panicked, reading the shard again");
        assert_eq!(panicked.len(), 1, "{panicked:?}");
        assert_eq!(panicked[0]["shard_id"], parent.as_str());
        // The children were read (after their parent ended).
        let children: HashSet<&str> = received
            .iter()
            .filter(|(id, _)| messages[3..].iter().any(|m| m.id.to_string() == *id))
            .map(|(_, shard)| shard.as_str())
            .collect();
        assert!(!children.contains(parent.as_str()), "{received:?}");
        // Only records of the batch in hand when the reader panicked (before the one it
        // panicked on) can be read twice.
        for m in &messages[1..] {
            let id = m.id.to_string();
            let times = received.iter().filter(|(r, _)| *r == id).count();
            assert_eq!(times, 1, "{id} read once: {received:?}");
        }
        cancel.cancel();
        let ended = tokio::time::timeout(Duration::from_secs(10), running)
            .await
            .expect("stops within 10 s")
            .expect("no panic");
        assert!(ended.is_ok(), "{ended:?}");
    }

    fn s(id: &str, parents: &[&str]) -> (String, Vec<String>) {
        (
            id.to_string(),
            parents.iter().map(|p| p.to_string()).collect(),
        )
    }

    #[test]
    fn a_panicked_reader_restarts_after_the_last_batch_it_logged_in_full() {
        let at = chrono::Utc::now();
        let after = |s: &str| StartPosition::AfterSequence(s.to_string());
        for start in [
            StartPosition::TrimHorizon,
            StartPosition::Latest,
            StartPosition::AtSequence("1".into()),
        ] {
            assert_eq!(restart_position(&start, Some("42"), at), after("42"));
        }
        // Nothing logged yet: where it started; LATEST as of the time it started.
        assert_eq!(
            restart_position(&StartPosition::Latest, None, at),
            StartPosition::AtTimestamp(at)
        );
        for start in [
            StartPosition::TrimHorizon,
            StartPosition::AtTimestamp(at),
            StartPosition::AtSequence("7".into()),
            after("7"),
        ] {
            assert_eq!(restart_position(&start, None, at), start);
        }
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
