//! The worker: one per process. Three loops share the set of held leases:
//!
//! - the **renewer** bumps every held lease's counter each renewal interval (failover / 3);
//! - the **coordinator** (this task) scans the table every half failover time (every renewal
//!   interval on a table without the `leaseOwner` index), and once more just after the moment
//!   a lease seen would expire, notes which counters moved, and takes leases as
//!   [`super::balance`] says, a live worker's with a graceful handoff; every [`OWNER_POLL`] it
//!   reads which leases the owner index says are its own (handed over to it, or taken from it);
//!   it syncs shards to leases at start, every `CONSUMER_SHARD_SYNC_MS` and whenever one of its
//!   shards ends, and runs lease cleanup ([`super::cleanup`]); it starts a shard task for each
//!   lease taken and forgets the lease when the task ends;
//! - one **shard task** per held lease ([`super::shard`]), with its own stop token (a child of
//!   the worker's), cancelled for a graceful handoff.
//!
//! Expiry is local, as in the KCL: a lease is expired when its counter has not changed for the
//! failover time *as observed by this worker* (no clocks are compared across machines). A lease
//! seen for the first time gets a full failover time before it counts as expired, unless it has
//! no owner.
//!
//! Taking order: a child lease is taken only once every parent is at `SHARD_END` (or has no
//! lease), so parents always come first and a child never sits in a slot of
//! `CONSUMER_MAX_LEASES_PER_WORKER` waiting for a parent nobody can take. A shard whose
//! processing failed is not taken again by this worker for a while (backoff up to a minute).
//!
//! Stopping (the token passed to [`Worker::run`]): no more taking; each shard task finishes the
//! batch in hand, checkpoints and ends; then every lease is handed to the least loaded live
//! worker (found by one more scan), which finds it through the owner index within
//! [`OWNER_POLL`], or, with none, released (owner removed, condition on counter and owner) so
//! other workers take it at their next scan. Every wait and every
//! AWS call is abandoned at the stop signal, and the rest is bounded by [`SHUTDOWN_BUDGET`], so
//! the process exits within 5 seconds of SIGTERM even when DynamoDB or Kinesis hang.
//!
//! The stream being deleted ends the worker with an error (after the same shutdown).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::join_all;
use futures_util::StreamExt;
use kinesis_common::backoff::Backoff;
use kinesis_common::config::{
    ConsumerSettings, InitialPosition, LeaseAssignment, LeaseCleanupSettings, WorkerMetricsSettings,
};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::Notify;
use tokio::task::{Id, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::assignment::{self, AssignmentConfig, LeaseLoad, WorkerLoad};
use super::balance::{self, LeaseView};
use super::cleanup;
use super::failure::{FailurePolicy, OnFailure};
use super::held::{DuplicateReport, HeldLease};
use super::leader::{ClientVersion, Leadership, TakingStatus};
use super::machine::{follow_rule, take_rule, Event, LeaseMachine, Op, State, TaskEnd, Timing};
use super::metrics_reporter;
use super::processor::RecordProcessorFactory;
use super::shard::{self, ShardContext, ShardOutcome};
use super::sync::{leases_to_create, workable, ShardInfo};
use super::table::{Checkpoint, Lease, LeaseTable, WriteError};
use super::worker_metrics::{MetricsLayout, WorkerMetrics, STALE_AFTER};
use crate::fanout::RegisterError;
use crate::retrieval::{Retrieval, RetrievalConfig};

/// Time allowed for shard tasks to finish their batch and for the leases to be released after
/// a stop request: within the 5 seconds a stopped container gets, with room for the rest.
pub const SHUTDOWN_BUDGET: Duration = Duration::from_millis(3500);

/// How long after a lease's expiry time the extra scan looks, so that it is past, not at, it.
const EXPIRY_MARGIN: Duration = Duration::from_millis(20);

/// How often a worker reads, through the `leaseOwner` index, which leases the table says it
/// owns: leases handed to it by a stopping worker are found within this time, and leases taken
/// from it (a graceful handoff) are noticed within it.
pub const OWNER_POLL: Duration = Duration::from_millis(500);

/// How many takes (conditional writes) a taking cycle runs at once.
const TAKE_CONCURRENCY: usize = 32;

/// How often the new owner re-reads a lease while waiting for the old owner to hand it over.
const HANDOFF_POLL: Duration = Duration::from_millis(500);

/// Waits before this worker takes again a shard whose processing failed here.
const FAILED_SHARD_BACKOFF: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(60));

/// How long work in progress when the stop signal comes (takes already sent, a release after a
/// shard ended) may still run: its writes may already have gone through, and what it learns
/// decides what the shutdown must give back.
const STOP_GRACE: Duration = Duration::from_millis(1000);

/// Runs `work`; once `cancel` fires, lets it run [`STOP_GRACE`] longer at most.
async fn within_grace<T>(
    cancel: &CancellationToken,
    work: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::pin!(work);
    tokio::select! {
        out = &mut work => return Some(out),
        _ = cancel.cancelled() => {}
    }
    tokio::time::timeout(STOP_GRACE, work).await.ok()
}

/// Runs `work` unless `cancel` fires first (then `work` is dropped where it stands).
async fn unless_cancelled<T>(
    cancel: &CancellationToken,
    work: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        _ = cancel.cancelled() => None,
        out = work => Some(out),
    }
}

/// Everything a worker needs to know; see [`WorkerConfig::from_settings`].
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The stream to read.
    pub stream: String,
    /// The lease table's name.
    pub application_name: String,
    /// This worker's id, written as `leaseOwner`; unique among running workers.
    pub worker_id: String,
    /// A lease whose counter has not moved for this long is taken over.
    pub failover: Duration,
    /// How often held leases are renewed (a third of `failover`, say).
    pub renew_interval: Duration,
    /// Cap on the leases this worker holds; `None`: no cap.
    pub max_leases_per_worker: Option<usize>,
    /// How often the shard list is compared with the lease table.
    pub shard_sync_interval: Duration,
    /// Where a shard without a checkpoint is read from.
    pub initial_position: InitialPosition,
    /// Polling (`GetRecords` limit and idle wait) or enhanced fan-out.
    pub retrieval: RetrievalConfig,
    /// How long to wait for a new lease table (and a new stream consumer) to become ACTIVE.
    pub table_wait_timeout: Duration,
    /// A lease stolen from a live worker is handed over gracefully (the old owner checkpoints
    /// first); the new owner starts anyway after this time, and never before the failover
    /// time. Zero: steals are immediate, without a handoff.
    pub handoff_timeout: Duration,
    /// When leases of finished and vanished shards are deleted.
    pub cleanup: LeaseCleanupSettings,
    /// What happens to a batch whose processing keeps failing.
    pub failure: FailurePolicy,
    /// Count-based taking by every worker, or a KCL 3.x leader that assigns by load.
    pub assignment: LeaseAssignment,
    /// The worker-metrics item this worker publishes (`lease::metrics_reporter`).
    pub worker_metrics: WorkerMetricsSettings,
}

impl WorkerConfig {
    /// The configuration the `consumer` service runs with, from its variables.
    pub fn from_settings(settings: &ConsumerSettings, worker_id: String) -> Self {
        Self {
            stream: settings.shared.stream_name.clone(),
            application_name: settings.lease.application_name.clone(),
            worker_id,
            failover: settings.lease.failover,
            renew_interval: settings.lease.renew_interval(),
            max_leases_per_worker: settings.lease.max_leases_per_worker,
            shard_sync_interval: settings.shard_sync_interval,
            initial_position: settings.initial_position,
            retrieval: RetrievalConfig::from_settings(settings),
            table_wait_timeout: settings.shared.stream_wait_timeout,
            handoff_timeout: settings.lease.handoff_timeout,
            cleanup: settings.lease.cleanup,
            failure: settings.failure.clone(),
            assignment: settings.lease.assignment,
            worker_metrics: settings.lease.worker_metrics.clone(),
        }
    }
}

type HeldMap = Arc<Mutex<HashMap<String, Arc<HeldLease>>>>;

/// What this worker last saw of a lease, to tell a live owner from a dead one.
#[derive(Debug, Clone)]
struct Observation {
    counter: i64,
    owner: Option<String>,
    since: Instant,
    /// At `SHARD_END`: nobody needs to hold it, its expiry does not matter.
    ended: bool,
    /// Held by this worker when seen.
    held_here: bool,
}

/// A lease-coordinated consumer of one stream: takes its share of the shards' leases and runs
/// a processor from `F` for each, until the token passed to [`Worker::run`] fires.
///
/// ```no_run
/// use std::time::Duration;
///
/// use kinesis_common::config::ConsumerSettings;
/// use kinesis_consumer::lease::{FailurePolicy, LoggingProcessorFactory, OnFailure, Worker, WorkerConfig};
/// use tokio_util::sync::CancellationToken;
///
/// # async fn run() -> anyhow::Result<()> {
/// let settings = ConsumerSettings::from_env()?;
/// let sdk = kinesis_common::aws::load().await?;
/// let mut config = WorkerConfig::from_settings(&settings, kinesis_consumer::lease::worker_id(&settings));
/// // Give a record up after 3 retries, isolating it first; keep it on a failure stream.
/// config.failure = FailurePolicy {
///     retry_attempts: Some(3),
///     bisect_on_error: true,
///     on_failure: OnFailure::Stream("orders-failed".into()),
///     ..FailurePolicy::default()
/// };
/// let kinesis = kinesis_common::aws::kinesis(&sdk, &settings.shared.timeouts);
/// let dynamodb = kinesis_common::aws::dynamodb(&sdk, &settings.shared.timeouts);
/// let stop = CancellationToken::new();
/// Worker::new(config, kinesis, dynamodb, LoggingProcessorFactory)
///     .run(stop)
///     .await
/// # }
/// ```
pub struct Worker<F: RecordProcessorFactory> {
    config: WorkerConfig,
    kinesis: aws_sdk_kinesis::Client,
    dynamodb: aws_sdk_dynamodb::Client,
    table: LeaseTable,
    factory: Arc<F>,
}

impl<F: RecordProcessorFactory> Worker<F> {
    /// A worker that makes a processor with `factory` for each lease it takes; nothing runs
    /// before [`Worker::run`].
    pub fn new(
        config: WorkerConfig,
        kinesis: aws_sdk_kinesis::Client,
        dynamodb: aws_sdk_dynamodb::Client,
        factory: F,
    ) -> Self {
        let table = LeaseTable::new(dynamodb.clone(), config.application_name.clone())
            .for_stream(&config.stream);
        Self {
            config,
            kinesis,
            dynamodb,
            table,
            factory: Arc::new(factory),
        }
    }

    /// Runs until `cancel` fires, then hands the leases back.
    pub async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        if cancel.is_cancelled() {
            return Ok(());
        }
        match self
            .table
            .create_if_missing(self.config.table_wait_timeout, &cancel)
            .await
        {
            Ok(()) => {}
            Err(_) if cancel.is_cancelled() => return Ok(()),
            Err(err) => return Err(err),
        }
        // A table left by another stream would resume this stream's shards from its checkpoints.
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            checked = self.table.check_stream() => checked?,
        }
        // A failure stream that does not exist would only be found at the first failure.
        if let OnFailure::Stream(name) = &self.config.failure.on_failure {
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                checked = check_failure_stream(&self.kinesis, name, &self.config.stream) => checked?,
            }
        }
        // Fan-out: the stream consumer every worker of the application shares.
        let retrieval = match Retrieval::prepare(
            &self.config.retrieval,
            &self.kinesis,
            &self.config.stream,
            self.config.table_wait_timeout,
            &cancel,
        )
        .await
        {
            Ok(retrieval) => retrieval,
            Err(RegisterError::Cancelled(_)) => return Ok(()),
            Err(err) => return Err(err.into()),
        };
        // Our own token, so that a fatal error can stop the shard tasks like a signal does.
        let cancel = cancel.child_token();
        // The Java KCL 3.x's worker-metrics item: a KCL leader gives leases only to workers
        // that publish one.
        let reporter = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            started = super::metrics_reporter::start(
                self.dynamodb.clone(),
                self.table.name(),
                &self.config.worker_id,
                &self.config.worker_metrics,
                cancel.clone(),
            ) => started?,
        };
        // When the stop signal came: the shutdown's budget counts from there, whatever was
        // still finishing (within `STOP_GRACE`) when it came.
        let stopped_at = Arc::new(std::sync::OnceLock::new());
        let stop_clock = {
            let cancel = cancel.clone();
            let stopped_at = stopped_at.clone();
            tokio::spawn(async move {
                cancel.cancelled().await;
                let _ = stopped_at.set(Instant::now());
            })
        };
        let held: HeldMap = Arc::default();
        let ctx = Arc::new(ShardContext {
            kinesis: self.kinesis.clone(),
            table: self.table.clone(),
            stream: self.config.stream.clone(),
            worker_id: self.config.worker_id.clone(),
            initial_position: self.config.initial_position,
            retrieval,
            parent_poll: self.config.renew_interval,
            sync_now: Arc::new(Notify::new()),
            failure: self.config.failure.clone(),
        });
        let mut coordinator = Coordinator {
            config: self.config.clone(),
            table: self.table.clone(),
            kinesis: self.kinesis.clone(),
            factory: self.factory.clone(),
            ctx: ctx.clone(),
            held: held.clone(),
            observed: HashMap::new(),
            tasks: JoinSet::new(),
            task_shards: HashMap::new(),
            rng: StdRng::from_entropy(),
            cooling: HashMap::new(),
            fatal: None,
            owner_index: None,
            last_scan_keys: None,
            unheld_owned: HashSet::new(),
            next_completed_cleanup: Instant::now() + self.config.cleanup.completed_interval,
            next_garbage_cleanup: Instant::now() + self.config.cleanup.garbage_interval,
            duplicates: Arc::default(),
            leadership: match self.config.assignment {
                LeaseAssignment::Count => None,
                LeaseAssignment::Leader {
                    lease_duration,
                    heartbeat,
                } => Some(Leadership::new(
                    &self.config.worker_id,
                    self.table.client().clone(),
                    self.table.name(),
                    &self.config.worker_metrics,
                    lease_duration,
                    heartbeat,
                )),
            },
            passes: 0,
            next_pass: Instant::now(),
            stale_cleanup: None,
        };
        if let Some(o) = crate::observe::observer() {
            o.metrics
                .failover_seconds
                .set(self.config.failover.as_secs_f64());
            // Leader mode says once its first round read the migration record.
            if coordinator.leadership.is_none() {
                o.taking_seen(TakingStatus {
                    taking: "count",
                    client_version: None,
                });
            }
        }
        tracing::info!(
            stream = %self.config.stream,
            table = %self.table.name(),
            worker_id = %self.config.worker_id,
            failover_ms = self.config.failover.as_millis() as u64,
            renew_ms = self.config.renew_interval.as_millis() as u64,
            mode = "leased",
            retrieval = self.config.retrieval.name(),
            "consumer started"
        );
        unless_cancelled(&cancel, coordinator.sync_shards()).await;

        let renewer_stop = CancellationToken::new();
        let renewer = tokio::spawn(renew_loop(
            held.clone(),
            self.config.renew_interval,
            renewer_stop.clone(),
        ));

        // Which leases the table says are ours: also tells whether the owner index exists.
        unless_cancelled(&cancel, coordinator.poll_owned(&cancel)).await;
        let mut take_tick = tokio::time::interval(coordinator.scan_interval());
        take_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut cleanup_tick = tokio::time::interval(self.config.cleanup.interval);
        cleanup_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        cleanup_tick.tick().await;
        // Leader mode: the lock is read at every heartbeat (and as often as assignment passes
        // are due), the heartbeat written when due.
        let mut leader_tick = tokio::time::interval(match self.config.assignment {
            LeaseAssignment::Leader { heartbeat, .. } => {
                heartbeat.min(coordinator.assignment_interval())
            }
            LeaseAssignment::Count => Duration::from_secs(3600),
        });
        leader_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut owner_tick = tokio::time::interval(OWNER_POLL);
        owner_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sync_tick = tokio::time::interval(self.config.shard_sync_interval);
        sync_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        sync_tick.tick().await;
        // Each step is abandoned at the stop signal: a hung call must not hold the shutdown.
        // Biased, the stop first: once it came, the loop ends rather than start another step
        // that other ready branches would each give `STOP_GRACE` (five of them took 5 s).
        while coordinator.fatal.is_none() {
            let next_expiry = coordinator.next_expiry();
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                _ = take_tick.tick() => {
                    within_grace(&cancel, coordinator.take_leases(&cancel)).await;
                }
                // A lease is due to expire: look right then, not up to a scan interval later.
                _ = tokio::time::sleep_until(next_expiry.unwrap_or_else(Instant::now)), if next_expiry.is_some() => {
                    within_grace(&cancel, coordinator.take_leases(&cancel)).await;
                }
                _ = sync_tick.tick() => {
                    unless_cancelled(&cancel, coordinator.sync_shards()).await;
                }
                _ = cleanup_tick.tick() => {
                    unless_cancelled(&cancel, coordinator.clean_up()).await;
                }
                _ = leader_tick.tick(), if coordinator.leadership.is_some() => {
                    within_grace(&cancel, coordinator.lead()).await;
                }
                _ = owner_tick.tick(), if coordinator.owner_index != Some(false) => {
                    within_grace(&cancel, coordinator.poll_owned(&cancel)).await;
                }
                _ = ctx.sync_now.notified() => {
                    within_grace(&cancel, async {
                        coordinator.sync_shards().await;
                        // The children just got leases: take them now rather than a tick later.
                        coordinator.take_leases(&cancel).await;
                    })
                    .await;
                }
                // Not dropped at the stop signal: a lease released or a handoff finished here
                // is one the shutdown need not give back.
                Some(done) = coordinator.tasks.join_next_with_id(), if !coordinator.tasks.is_empty() => {
                    within_grace(&cancel, coordinator.shard_task_done(done)).await;
                }
            }
        }

        // A fatal error stops the shard tasks the way a signal would.
        cancel.cancel();
        let _ = stop_clock.await;
        let deadline = stopped_at.get().copied().unwrap_or_else(Instant::now) + SHUTDOWN_BUDGET;
        coordinator.shutdown(deadline).await;
        if let Some(leadership) = coordinator.leadership.as_mut() {
            let _ = tokio::time::timeout_at(
                deadline.max(Instant::now() + Duration::from_millis(500)),
                leadership.release(),
            )
            .await;
        }
        renewer_stop.cancel();
        let _ = renewer.await;
        if let Some(reporter) = reporter {
            let _ = reporter.await;
        }
        if let Some(err) = coordinator.fatal.take() {
            return Err(err);
        }
        tracing::info!(stream = %self.config.stream, worker_id = %self.config.worker_id, "consumer stopped");
        Ok(())
    }
}

/// Checks at start that the failure stream exists and is not the stream read (which would
/// feed failures back in). A check that cannot be made (throttling, say) is only logged.
async fn check_failure_stream(
    kinesis: &aws_sdk_kinesis::Client,
    name: &str,
    source: &str,
) -> anyhow::Result<()> {
    if name == source {
        anyhow::bail!("CONSUMER_ON_FAILURE names stream {name:?}, the stream being read: failed records would be read again");
    }
    match kinesis
        .describe_stream_summary()
        .stream_name(name)
        .send()
        .await
    {
        Ok(_) => Ok(()),
        Err(err)
            if kinesis_common::aws::classify(&err) == kinesis_common::aws::ErrorKind::NotFound =>
        {
            anyhow::bail!("CONSUMER_ON_FAILURE names stream {name:?}, which does not exist")
        }
        Err(err) => {
            tracing::warn!(failure_stream = %name, error = %kinesis_common::kinesis::error_text(&err), "cannot check the failure stream; going on");
            Ok(())
        }
    }
}

/// Renews every held lease each interval, all at once, until `stop`.
async fn renew_loop(held: HeldMap, interval: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let leases: Vec<Arc<HeldLease>> = snapshot(&held);
        // A renewal hanging on DynamoDB must not hold up the stop.
        if unless_cancelled(&stop, join_all(leases.iter().map(|lease| lease.renew())))
            .await
            .is_none()
        {
            return;
        }
    }
}

fn snapshot(held: &HeldMap) -> Vec<Arc<HeldLease>> {
    held.lock()
        .map(|h| h.values().cloned().collect())
        .unwrap_or_default()
}

struct Coordinator<F: RecordProcessorFactory> {
    config: WorkerConfig,
    table: LeaseTable,
    kinesis: aws_sdk_kinesis::Client,
    factory: Arc<F>,
    ctx: Arc<ShardContext>,
    held: HeldMap,
    observed: HashMap<String, Observation>,
    tasks: JoinSet<ShardOutcome>,
    task_shards: HashMap<Id, String>,
    rng: StdRng,
    /// Shards whose processing failed here: not taken again before the time, with a backoff
    /// growing at each failure.
    cooling: HashMap<String, (Instant, Backoff)>,
    /// Set when the worker must end with an error (the stream was deleted).
    fatal: Option<anyhow::Error>,
    /// Whether the table has the `leaseOwner` index (`None`: not asked yet).
    owner_index: Option<bool>,
    /// The lease keys the last scan saw, and when: shard sync uses them rather than scanning
    /// again (lease creation is conditional, so a stale list costs a refused put at most).
    last_scan_keys: Option<(Instant, HashSet<String>)>,
    /// Leases the owner index last showed as ours that this worker does not hold.
    unheld_owned: HashSet<String>,
    /// When lease cleanup next looks for completed leases, and for leases of vanished shards.
    next_completed_cleanup: Instant,
    next_garbage_cleanup: Instant,
    /// A second live process with this worker's id is reported once.
    duplicates: Arc<DuplicateReport>,
    /// Leader mode: this worker's part in the election (`None`: count-based taking).
    leadership: Option<Leadership>,
    /// Assignment passes run since this worker took the lead, and when the next one is due.
    passes: u32,
    next_pass: Instant,
    /// The leader's deletion of stale worker-metrics items, while one runs: one at a time.
    stale_cleanup: Option<tokio::task::JoinHandle<()>>,
}

impl<F: RecordProcessorFactory> Coordinator<F> {
    fn me(&self) -> &str {
        &self.config.worker_id
    }

    /// The timings every lease's state machine runs on. The margin gives an old owner's timer
    /// room to stop its task before a new owner starts without it (a tenth of the failover
    /// time: 1 s by default).
    fn timing(&self) -> Timing {
        Timing {
            failover: self.config.failover,
            handoff_wait: self.config.handoff_timeout,
            margin: self.config.failover / 10,
        }
    }

    /// Leader mode, with the application on the KCL 3.x algorithms: this worker takes only
    /// what the leader assigns it. Otherwise (count mode, or an application whose migration
    /// record says its Java workers run the 2.x algorithms) it takes and steals by count.
    fn following(&self) -> bool {
        self.leadership.as_ref().is_some_and(|l| !l.fleet_runs_2x())
    }

    /// How often the leader runs an assignment pass: twice the failover time (the KCL's
    /// `leaseAssignmentIntervalMillis` default).
    fn assignment_interval(&self) -> Duration {
        2 * self.config.failover
    }

    /// Leader mode: one election round; when this worker leads and a pass is due, an
    /// assignment pass.
    async fn lead(&mut self) {
        let Some(leadership) = self.leadership.as_mut() else {
            return;
        };
        let was_leader = leadership.is_leader();
        leadership.tick().await;
        let leading = leadership.is_leader();
        if let Some(o) = crate::observe::observer() {
            o.leader_seen(leadership.status());
            o.taking_seen(TakingStatus {
                taking: if leadership.fleet_runs_2x() {
                    "count"
                } else {
                    "follow"
                },
                client_version: leadership.client_version().map(ClientVersion::as_str),
            });
        }
        if leading && !was_leader {
            // A new reign: rebalance at its first pass, as the KCL does.
            self.passes = 0;
            self.next_pass = Instant::now();
        }
        if leading && Instant::now() >= self.next_pass {
            self.next_pass = Instant::now() + self.assignment_interval();
            let variance = self
                .passes
                .is_multiple_of(AssignmentConfig::default().variance_every);
            self.passes = self.passes.wrapping_add(1);
            self.assignment_pass(variance).await;
        }
    }

    /// The leader's pass: scan the leases, read the workers' metrics, run
    /// [`assignment::assign`], and make its writes (a direct assignment of an expired or
    /// unowned lease, a graceful handoff of a live one).
    async fn assignment_pass(&mut self, variance: bool) {
        let leases = match self.table.list().await {
            Ok(leases) => leases,
            Err(err) => {
                tracing::warn!(error = %err, "assignment pass skipped: the lease table scan failed");
                return;
            }
        };
        let now = Instant::now();
        self.observe(&leases, now);
        let workers = self.worker_loads().await;
        let by_key: HashMap<&str, &Lease> = leases.iter().map(|l| (l.key.as_str(), l)).collect();
        let loads: Vec<LeaseLoad> = workable(&leases)
            .map(|l| LeaseLoad {
                key: l.key.clone(),
                owner: l.owner.clone(),
                checkpoint_owner: l.checkpoint_owner.clone(),
                throughput_kbps: l.throughput_kbps,
                expired_or_unassigned: l.owner.is_none() || self.observed_expired(l, now),
                idle_for_ms: self
                    .observed
                    .get(&l.key)
                    .map_or(0, |o| now.duration_since(o.since).as_millis() as u64),
            })
            .collect();
        let mut config = AssignmentConfig::default();
        if let Some(max) = self.config.max_leases_per_worker {
            config.max_leases_per_worker = max;
        }
        let plan = assignment::assign(&loads, &workers, variance, &config, &mut self.rng);
        tracing::info!(
            worker_id = %self.me(),
            leases = loads.len(),
            workers = workers.len(),
            assignments = plan.len(),
            variance,
            "assignment pass"
        );
        let me = self.me().to_string();
        let writes = plan.into_iter().filter_map(|a| {
            by_key
                .get(a.key.as_str())
                .map(|lease| ((*lease).clone(), a))
        });
        let table = self.table.clone();
        let results: Vec<_> = futures_util::stream::iter(writes)
            .map(|(lease, a)| {
                let table = table.clone();
                let me = me.clone();
                async move {
                    let written = if a.handoff {
                        table.assign_with_handoff(&lease, &a.to, &me).await
                    } else {
                        table.assign(&lease, &a.to, &me).await
                    };
                    (lease, a, written)
                }
            })
            .buffer_unordered(TAKE_CONCURRENCY)
            .collect()
            .await;
        for (lease, a, written) in results {
            match written {
                Ok(_) => {
                    tracing::info!(shard_id = %a.key, from = lease.owner.as_deref().unwrap_or(""), to = %a.to, handoff = a.handoff, "lease assigned")
                }
                Err(err) => {
                    tracing::debug!(shard_id = %a.key, to = %a.to, error = %err, "lease not assigned")
                }
            }
        }
    }

    /// The workers eligible for leases (the KCL's rules, [`super::worker_metrics`]): a valid
    /// worker-metrics item updated within twice `CONSUMER_WORKER_METRICS_INTERVAL_MS`. A worker whose
    /// newest value of a metric failed is left out by [`assignment::assign`].
    async fn worker_loads(&mut self) -> Vec<WorkerLoad> {
        let Some(leadership) = self.leadership.as_ref() else {
            return Vec::new();
        };
        let Some(layout) = leadership.layout() else {
            return Vec::new();
        };
        // The lease table's items, and the legacy table's unless the lock lives in the lease
        // table (the migration is complete), as the KCL's `MigrationAwareLAMDataManager` reads.
        let mut tables = vec![(self.table.name(), MetricsLayout::LeaseTable)];
        if matches!(layout, super::leader::Layout::CoordinatorState(_)) {
            tables.push((
                self.config.worker_metrics.legacy_table.as_str(),
                MetricsLayout::LegacyTable,
            ));
        }
        let metrics = match super::metrics_reporter::read_all(leadership.client(), &tables).await {
            Ok(metrics) => metrics,
            Err(err) => {
                tracing::warn!(error = %err, "reading worker metrics failed: nobody is eligible this pass");
                return Vec::new();
            }
        };
        let now_ms = chrono::Utc::now().timestamp_millis();
        let client = leadership.client().clone();
        self.delete_stale_worker_metrics(&client, &metrics, now_ms);
        metrics
            .into_iter()
            .map(|(m, _)| m)
            // The KCL's leader counts an item as gone after twice its own reporting interval.
            .filter(|m| {
                m.is_valid() && !m.is_expired(now_ms, 2 * self.config.worker_metrics.interval)
            })
            .map(|m| WorkerLoad {
                worker_id: m.worker_id,
                stats: m.metric_stats.unwrap_or_default(),
                operating_range: m.operating_range.unwrap_or_default(),
            })
            .collect()
    }

    /// The leader deletes the worker-metrics items not updated for [`STALE_AFTER`] (workers
    /// long gone, whose ids would otherwise pile up in the table), in the background and one
    /// deletion run at a time, as the KCL's `MigrationAwareLAMDataManager` does. An item whose
    /// worker wrote it again since it was read stays ([`metrics_reporter::delete_if_unchanged`]).
    fn delete_stale_worker_metrics(
        &mut self,
        client: &aws_sdk_dynamodb::Client,
        metrics: &[(WorkerMetrics, MetricsLayout)],
        now_ms: i64,
    ) {
        if self
            .stale_cleanup
            .as_ref()
            .is_some_and(|h| !h.is_finished())
        {
            return;
        }
        let stale: Vec<(String, MetricsLayout, WorkerMetrics)> = metrics
            .iter()
            .filter(|(m, _)| m.last_update.is_some() && m.is_expired(now_ms, STALE_AFTER))
            .map(|(m, layout)| {
                let table = match layout {
                    MetricsLayout::LeaseTable => self.table.name().to_string(),
                    MetricsLayout::LegacyTable => self.config.worker_metrics.legacy_table.clone(),
                };
                (table, *layout, m.clone())
            })
            .collect();
        if stale.is_empty() {
            return;
        }
        let client = client.clone();
        self.stale_cleanup = Some(tokio::spawn(async move {
            for (table, layout, m) in stale {
                let lut = m.last_update.unwrap_or_default();
                match metrics_reporter::delete_if_unchanged(&client, &table, layout, &m).await {
                    Ok(true) => {
                        tracing::info!(worker_id = %m.worker_id, table = %table, lut, "stale worker-metrics item deleted")
                    }
                    Ok(false) => {
                        tracing::debug!(worker_id = %m.worker_id, table = %table, "stale worker-metrics item changed since read: kept")
                    }
                    Err(err) => {
                        tracing::warn!(worker_id = %m.worker_id, table = %table, error = %err, "deleting a stale worker-metrics item failed; the next pass tries again")
                    }
                }
            }
        }));
    }

    fn held_keys(&self) -> HashSet<String> {
        self.held
            .lock()
            .map(|h| h.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn forget(&self, shard_id: &str) -> Option<Arc<HeldLease>> {
        self.held.lock().ok().and_then(|mut h| h.remove(shard_id))
    }

    /// Records what the scan shows, keeping the time of the last counter (or owner) change.
    fn observe(&mut self, leases: &[Lease], now: Instant) {
        let held = self.held_keys();
        let mut next = HashMap::with_capacity(leases.len());
        for lease in leases {
            let held_here = held.contains(&lease.key);
            let previous = self.observed.get(&lease.key);
            // Our id on a lease we do not hold, written since the last scan by somebody else
            // than us: a second live process with this worker's id.
            if let Some(o) = previous {
                if lease.is_owned_by(self.me())
                    && o.owner.as_deref() == Some(self.me())
                    && !o.held_here
                    && !held_here
                    && lease.handed_over_by.is_none()
                    && o.counter != lease.counter
                {
                    self.duplicates.report(self.me(), &lease.key);
                }
            }
            let since = match previous {
                Some(o) if o.counter == lease.counter && o.owner == lease.owner => o.since,
                _ => now,
            };
            next.insert(
                lease.key.clone(),
                Observation {
                    counter: lease.counter,
                    owner: lease.owner.clone(),
                    since,
                    ended: lease.checkpoint == Checkpoint::ShardEnd,
                    held_here,
                },
            );
        }
        self.observed = next;
    }

    /// Tells the observer what the scan showed: every lease, and the workers alive (this one,
    /// and every owner of a lease that has not expired).
    fn report(&self, observer: &crate::observe::Observer, leases: &[Lease], now: Instant) {
        let mut workers: Vec<String> = leases
            .iter()
            .filter(|l| l.checkpoint != Checkpoint::ShardEnd && !self.is_expired(l, now))
            .filter_map(|l| l.owner.clone())
            .chain(std::iter::once(self.me().to_string()))
            .collect();
        workers.sort();
        workers.dedup();
        let mut sorted: Vec<&Lease> = leases.iter().collect();
        sorted.sort_by(|x, y| x.key.cmp(&y.key));
        let rows = sorted
            .into_iter()
            .map(|l| crate::observe::LeaseRow {
                shard_id: l.key.clone(),
                owner: l.owner.clone(),
                checkpoint: l.checkpoint.to_string(),
                counter: l.counter,
                parents: l.parent_shard_ids.clone(),
                millis_behind_latest: None,
                records_per_second: None,
                throughput_kbps: l.throughput_kbps,
            })
            .collect();
        observer
            .metrics
            .leases_held
            .set(self.held_keys().len() as i64);
        observer
            .metrics
            .unheld_lease_seconds
            .set(self.longest_unheld(now).as_secs_f64());
        observer.leases_scanned(rows, workers);
    }

    /// Of the leases of shards not yet ended, the longest time one has gone without a live
    /// holder as this worker saw them: since it was released, or since its holder last renewed
    /// it once that is longer ago than the failover time (`kinesis_consumer_unheld_lease_seconds`).
    fn longest_unheld(&self, now: Instant) -> Duration {
        self.observed
            .values()
            .filter(|o| !o.ended)
            .map(|o| (o, now.saturating_duration_since(o.since)))
            .filter(|(o, age)| o.owner.is_none() || *age > self.config.failover)
            .map(|(_, age)| age)
            .max()
            .unwrap_or_default()
    }

    /// When the next lease held by another worker (or, following a leader, assigned to this one
    /// and not taken up yet) expires if its counter does not move again.
    fn next_expiry(&self) -> Option<Instant> {
        let now = Instant::now();
        self.observed
            .values()
            // Following a leader, a lease assigned to this worker without `handedOverBy` (by a
            // Java leader) is taken once it expires: look right then too, before the leader's
            // next pass counts it as expired and moves it again.
            .filter(|o| {
                o.owner.is_some()
                    && (o.owner.as_deref() != Some(self.me()) || (self.following() && !o.held_here))
                    && !o.ended
            })
            .map(|o| o.since + self.config.failover + EXPIRY_MARGIN)
            .filter(|at| *at > now)
            .min()
    }

    /// Whether the lease's counter and owner have not changed for longer than the failover
    /// time, as this worker saw them.
    fn observed_expired(&self, lease: &Lease, now: Instant) -> bool {
        self.observed
            .get(&lease.key)
            .is_some_and(|o| now.duration_since(o.since) > self.config.failover)
    }

    /// Whether this worker may take `lease` without a handoff ([`take_rule`] decides with it).
    /// A lease showing this worker's id but not held here counts only when a stopping worker
    /// handed it over, or once it expired like anyone else's: it may belong to a second live
    /// process with the same id.
    fn is_expired(&self, lease: &Lease, now: Instant) -> bool {
        lease.owner.is_none()
            || (lease.is_owned_by(self.me()) && lease.handed_over_by.is_some())
            || self.observed_expired(lease, now)
    }

    /// How often the table is scanned for leases to take: half the failover time when the
    /// owner index tells this worker at once about leases handed to it or taken from it, a
    /// third of it (as the KCL) when only scans tell. A lease due to expire gets its own scan.
    fn scan_interval(&self) -> Duration {
        if self.owner_index == Some(false) {
            self.config.renew_interval
        } else {
            self.config.failover / 2
        }
    }

    /// Reads which leases the table says this worker owns (a keys-only `Query` on the owner
    /// index). Leases held here but owned by another worker now are renewed at once, which
    /// tells a graceful handoff (stop the shard, checkpoint, let go) from a loss; leases owned
    /// but not held (handed over by a stopping worker) are taken by a scan at once.
    async fn poll_owned(&mut self, cancel: &CancellationToken) {
        let owned = match self.table.owned_keys(self.me()).await {
            Ok(Some(keys)) => {
                self.owner_index = Some(true);
                keys.into_iter().collect::<HashSet<String>>()
            }
            Ok(None) => {
                tracing::info!(table = %self.table.name(), "the lease table has no LeaseOwnerToLeaseKeyIndex: leases are found by scans only");
                self.owner_index = Some(false);
                return;
            }
            Err(err) => {
                tracing::debug!(error = %err, "owner index query failed");
                return;
            }
        };
        let taken_away: Vec<Arc<HeldLease>> = self
            .held
            .lock()
            .map(|h| {
                h.iter()
                    .filter(|(k, _)| !owned.contains(*k))
                    .map(|(_, l)| l.clone())
                    .collect()
            })
            .unwrap_or_default();
        if !taken_away.is_empty() {
            join_all(taken_away.iter().map(|lease| lease.renew())).await;
        }
        let held = self.held_keys();
        let unheld: HashSet<String> = owned.into_iter().filter(|k| !held.contains(k)).collect();
        // Scan for new ones only: a lease whose release failed stays ours in the table until
        // it expires, and must not make every poll a scan.
        let new = unheld.iter().any(|k| !self.unheld_owned.contains(k));
        self.unheld_owned = unheld;
        if new {
            self.take_leases(cancel).await;
        }
    }

    /// Taking: scan, plan, take; scanned again at once (up to twice) when takes lost a race
    /// (a counter moved between the scan and the take), so a joining worker is not left short
    /// until the next scan interval.
    async fn take_leases(&mut self, cancel: &CancellationToken) {
        for _ in 0..3 {
            if self.take_cycle(cancel).await == 0 || cancel.is_cancelled() {
                return;
            }
        }
    }

    /// One taking cycle: scan, plan, take. Returns how many takes found the lease changed.
    async fn take_cycle(&mut self, cancel: &CancellationToken) -> usize {
        let observer = crate::observe::observer();
        let leases = match self.table.list().await {
            Ok(leases) => leases,
            Err(err) => {
                if let Some(o) = observer {
                    o.probe.set_not_ready(format!(
                        "lease table {} does not answer: {err}",
                        self.table.name()
                    ));
                }
                tracing::warn!(error = %err, "lease table scan failed, taking nothing this cycle");
                return 0;
            }
        };
        let now = Instant::now();
        self.last_scan_keys = Some((now, leases.iter().map(|l| l.key.clone()).collect()));
        self.observe(&leases, now);
        if let Some(o) = observer {
            o.probe.set_ready();
            self.report(o, &leases, now);
        }
        let held = self.held_keys();
        let by_key: HashMap<&str, &Lease> = leases.iter().map(|l| (l.key.as_str(), l)).collect();
        // A failure long past is forgotten, backoff included.
        let (_, cap) = FAILED_SHARD_BACKOFF;
        self.cooling.retain(|_, (until, _)| *until + 2 * cap > now);
        // Only leases someone can work on now (`sync::workable`).
        let views: Vec<LeaseView> = workable(&leases)
            .map(|l| {
                if held.contains(&l.key) {
                    LeaseView {
                        key: l.key.clone(),
                        owner: Some(self.me().to_string()),
                        expired: false,
                    }
                } else {
                    // Cooling down after a failure here: not for this worker to take yet.
                    let cooling = self
                        .cooling
                        .get(&l.key)
                        .is_some_and(|(until, _)| *until > now);
                    LeaseView {
                        key: l.key.clone(),
                        owner: l.owner.clone(),
                        expired: !cooling && self.is_expired(l, now),
                    }
                }
            })
            .collect();
        // Following a leader: take only what the table shows as ours (assigned to us, or
        // handed over), by `follow_rule`; balancing is the leader's.
        let plan = if self.following() {
            balance::Plan {
                take: views
                    .iter()
                    .filter(|v| v.owner.as_deref() == Some(self.me()) && !held.contains(&v.key))
                    .filter(|v| {
                        self.cooling
                            .get(&v.key)
                            .is_none_or(|(until, _)| *until <= now)
                    })
                    .map(|v| v.key.clone())
                    .collect(),
                ..balance::Plan::default()
            }
        } else {
            balance::plan(
                &views,
                &self.config.worker_id,
                self.config.max_leases_per_worker,
                &mut self.rng,
            )
        };
        let following = self.following();
        // The takes run side by side: a worker stealing 100 leases does it in a fraction of a
        // second, before the victim's next renewal moves their counters. Each is a lease state
        // machine from its first write: `take_rule` says which write (a take, or a steal with a
        // graceful handoff of a live worker's lease).
        let table = self.table.clone();
        let me = self.me().to_string();
        let handoffs = !self.config.handoff_timeout.is_zero();
        let timing = self.timing();
        let jobs: Vec<(Lease, Op)> = plan
            .take
            .iter()
            .filter_map(|key| by_key.get(key.as_str()).map(|l| (*l).clone()))
            .filter_map(|lease| {
                let expired = self.observed_expired(&lease, now);
                if following {
                    follow_rule(&lease.ownership(), &me, expired).map(|op| (lease, op))
                } else {
                    take_rule(&lease.ownership(), &me, expired, handoffs).map(|op| (lease, op))
                }
            })
            .collect();
        let mut results = futures_util::stream::iter(jobs)
            .map(|(lease, op)| {
                let table = table.clone();
                let me = me.clone();
                async move {
                    let machine = LeaseMachine::take(
                        &me,
                        lease.ownership(),
                        op.clone(),
                        timing,
                        Instant::now(),
                    );
                    let taken = match op {
                        Op::TakeWithHandoff => table.take_with_handoff(&lease, &me).await,
                        op => table.take(&lease, &me, op == Op::TakeExpired).await,
                    };
                    (lease, machine, taken)
                }
            })
            .buffer_unordered(TAKE_CONCURRENCY);
        let mut conflicts = 0;
        // Each answer is dealt with as it comes: a take that went through is held (and given
        // back by the shutdown) even when the stop signal cuts the cycle short.
        while let Some((lease, mut machine, taken)) = results.next().await {
            match taken {
                Ok(taken) => {
                    machine.on(Event::Written(taken.ownership()), Instant::now());
                    if machine.is_gone() {
                        continue;
                    }
                    tracing::info!(
                        shard_id = %taken.key,
                        worker_id = %self.me(),
                        previous_owner = lease.owner.as_deref().unwrap_or(""),
                        stolen = !plan.stolen_from.is_empty(),
                        checkpoint = %taken.checkpoint,
                        target_leases = plan.target,
                        workers = plan.workers,
                        "lease acquired"
                    );
                    if let Some(o) = observer {
                        o.metrics.lease_acquisitions.inc();
                    }
                    self.start_shard(machine, taken, cancel);
                }
                Err(err) => {
                    if matches!(err, WriteError::Conflict(_)) {
                        conflicts += 1;
                    }
                    tracing::debug!(shard_id = %lease.key, error = %err, "lease not taken");
                }
            }
        }
        conflicts
    }

    fn start_shard(
        &mut self,
        machine: LeaseMachine<Instant>,
        lease: Lease,
        cancel: &CancellationToken,
    ) {
        let shard_id = lease.key.clone();
        // Taken while the previous owner may still be finishing its batch: wait for it.
        let handoff = machine.state() == State::AwaitingHandoff;
        // The shard's own stop token: cancelled by a stop request, or by a handoff.
        let stop = cancel.child_token();
        let held = Arc::new(HeldLease::new(
            machine,
            lease,
            self.table.clone(),
            stop.clone(),
            self.duplicates.clone(),
            self.config.renew_interval,
        ));
        if let Ok(mut map) = self.held.lock() {
            map.insert(shard_id.clone(), held.clone());
        }
        if let Some(o) = crate::observe::observer() {
            o.metrics
                .shard_started(&shard_id, self.config.failure.on_failure.action());
        }
        let processor = self.factory.create(&shard_id);
        let ctx = self.ctx.clone();
        let handle = self.tasks.spawn(async move {
            if handoff {
                let handed = tokio::select! {
                    _ = stop.cancelled() => return ShardOutcome::Stopped,
                    _ = held.until_lost() => false,
                    handed = held.await_handoff(HANDOFF_POLL) => handed,
                };
                if !handed {
                    return ShardOutcome::Lost;
                }
            }
            shard::consume(ctx, held, processor, stop).await
        });
        self.task_shards.insert(handle.id(), shard_id);
    }

    async fn shard_task_done(&mut self, done: Result<(Id, ShardOutcome), tokio::task::JoinError>) {
        let (id, outcome) = match done {
            Ok((id, outcome)) => (id, outcome),
            Err(join) => {
                let id = join.id();
                (
                    id,
                    ShardOutcome::Failed(format!("shard task panicked: {join}")),
                )
            }
        };
        let Some(shard_id) = self.task_shards.remove(&id) else {
            return;
        };
        // The map's lock is not held across the await.
        let lease = self
            .held
            .lock()
            .ok()
            .and_then(|h| h.get(&shard_id).cloned());
        let end = match &outcome {
            ShardOutcome::Ended => TaskEnd::Ended,
            ShardOutcome::Failed(_) => TaskEnd::Failed,
            // Kept (and renewed) until the shutdown gives every lease back; a lease being
            // handed off is finished now, so that the new owner starts.
            ShardOutcome::Stopped | ShardOutcome::Lost | ShardOutcome::StreamGone(_) => {
                TaskEnd::Stopped
            }
        };
        if let Some(lease) = lease {
            lease.task_ended(end).await;
            if lease.state() == State::Gone(super::machine::Gone::LetGo)
                || lease.is_lost()
                || matches!(lease.state(), State::Gone(_))
            {
                self.forget(&shard_id);
            }
        }
        match outcome {
            ShardOutcome::Ended => {
                self.cooling.remove(&shard_id);
            }
            ShardOutcome::Failed(reason) => {
                let (base, cap) = FAILED_SHARD_BACKOFF;
                let (until, backoff) = self
                    .cooling
                    .entry(shard_id.clone())
                    .or_insert_with(|| (Instant::now(), Backoff::new(base, cap)));
                let wait = backoff.next_delay().max(base);
                *until = Instant::now() + wait;
                if let Some(o) = crate::observe::observer() {
                    o.metrics.shard_failed(&shard_id);
                }
                tracing::error!(shard_id = %shard_id, worker_id = %self.me(), error = %reason, retry_in_ms = wait.as_millis() as u64, "shard processing failed, releasing its lease");
            }
            ShardOutcome::StreamGone(reason) => {
                self.fatal = Some(anyhow::anyhow!(reason));
            }
            ShardOutcome::Stopped | ShardOutcome::Lost => {}
        }
    }

    /// Creates leases for shards that have none.
    async fn sync_shards(&mut self) {
        let shards = match kinesis_common::kinesis::list_shards(&self.kinesis, &self.config.stream)
            .await
        {
            Ok(shards) => {
                self.ctx.retrieval.note_listing(&shards);
                shards
            }
            Err(err) if crate::reader::stream_gone(&self.kinesis, &self.config.stream).await => {
                self.fatal = Some(anyhow::anyhow!(
                    "stream {:?} was deleted while being read ({err:#})",
                    self.config.stream
                ));
                return;
            }
            Err(err) => {
                tracing::warn!(error = %format!("{err:#}"), "shard sync failed, keeping the current leases");
                return;
            }
        };
        let recent = self
            .last_scan_keys
            .as_ref()
            .filter(|(at, _)| at.elapsed() < self.config.failover)
            .map(|(_, keys)| keys.clone());
        let existing: HashSet<String> = match recent {
            Some(keys) => keys,
            None => match self.table.list().await {
                Ok(leases) => leases.into_iter().map(|l| l.key).collect(),
                Err(err) => {
                    tracing::warn!(error = %err, "shard sync failed, keeping the current leases");
                    return;
                }
            },
        };
        let infos: Vec<ShardInfo> = shards.iter().map(ShardInfo::from_shard).collect();
        for lease in leases_to_create(&infos, &existing, self.config.initial_position) {
            match self.table.create_lease(&lease).await {
                Ok(true) => {
                    tracing::info!(shard_id = %lease.key, checkpoint = %lease.checkpoint, parents = ?lease.parent_shard_ids, "lease created")
                }
                Ok(false) => {}
                Err(err) => {
                    // Children must not get a lease before their parents: stop this pass.
                    tracing::warn!(error = %err, "lease creation failed, retrying at the next shard sync");
                    return;
                }
            }
        }
    }

    /// The other workers alive as of the last scan (owners of leases not at `SHARD_END` whose
    /// counter moved within the failover time), with how many leases each holds.
    fn live_others(&self) -> Vec<(String, usize)> {
        let now = Instant::now();
        let mut load: HashMap<String, usize> = HashMap::new();
        for o in self.observed.values() {
            if o.ended || now.duration_since(o.since) > self.config.failover {
                continue;
            }
            if let Some(owner) = o.owner.as_deref().filter(|w| *w != self.me()) {
                *load.entry(owner.to_string()).or_default() += 1;
            }
        }
        load.into_iter().collect()
    }

    /// Deletes the leases [`cleanup`] allows, when their interval is due: completed leases (of
    /// shards read to their end, once every child is past its start) and leases of shards
    /// `ListShards` no longer reports. Every delete is conditional on the counter scanned.
    async fn clean_up(&mut self) {
        let now = Instant::now();
        let completed_due = now >= self.next_completed_cleanup;
        let garbage_due = now >= self.next_garbage_cleanup;
        if !completed_due && !garbage_due {
            return;
        }
        let leases = match self.table.list().await {
            Ok(leases) => leases,
            Err(err) => {
                tracing::warn!(error = %err, "lease cleanup skipped: the lease table scan failed");
                return;
            }
        };
        let mut doomed: Vec<(&Lease, &'static str)> = Vec::new();
        if completed_due {
            self.next_completed_cleanup = now + self.config.cleanup.completed_interval;
            doomed.extend(
                cleanup::completed(&leases)
                    .into_iter()
                    .map(|l| (l, "completed")),
            );
        }
        let listed: Option<HashSet<String>> = if garbage_due {
            self.next_garbage_cleanup = now + self.config.cleanup.garbage_interval;
            // Listed after the scan: every lease scanned was created from an older listing.
            match kinesis_common::kinesis::list_shards(&self.kinesis, &self.config.stream).await {
                Ok(shards) => Some(shards.iter().map(|s| s.shard_id().to_string()).collect()),
                Err(err) => {
                    tracing::warn!(error = %format!("{err:#}"), "lease cleanup: ListShards failed, no lease of a vanished shard is deleted this time");
                    None
                }
            }
        } else {
            None
        };
        if let Some(listed) = &listed {
            for lease in cleanup::garbage(&leases, listed) {
                if !doomed.iter().any(|(l, _)| l.key == lease.key) {
                    doomed.push((lease, "shard no longer exists"));
                }
            }
        }
        for (lease, reason) in doomed {
            match self.table.delete_lease(lease).await {
                Ok(true) => {
                    tracing::info!(shard_id = %lease.key, worker_id = %self.me(), checkpoint = %lease.checkpoint, reason = reason, "lease deleted")
                }
                Ok(false) => {}
                Err(err) => {
                    tracing::warn!(shard_id = %lease.key, error = %err, "deleting a lease failed")
                }
            }
        }
    }

    /// Lets every shard task finish its batch, then hands every lease to a live worker (or
    /// releases it), within the budget.
    async fn shutdown(&mut self, deadline: Instant) {
        let release_reserve = Duration::from_millis(1000);
        while !self.tasks.is_empty() {
            match tokio::time::timeout_at(
                deadline - release_reserve,
                self.tasks.join_next_with_id(),
            )
            .await
            {
                Ok(Some(done)) => {
                    // Its release may hang on DynamoDB: the budget holds.
                    if tokio::time::timeout_at(deadline, self.shard_task_done(done))
                        .await
                        .is_err()
                    {
                        tracing::warn!(
                            "releasing a finished shard's lease timed out; it will expire instead"
                        );
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        shards = self.tasks.len(),
                        "shard tasks did not finish in time, abandoning their batches"
                    );
                    self.tasks.abort_all();
                    while self.tasks.join_next().await.is_some() {}
                    break;
                }
            }
        }
        let leases: Vec<Arc<HeldLease>> = self
            .held
            .lock()
            .map(|mut h| h.drain().map(|(_, l)| l).collect())
            .unwrap_or_default();
        // Each lease to the least loaded live worker, which finds it through the owner index
        // within `OWNER_POLL`; released (owner removed) when there is none or no index. A
        // fresh scan first, so that a worker that joined since the last one counts.
        if self.owner_index == Some(true) && !leases.is_empty() {
            let scan_by = (Instant::now() + Duration::from_millis(1000)).min(deadline);
            if let Ok(Ok(scanned)) = tokio::time::timeout_at(scan_by, self.table.list()).await {
                self.observe(&scanned, Instant::now());
            }
        }
        let mut recipients = self.live_others();
        let mut plan: Vec<(Arc<HeldLease>, Option<String>)> = Vec::new();
        for lease in leases {
            let to = if self.owner_index == Some(true) {
                recipients
                    .iter_mut()
                    .filter(|(_, n)| self.config.max_leases_per_worker.is_none_or(|max| *n < max))
                    .min_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)))
                    .map(|(w, n)| {
                        *n += 1;
                        w.clone()
                    })
            } else {
                None
            };
            plan.push((lease, to));
        }
        let released = tokio::time::timeout_at(
            deadline,
            join_all(
                plan.iter()
                    .map(|(lease, to)| async move { lease.let_go(to.clone()).await }),
            ),
        )
        .await;
        if released.is_err() {
            tracing::warn!("releasing leases timed out; they will expire instead");
        }
    }
}
