//! The Java KCL 3.x leader election (`DynamoDBLockBasedLeaderDecider` over the
//! amazon-dynamodb-lock-client), so that our workers and Java workers of one application elect
//! one leader, which assigns leases ([`super::assignment`]).
//!
//! The lock is one item, key `Leader`, with `ownerName` (the worker id), `leaseDuration` (a
//! string of milliseconds), `recordVersionNumber` (a fresh UUID at every write) and
//! `entityType` `LEADER`. Where it lives ([`Layout`]): since KCL 3.5 in the lease table
//! (`leaseKey = Leader`); applications that started on 3.0-3.4 and have not finished their table
//! migration keep it in `<application>-CoordinatorState` (`key = Leader`).
//!
//! The protocol, as the lock client runs it ([`Election`] is its pure part):
//! - **Acquire** an absent lock with a put conditional on `attribute_not_exists`; a released
//!   one (`isReleased`) with a put conditional on its version.
//! - **Expiry is judged by an unchanged version**: another worker's lock may be taken only
//!   once this worker has seen the same `recordVersionNumber` for the lock's `leaseDuration`
//!   (no clocks compared across machines); then a put conditional on that version.
//! - **Heartbeat**: the holder writes a new version (and `leaseDuration`) every heartbeat
//!   period, conditional on the version it wrote last and on `ownerName`.
//! - **Release**: a delete conditional on the version and owner (the KCL releases on shutdown).
//!
//! A worker counts itself leader until `leaseDuration` after it *sent* its last write that went
//! through: any other worker counts from when it *saw* that version, which is later.
//!
//! Every call goes through the DynamoDB client built in `kinesis_common::aws`, with its per-attempt
//! and per-operation timeouts.

use std::collections::HashMap;
use std::ops::Add;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;
use kinesis_common::aws::{classify, ErrorKind};
use kinesis_common::kinesis::error_text;

use super::item::{ENTITY_TYPE, LEASE_KEY};
use super::worker_metrics::{
    effective_migration_status, TableMigrationStatus, COORDINATOR_STATE_KEY,
};

/// The lock's key, in either layout.
pub const LEADER_KEY: &str = "Leader";
/// `entityType` of the lock item.
pub const LEADER_ENTITY_TYPE: &str = "LEADER";
const OWNER_NAME: &str = "ownerName";
const LEASE_DURATION: &str = "leaseDuration";
const RECORD_VERSION: &str = "recordVersionNumber";
const IS_RELEASED: &str = "isReleased";

/// Where the lock item lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// KCL 3.5: in the lease table, `leaseKey = Leader`.
    LeaseTable(String),
    /// KCL 3.0-3.4: in `<application>-CoordinatorState`, `key = Leader`.
    CoordinatorState(String),
}

impl Layout {
    pub fn table(&self) -> &str {
        match self {
            Layout::LeaseTable(t) | Layout::CoordinatorState(t) => t,
        }
    }

    fn key_attribute(&self) -> &'static str {
        match self {
            Layout::LeaseTable(_) => LEASE_KEY,
            Layout::CoordinatorState(_) => COORDINATOR_STATE_KEY,
        }
    }

    /// `lease-table` or `coordinator-state`, for logs and `/status`.
    pub fn name(&self) -> &'static str {
        match self {
            Layout::LeaseTable(_) => "lease-table",
            Layout::CoordinatorState(_) => "coordinator-state",
        }
    }
}

/// The key of the KCL 3.x's migration record (`MigrationState`), next to the lock in either
/// layout: its `cv` says which algorithms the application's Java workers run.
pub const MIGRATION_KEY: &str = "Migration3.0";
const CLIENT_VERSION: &str = "cv";
/// How often the migration record is read (the KCL's `ClientVersionChangeMonitor` reads it
/// every minute), or every lock duration when that is shorter, so that a worker never leads
/// for a whole lock duration on a stale reading.
pub const CLIENT_VERSION_CHECK: Duration = Duration::from_secs(60);

/// The KCL 3.x's `ClientVersion`, as the migration record's `cv` stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientVersion {
    /// Upgrading from 2.x: the KCL 2.x algorithms (lease-count taking, no lock-based leader),
    /// worker metrics published, until the fleet is ready and the record flips to
    /// [`ClientVersion::V3xWithRollback`].
    UpgradeFrom2x,
    /// Rolled back to 2.x: the KCL 2.x algorithms, no worker metrics.
    V2x,
    /// The KCL 3.x algorithms (the lock-based leader assigns), rollback still possible.
    V3xWithRollback,
    /// The KCL 3.x algorithms.
    V3x,
}

impl ClientVersion {
    /// `None` for a value this consumer does not know (`CLIENT_VERSION_INIT` is transient and
    /// never stored).
    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "CLIENT_VERSION_UPGRADE_FROM_2X" => Self::UpgradeFrom2x,
            "CLIENT_VERSION_2X" => Self::V2x,
            "CLIENT_VERSION_3X_WITH_ROLLBACK" => Self::V3xWithRollback,
            "CLIENT_VERSION_3X" => Self::V3x,
            _ => return None,
        })
    }

    /// The value as `cv` stores it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UpgradeFrom2x => "CLIENT_VERSION_UPGRADE_FROM_2X",
            Self::V2x => "CLIENT_VERSION_2X",
            Self::V3xWithRollback => "CLIENT_VERSION_3X_WITH_ROLLBACK",
            Self::V3x => "CLIENT_VERSION_3X",
        }
    }

    /// Whether the Java workers run the KCL 2.x algorithms: they take and steal by lease
    /// count and elect no leader by the lock, so a worker of ours must do the same.
    pub fn runs_2x_algorithms(self) -> bool {
        matches!(self, Self::UpgradeFrom2x | Self::V2x)
    }
}

/// The lock item as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lock {
    pub owner: String,
    pub lease_duration: Duration,
    pub version: String,
    pub released: bool,
}

/// The condition of an acquiring put.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquire {
    /// No lock item: `attribute_not_exists`.
    Absent,
    /// A released or expired lock: `recordVersionNumber` = this.
    Version(String),
}

/// What to do after reading the lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Put the lock with this worker as owner.
    Acquire(Acquire),
    /// This worker holds it: write a new version over this one.
    Heartbeat(String),
    /// Another worker holds it (for now).
    Follow(String),
}

/// One worker's view of the election, with no I/O: the version it has watched and since when,
/// and the lock it holds. `T` is the driver's clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Election<T> {
    me: String,
    /// Another worker's lock version, and when this worker first saw it.
    watched: Option<(String, T)>,
    /// The version this worker last wrote, when that write was sent, and the lock's duration.
    held: Option<(String, T, Duration)>,
}

impl<T> Election<T>
where
    T: Copy + Ord + Add<Duration, Output = T>,
{
    pub fn new(me: &str) -> Self {
        Self {
            me: me.to_string(),
            watched: None,
            held: None,
        }
    }

    /// Decides from the lock as a consistent read showed it at `now`.
    pub fn on_read(&mut self, read: Option<Lock>, now: T) -> Decision {
        let Some(lock) = read else {
            self.held = None;
            self.watched = None;
            return Decision::Acquire(Acquire::Absent);
        };
        if lock.released {
            self.held = None;
            self.watched = None;
            return Decision::Acquire(Acquire::Version(lock.version));
        }
        if lock.owner == self.me
            && self
                .held
                .as_ref()
                .is_some_and(|(v, _, _)| *v == lock.version)
        {
            return Decision::Heartbeat(lock.version);
        }
        // Someone else's (or a version we did not write: another process with our id, or a
        // previous run of this worker): expired only once seen unchanged for its duration.
        self.held = None;
        match &self.watched {
            Some((v, since)) if *v == lock.version => {
                if now >= *since + lock.lease_duration {
                    return Decision::Acquire(Acquire::Version(lock.version));
                }
            }
            _ => self.watched = Some((lock.version.clone(), now)),
        }
        Decision::Follow(lock.owner)
    }

    /// An acquiring put or a heartbeat sent at `sent` went through with `version`.
    pub fn on_written(&mut self, version: String, sent: T, lease_duration: Duration) {
        self.watched = None;
        self.held = Some((version, sent, lease_duration));
    }

    /// A write's condition failed: someone else holds the lock now.
    pub fn on_conflict(&mut self) {
        self.held = None;
    }

    /// The lock was released by this worker.
    pub fn on_released(&mut self) {
        self.held = None;
    }

    /// Whether this worker leads at `now`: its last write that went through was sent less than
    /// the lock's duration ago.
    pub fn is_leader(&self, now: T) -> bool {
        self.held
            .as_ref()
            .is_some_and(|(_, sent, duration)| now < *sent + *duration)
    }

    /// The version this worker holds, to release it.
    pub fn held_version(&self) -> Option<&str> {
        self.held.as_ref().map(|(v, _, _)| v.as_str())
    }
}

/// A failed lock call.
#[derive(Debug, thiserror::Error)]
#[error("leader lock in {table}: {operation}: {message}")]
pub struct LockError {
    pub table: String,
    pub operation: &'static str,
    pub kind: ErrorKind,
    pub message: String,
}

/// The lock's calls on DynamoDB, for one layout.
#[derive(Debug, Clone)]
pub struct LockTable {
    client: Client,
    layout: Layout,
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_string())
}

impl LockTable {
    pub fn new(client: Client, layout: Layout) -> Self {
        Self { client, layout }
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Finds where an application keeps its lock, as the KCL 3.5 routes its lock client: the
    /// lease table once the table migration is `COMPLETE` (or when there is no
    /// `<application>-CoordinatorState` table: a new application, or one from 2.x), that
    /// legacy table otherwise ([`effective_migration_status`]).
    pub async fn detect(
        client: &Client,
        lease_table: &str,
        coordinator_state_table: &str,
    ) -> Result<Layout, LockError> {
        let legacy = coordinator_state_table.to_string();
        let (exists, record) = super::metrics_reporter::read_migration_record(client, &legacy)
            .await
            .map_err(|(kind, message)| LockError {
                table: legacy.clone(),
                operation: "GetItem",
                kind,
                message,
            })?;
        // This worker never migrates tables itself: `migrate_all_to_lease_table` is false.
        match effective_migration_status(exists, record, false) {
            Ok(TableMigrationStatus::Complete) => Ok(Layout::LeaseTable(lease_table.to_string())),
            Ok(_) => Ok(Layout::CoordinatorState(legacy)),
            Err(err) => Err(LockError {
                table: legacy,
                operation: "GetItem",
                kind: ErrorKind::Invalid,
                message: err.to_string(),
            }),
        }
    }

    fn error(&self, operation: &'static str, kind: ErrorKind, message: String) -> LockError {
        LockError {
            table: self.layout.table().to_string(),
            operation,
            kind,
            message,
        }
    }

    /// The coordinator-state item keyed `key` in the lock's table, read consistently.
    async fn get(&self, key: &str) -> Result<Option<HashMap<String, AttributeValue>>, LockError> {
        let out = self
            .client
            .get_item()
            .table_name(self.layout.table())
            .key(self.layout.key_attribute(), s(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.error("GetItem", classify(&e), error_text(&e)))?;
        Ok(out.item)
    }

    /// The lock item, read consistently; `None` when there is none.
    pub async fn read(&self) -> Result<Option<Lock>, LockError> {
        let Some(item) = self.get(LEADER_KEY).await? else {
            return Ok(None);
        };
        let text = |name: &str| match item.get(name) {
            Some(AttributeValue::S(v)) => Some(v.clone()),
            Some(AttributeValue::N(v)) => Some(v.clone()),
            _ => None,
        };
        let (Some(owner), Some(version)) = (text(OWNER_NAME), text(RECORD_VERSION)) else {
            return Err(self.error(
                "GetItem",
                ErrorKind::Invalid,
                "the lock item has no ownerName or recordVersionNumber".into(),
            ));
        };
        let lease_duration = text(LEASE_DURATION)
            .and_then(|d| d.parse::<u64>().ok())
            .map(Duration::from_millis)
            .ok_or_else(|| {
                self.error(
                    "GetItem",
                    ErrorKind::Invalid,
                    "the lock item's leaseDuration is not a number of milliseconds".into(),
                )
            })?;
        Ok(Some(Lock {
            owner,
            lease_duration,
            version,
            released: item.contains_key(IS_RELEASED),
        }))
    }

    /// The migration record's `cv`, read consistently from the lock's table: `Ok(None)` when
    /// there is no record (an application no Java KCL 3.x worker has started on yet), an
    /// error naming the value when it is not one this consumer knows.
    pub async fn read_client_version(&self) -> Result<Option<ClientVersion>, LockError> {
        let item = self.get(MIGRATION_KEY).await?;
        match item.as_ref().and_then(|i| i.get(CLIENT_VERSION)) {
            None => Ok(None),
            Some(AttributeValue::S(v)) => ClientVersion::parse(v).map(Some).ok_or_else(|| {
                self.error(
                    "GetItem",
                    ErrorKind::Invalid,
                    format!("{MIGRATION_KEY}: unknown client version {v:?}"),
                )
            }),
            Some(other) => Err(self.error(
                "GetItem",
                ErrorKind::Invalid,
                format!("{MIGRATION_KEY}: the client version is not a string: {other:?}"),
            )),
        }
    }

    /// Puts the lock with `me` as owner; `Ok(Some(version))` when it went through, `Ok(None)`
    /// when its condition failed.
    pub async fn acquire(
        &self,
        me: &str,
        how: &Acquire,
        lease_duration: Duration,
    ) -> Result<Option<String>, LockError> {
        let version = uuid::Uuid::new_v4().to_string();
        let mut item: HashMap<String, AttributeValue> = HashMap::new();
        item.insert(self.layout.key_attribute().into(), s(LEADER_KEY));
        item.insert(OWNER_NAME.into(), s(me));
        item.insert(
            LEASE_DURATION.into(),
            s(&lease_duration.as_millis().to_string()),
        );
        item.insert(RECORD_VERSION.into(), s(&version));
        item.insert(ENTITY_TYPE.into(), s(LEADER_ENTITY_TYPE));
        let mut put = self
            .client
            .put_item()
            .table_name(self.layout.table())
            .set_item(Some(item))
            .expression_attribute_names("#k", self.layout.key_attribute());
        put = match how {
            Acquire::Absent => put.condition_expression("attribute_not_exists(#k)"),
            Acquire::Version(v) => put
                .condition_expression("attribute_exists(#k) AND #v = :v")
                .expression_attribute_names("#v", RECORD_VERSION)
                .expression_attribute_values(":v", s(v)),
        };
        match put.send().await {
            Ok(_) => Ok(Some(version)),
            Err(err) if classify(&err) == ErrorKind::ConditionFailed => Ok(None),
            Err(err) => Err(self.error("PutItem", classify(&err), error_text(&err))),
        }
    }

    /// Writes a new version over `version`, conditional on it and on `ownerName = me`.
    pub async fn heartbeat(
        &self,
        me: &str,
        version: &str,
        lease_duration: Duration,
    ) -> Result<Option<String>, LockError> {
        let next = uuid::Uuid::new_v4().to_string();
        let result = self
            .client
            .update_item()
            .table_name(self.layout.table())
            .key(self.layout.key_attribute(), s(LEADER_KEY))
            .update_expression("SET #d = :d, #v = :next")
            .condition_expression("attribute_exists(#k) AND #v = :v AND #o = :o")
            .expression_attribute_names("#k", self.layout.key_attribute())
            .expression_attribute_names("#d", LEASE_DURATION)
            .expression_attribute_names("#v", RECORD_VERSION)
            .expression_attribute_names("#o", OWNER_NAME)
            .expression_attribute_values(":d", s(&lease_duration.as_millis().to_string()))
            .expression_attribute_values(":next", s(&next))
            .expression_attribute_values(":v", s(version))
            .expression_attribute_values(":o", s(me))
            .send()
            .await;
        match result {
            Ok(_) => Ok(Some(next)),
            Err(err) if classify(&err) == ErrorKind::ConditionFailed => Ok(None),
            Err(err) => Err(self.error("UpdateItem", classify(&err), error_text(&err))),
        }
    }

    /// Deletes the lock, conditional on `version` and `ownerName = me` (the lock client's
    /// release with `deleteLockOnRelease`, the KCL's setting).
    pub async fn release(&self, me: &str, version: &str) -> Result<bool, LockError> {
        let result = self
            .client
            .delete_item()
            .table_name(self.layout.table())
            .key(self.layout.key_attribute(), s(LEADER_KEY))
            .condition_expression("attribute_exists(#k) AND #v = :v AND #o = :o")
            .expression_attribute_names("#k", self.layout.key_attribute())
            .expression_attribute_names("#v", RECORD_VERSION)
            .expression_attribute_names("#o", OWNER_NAME)
            .expression_attribute_values(":v", s(version))
            .expression_attribute_values(":o", s(me))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(err) if classify(&err) == ErrorKind::ConditionFailed => Ok(false),
            Err(err) => Err(self.error("DeleteItem", classify(&err), error_text(&err))),
        }
    }
}

/// How this worker takes leases now (for `/status` and the status page): `count` (count mode,
/// or leader mode while the `Migration3.0` record names a KCL 2.x version) or `follow` (leader
/// mode: only what the leader assigns), with that record's `cv` as last read (leader mode).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TakingStatus {
    pub taking: &'static str,
    pub client_version: Option<&'static str>,
}

/// Who leads, as this worker last read the lock (for `/status` and the status page).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LeaderStatus {
    pub worker_id: String,
    /// Since when this worker has seen that worker lead (or has led itself).
    pub since: String,
    /// `lease-table` (KCL 3.5) or `coordinator-state` (KCL 3.0-3.4).
    pub layout: &'static str,
}

/// The election as one worker runs it: reads the lock every tick, acquires it when it may,
/// heartbeats it while it holds it, releases it at the end.
pub struct Leadership {
    me: String,
    client: Client,
    lease_table: String,
    /// `CONSUMER_COORDINATOR_STATE_TABLE`: where a 3.0-3.4 application keeps the lock.
    coordinator_state_table: String,
    lock: Option<LockTable>,
    election: Election<tokio::time::Instant>,
    lease_duration: Duration,
    heartbeat: Duration,
    /// When the last write that went through was sent.
    last_write: Option<tokio::time::Instant>,
    leader: Option<(String, chrono::DateTime<chrono::Utc>)>,
    /// The migration record's client version as last read (`None`: no record, or not read
    /// yet), and when to read it next.
    client_version: Option<ClientVersion>,
    next_version_check: tokio::time::Instant,
}

impl Leadership {
    pub fn new(
        me: &str,
        client: Client,
        lease_table: &str,
        settings: &kinesis_common::config::WorkerMetricsSettings,
        lease_duration: Duration,
        heartbeat: Duration,
    ) -> Self {
        Self {
            me: me.to_string(),
            client,
            lease_table: lease_table.to_string(),
            coordinator_state_table: settings.coordinator_state_table.clone(),
            lock: None,
            election: Election::new(me),
            lease_duration,
            heartbeat,
            last_write: None,
            leader: None,
            client_version: None,
            next_version_check: tokio::time::Instant::now(),
        }
    }

    /// The migration record's `cv` as last read (`None`: no record, or not read yet).
    pub fn client_version(&self) -> Option<ClientVersion> {
        self.client_version
    }

    /// Whether the application's Java workers run the KCL 2.x algorithms (the migration
    /// record's [`ClientVersion::runs_2x_algorithms`], as last read): this worker then takes by
    /// lease count and stays out of the election, as they do.
    pub fn fleet_runs_2x(&self) -> bool {
        self.client_version
            .is_some_and(ClientVersion::runs_2x_algorithms)
    }

    /// Where the lock lives, once found.
    pub fn layout(&self) -> Option<&Layout> {
        self.lock.as_ref().map(LockTable::layout)
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Whether this worker leads now.
    pub fn is_leader(&self) -> bool {
        self.election.is_leader(tokio::time::Instant::now())
    }

    /// Who leads, as last read.
    pub fn status(&self) -> Option<LeaderStatus> {
        let layout = self.lock.as_ref()?.layout().name();
        self.leader.as_ref().map(|(worker_id, since)| LeaderStatus {
            worker_id: worker_id.clone(),
            since: since.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            layout,
        })
    }

    fn saw_leader(&mut self, who: &str) {
        if self.leader.as_ref().is_none_or(|(w, _)| w != who) {
            tracing::info!(leader = %who, worker_id = %self.me, layout = self.lock.as_ref().map_or("", |l| l.layout().name()), "leader seen");
            self.leader = Some((who.to_string(), chrono::Utc::now()));
        }
    }

    /// One round: read the lock, then acquire or heartbeat it when due. Errors are logged;
    /// leadership then lapses by its own clock.
    pub async fn tick(&mut self) {
        if let Err(err) = self.round().await {
            tracing::warn!(error = %err, worker_id = %self.me, "leader election round failed");
        }
    }

    /// Reads the migration record when due; logs each change of which algorithms the fleet
    /// runs. A failed or unknown reading keeps the last one.
    async fn check_client_version(&mut self, lock: &LockTable) {
        let now = tokio::time::Instant::now();
        if now < self.next_version_check {
            return;
        }
        self.next_version_check = now + CLIENT_VERSION_CHECK.min(self.lease_duration);
        match lock.read_client_version().await {
            Ok(version) => {
                let runs_2x = version.is_some_and(ClientVersion::runs_2x_algorithms);
                if runs_2x != self.fleet_runs_2x() {
                    let cv = version.map_or("none", ClientVersion::as_str);
                    if runs_2x {
                        tracing::info!(worker_id = %self.me, client_version = %cv, "the application runs the KCL 2.x algorithms (Migration3.0): taking by lease count, out of the leader election");
                    } else {
                        tracing::info!(worker_id = %self.me, client_version = %cv, "the application runs the KCL 3.x algorithms (Migration3.0): following the leader");
                    }
                }
                self.client_version = version;
            }
            Err(err) => {
                tracing::warn!(error = %err, worker_id = %self.me, "reading the migration record failed; going on as last read")
            }
        }
    }

    async fn round(&mut self) -> Result<(), LockError> {
        if self.lock.is_none() {
            let layout = LockTable::detect(
                &self.client,
                &self.lease_table,
                &self.coordinator_state_table,
            )
            .await?;
            tracing::info!(layout = layout.name(), table = %layout.table(), "leader lock layout");
            self.lock = Some(LockTable::new(self.client.clone(), layout));
        }
        let Some(lock) = self.lock.clone() else {
            return Ok(());
        };
        self.check_client_version(&lock).await;
        if self.fleet_runs_2x() {
            // No lock-based leader under the 2.x algorithms: give the lock up if held.
            self.release().await;
            self.leader = None;
            return Ok(());
        }
        let now = tokio::time::Instant::now();
        let read = lock.read().await?;
        match self.election.on_read(read, now) {
            Decision::Follow(owner) => self.saw_leader(&owner),
            Decision::Heartbeat(version) => {
                if self
                    .last_write
                    .is_some_and(|at| now.duration_since(at) < self.heartbeat)
                {
                    return Ok(());
                }
                let sent = tokio::time::Instant::now();
                match lock
                    .heartbeat(&self.me, &version, self.lease_duration)
                    .await?
                {
                    Some(next) => {
                        self.election.on_written(next, sent, self.lease_duration);
                        self.last_write = Some(sent);
                    }
                    None => {
                        self.election.on_conflict();
                        tracing::warn!(worker_id = %self.me, "leadership lost: the lock changed under its heartbeat");
                    }
                }
            }
            Decision::Acquire(how) => {
                // A lock given up or absent may be the sign that the migration record just
                // flipped to 2.x (a leader that read it released the lock): read the record
                // again before taking the lock, rather than lead until the next reading.
                self.next_version_check = now;
                self.check_client_version(&lock).await;
                if self.fleet_runs_2x() {
                    self.election.on_conflict();
                    self.leader = None;
                    return Ok(());
                }
                let sent = tokio::time::Instant::now();
                match lock.acquire(&self.me, &how, self.lease_duration).await? {
                    Some(version) => {
                        self.election.on_written(version, sent, self.lease_duration);
                        self.last_write = Some(sent);
                        let me = self.me.clone();
                        self.saw_leader(&me);
                        tracing::info!(worker_id = %self.me, layout = lock.layout().name(), "leadership acquired");
                    }
                    None => self.election.on_conflict(),
                }
            }
        }
        Ok(())
    }

    /// Gives the lock up if this worker holds it (the KCL does at shutdown), so that another
    /// worker leads at its next round rather than after the lock's duration.
    pub async fn release(&mut self) {
        let (Some(lock), Some(version)) = (self.lock.as_ref(), self.election.held_version()) else {
            return;
        };
        if !self.is_leader() {
            return;
        }
        match lock.release(&self.me, version).await {
            Ok(true) => tracing::info!(worker_id = %self.me, "leadership released"),
            Ok(false) => {}
            Err(err) => {
                tracing::warn!(error = %err, "releasing the leader lock failed; it will expire")
            }
        }
        self.election.on_released();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    fn lock(owner: &str, version: &str) -> Lock {
        Lock {
            owner: owner.into(),
            lease_duration: at(1000),
            version: version.into(),
            released: false,
        }
    }

    #[test]
    fn client_versions_read_as_the_kcl_writes_them_and_two_of_them_run_2x() {
        for v in [
            ClientVersion::UpgradeFrom2x,
            ClientVersion::V2x,
            ClientVersion::V3xWithRollback,
            ClientVersion::V3x,
        ] {
            assert_eq!(ClientVersion::parse(v.as_str()), Some(v));
        }
        assert!(ClientVersion::UpgradeFrom2x.runs_2x_algorithms());
        assert!(ClientVersion::V2x.runs_2x_algorithms());
        assert!(!ClientVersion::V3xWithRollback.runs_2x_algorithms());
        assert!(!ClientVersion::V3x.runs_2x_algorithms());
        // Transient in the KCL, never stored; and anything newer: unknown.
        assert_eq!(ClientVersion::parse("CLIENT_VERSION_INIT"), None);
        assert_eq!(ClientVersion::parse("client_version_3x"), None);
    }

    #[test]
    fn an_absent_or_released_lock_is_acquired_at_once() {
        let mut e = Election::new("me");
        assert_eq!(e.on_read(None, at(0)), Decision::Acquire(Acquire::Absent));
        let mut released = lock("other", "v1");
        released.released = true;
        assert_eq!(
            e.on_read(Some(released), at(0)),
            Decision::Acquire(Acquire::Version("v1".into()))
        );
    }

    #[test]
    fn another_workers_lock_is_taken_only_after_its_version_stood_for_its_duration() {
        let mut e = Election::new("me");
        assert_eq!(
            e.on_read(Some(lock("other", "v1")), at(0)),
            Decision::Follow("other".into())
        );
        assert_eq!(
            e.on_read(Some(lock("other", "v1")), at(999)),
            Decision::Follow("other".into())
        );
        // A heartbeat: the count starts again.
        assert_eq!(
            e.on_read(Some(lock("other", "v2")), at(1500)),
            Decision::Follow("other".into())
        );
        assert_eq!(
            e.on_read(Some(lock("other", "v2")), at(2400)),
            Decision::Follow("other".into())
        );
        assert_eq!(
            e.on_read(Some(lock("other", "v2")), at(2500)),
            Decision::Acquire(Acquire::Version("v2".into()))
        );
    }

    #[test]
    fn the_holder_heartbeats_and_leads_until_its_duration_after_the_last_write_sent() {
        let mut e = Election::new("me");
        e.on_read(None, at(0));
        e.on_written("v1".into(), at(0), at(1000));
        assert!(e.is_leader(at(999)));
        assert!(!e.is_leader(at(1000)));
        assert_eq!(
            e.on_read(Some(lock("me", "v1")), at(300)),
            Decision::Heartbeat("v1".into())
        );
        e.on_written("v2".into(), at(300), at(1000));
        assert!(e.is_leader(at(1200)));
        // Taken over (our heartbeats failed long enough): we follow at once.
        assert_eq!(
            e.on_read(Some(lock("other", "v3")), at(1400)),
            Decision::Follow("other".into())
        );
        assert!(!e.is_leader(at(1400)));
    }

    #[test]
    fn a_lock_in_our_name_that_we_did_not_write_is_waited_out() {
        // A previous run of this worker, or a second process with its id.
        let mut e = Election::new("me");
        assert_eq!(
            e.on_read(Some(lock("me", "old")), at(0)),
            Decision::Follow("me".into())
        );
        assert!(!e.is_leader(at(0)));
        assert_eq!(
            e.on_read(Some(lock("me", "old")), at(1000)),
            Decision::Acquire(Acquire::Version("old".into()))
        );
    }

    #[test]
    fn a_lost_race_leaves_no_leadership() {
        let mut e = Election::new("me");
        e.on_read(None, at(0));
        e.on_conflict();
        assert!(!e.is_leader(at(1)));
    }
}
