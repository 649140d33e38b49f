//! The lease table's DynamoDB calls ([`LeaseTable`]); the item format is [`super::item`],
//! re-exported here.
//!
//! Every change of an existing item is an `UpdateItem` conditional on `leaseCounter` and
//! `leaseOwner` as last seen, sets the counter one higher, and returns the new item: the writes
//! are the lease state machine's ([`super::machine::Op`] says what each does). A write that
//! fails its condition means somebody else wrote in between ([`WriteError::Conflict`]).
//! Attributes this module does not know (a newer KCL's) are left alone by these updates.
//! [`LeaseTable::list`] leaves out the KCL 3.5's other entities, so they are neither counted
//! as leases when balancing nor taken. [`LeaseTable::check_stream`] uses `kinesisStreamName`
//! to refuse, at start, a table left by another stream, whose checkpoints would otherwise be
//! applied to this stream's shards (shard ids repeat across streams). Leases without it
//! (written by the Java KCL, or by an older version of this consumer) are accepted.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement,
    KeyType, Projection, ProjectionType, ReturnValue, ScalarAttributeType, TableStatus,
};
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, Utc};
use kinesis_common::aws::{classify, ErrorKind};
use kinesis_common::kinesis::error_text;
use tokio_util::sync::CancellationToken;

pub use super::item::*;
use super::item::{get_s, n, s};

/// Why a conditional write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The condition failed (`ConditionalCheckFailedException`): the item changed since it was
    /// read, or it is gone. Usually another worker wrote, so the lease is lost; the holder
    /// checks, since its own earlier write may have gone through unseen.
    #[error("lease {0} was changed by another writer")]
    Conflict(String),
    /// The call failed: `kind` tells whether trying again may help.
    #[error("lease {key}: {message}")]
    Failed {
        key: String,
        kind: ErrorKind,
        message: String,
    },
}

/// A lease-table call (other than a conditional write) that failed.
#[derive(Debug, thiserror::Error)]
#[error("{operation} on lease table {table:?}: {message}")]
pub struct TableError {
    pub operation: &'static str,
    pub table: String,
    pub kind: ErrorKind,
    pub message: String,
}

/// The lease table holds leases of another stream (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "lease table {table:?} holds the leases of stream {found:?}, not of stream {expected:?}: \
     give each stream its own table (CONSUMER_APPLICATION_NAME), or delete this one to start over"
)]
pub struct OtherStreamError {
    /// The lease table's name.
    pub table: String,
    /// The stream this worker reads.
    pub expected: String,
    /// The stream named by a lease in the table.
    pub found: String,
}

/// The DynamoDB table holding one application's leases.
#[derive(Debug, Clone)]
pub struct LeaseTable {
    client: Client,
    name: String,
    /// Written as [`STREAM_NAME`] into every lease this table creates.
    stream: Option<String>,
}

impl LeaseTable {
    pub fn new(client: Client, name: impl Into<String>) -> Self {
        Self {
            client,
            name: name.into(),
            stream: None,
        }
    }

    /// Marks every lease created from now on as belonging to `stream`, and lets
    /// [`LeaseTable::check_stream`] compare the table against it.
    pub fn for_stream(mut self, stream: impl Into<String>) -> Self {
        self.stream = Some(stream.into());
        self
    }

    /// The DynamoDB client (the leader lock lives in this table, or next to it).
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Creates the table (on-demand capacity, hash key `leaseKey`) unless it exists, and waits
    /// until it is ACTIVE. Several workers may race to create it: all of them then wait.
    pub async fn create_if_missing(
        &self,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut created = false;
        loop {
            let described = tokio::select! {
                _ = cancel.cancelled() => anyhow::bail!("stop requested while waiting for lease table {:?}", self.name),
                described = self.client.describe_table().table_name(&self.name).send() => described,
            };
            let last = match described {
                Ok(out) => {
                    let status = out.table().and_then(|t| t.table_status());
                    if matches!(status, Some(TableStatus::Active) | None) {
                        return Ok(());
                    }
                    format!("status {status:?}")
                }
                Err(err) => match classify(&err) {
                    ErrorKind::NotFound if !created => {
                        let attempt = tokio::select! {
                            _ = cancel.cancelled() => anyhow::bail!("stop requested while creating lease table {:?}", self.name),
                            result = self.create() => result?,
                        };
                        match attempt {
                            // Asked for (or another worker was first): wait for it below.
                            Ok(()) => {
                                created = true;
                                continue;
                            }
                            // A slow or restarting DynamoDB (LocalStack on its first start):
                            // try again after the pause, within the same deadline.
                            Err(transient) => transient,
                        }
                    }
                    ErrorKind::NotFound => "not found yet".to_string(),
                    kind if kind.is_retryable() => error_text(&err),
                    _ => anyhow::bail!(
                        "cannot describe lease table {:?}: {}",
                        self.name,
                        error_text(&err)
                    ),
                },
            };
            if started.elapsed() >= timeout {
                anyhow::bail!(
                    "lease table {:?} did not become ACTIVE within {timeout:?} (last seen: {last})",
                    self.name
                );
            }
            tokio::select! {
                _ = cancel.cancelled() => anyhow::bail!("stop requested while waiting for lease table {:?}", self.name),
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    }

    /// Asks for the table. `Ok(Err(text))` when the request failed in a way that may pass (a
    /// timeout, throttling, a 5xx): the caller tries again.
    async fn create(&self) -> anyhow::Result<Result<(), String>> {
        let result = self
            .client
            .create_table()
            .table_name(&self.name)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(LEASE_KEY)
                    .attribute_type(ScalarAttributeType::S)
                    .build()?,
            )
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(LEASE_OWNER)
                    .attribute_type(ScalarAttributeType::S)
                    .build()?,
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name(LEASE_KEY)
                    .key_type(KeyType::Hash)
                    .build()?,
            )
            // The Java KCL 3.x's index: which leases a worker owns, read by a Query.
            .global_secondary_indexes(
                GlobalSecondaryIndex::builder()
                    .index_name(OWNER_INDEX)
                    .key_schema(
                        KeySchemaElement::builder()
                            .attribute_name(LEASE_OWNER)
                            .key_type(KeyType::Hash)
                            .build()?,
                    )
                    .projection(
                        Projection::builder()
                            .projection_type(ProjectionType::KeysOnly)
                            .build(),
                    )
                    .build()?,
            )
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await;
        match result {
            Ok(_) => {
                tracing::info!(table = %self.name, "lease table created");
                Ok(Ok(()))
            }
            // Another worker created it first.
            Err(err) if classify(&err) == ErrorKind::InUse => Ok(Ok(())),
            Err(err) if classify(&err).is_retryable() => {
                Ok(Err(format!("CreateTable: {}", error_text(&err))))
            }
            Err(err) => anyhow::bail!(
                "cannot create lease table {:?}: {}",
                self.name,
                error_text(&err)
            ),
        }
    }

    /// Every lease, read consistently. Other KCL entities (see the module doc) are left out;
    /// items that are not readable leases are skipped with a warning rather than stopping the
    /// worker.
    pub async fn list(&self) -> Result<Vec<Lease>, TableError> {
        let mut leases = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let out = self
                .client
                .scan()
                .table_name(&self.name)
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| self.error("Scan", classify(&e), error_text(&e)))?;
            for item in out.items().iter().filter(|item| is_lease_item(item)) {
                match Lease::from_item(item) {
                    Ok(lease) => leases.push(lease),
                    Err(err) => {
                        tracing::warn!(table = %self.name, error = %err, "unreadable lease item skipped")
                    }
                }
            }
            match out.last_evaluated_key() {
                Some(key) if !key.is_empty() => start = Some(key.clone()),
                _ => return Ok(leases),
            }
        }
    }

    /// One lease, read consistently; `None` when there is no such item.
    pub async fn get(&self, key: &str) -> Result<Option<Lease>, TableError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.name)
            .key(LEASE_KEY, s(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| {
                self.error(
                    "GetItem",
                    classify(&e),
                    format!("reading lease {key}: {}", error_text(&e)),
                )
            })?;
        out.item()
            .map(Lease::from_item)
            .transpose()
            .map_err(|e| self.error("GetItem", ErrorKind::Invalid, e.to_string()))
    }

    /// The keys of the leases `worker_id` owns, read from [`OWNER_INDEX`] (eventually
    /// consistent, keys only). `Ok(None)` when the table has no such index (created by an older
    /// version of this consumer, or by a Java KCL 2.x): then only scans tell.
    pub async fn owned_keys(&self, worker_id: &str) -> Result<Option<Vec<String>>, TableError> {
        let mut keys = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.name)
                .index_name(OWNER_INDEX)
                .key_condition_expression("#owner = :owner")
                .expression_attribute_names("#owner", LEASE_OWNER)
                .expression_attribute_values(":owner", s(worker_id))
                .set_exclusive_start_key(start.take())
                .send()
                .await;
            let out = match out {
                Ok(out) => out,
                Err(err) => {
                    let kind = classify(&err);
                    let text = error_text(&err);
                    // "The table does not have the specified index" (DynamoDB, DynamoDB Local,
                    // dynalite all answer a ValidationException).
                    if matches!(kind, ErrorKind::Invalid | ErrorKind::NotFound)
                        && text.to_ascii_lowercase().contains("index")
                    {
                        return Ok(None);
                    }
                    return Err(self.error("Query", kind, text));
                }
            };
            keys.extend(
                out.items()
                    .iter()
                    .filter_map(|item| get_s(item, LEASE_KEY).ok().flatten()),
            );
            match out.last_evaluated_key() {
                Some(key) if !key.is_empty() => start = Some(key.clone()),
                _ => return Ok(Some(keys)),
            }
        }
    }

    /// Deletes a lease, conditional on its counter as last seen (nobody wrote it since).
    /// Returns whether it was deleted.
    pub async fn delete_lease(&self, lease: &Lease) -> Result<bool, TableError> {
        let result = self
            .client
            .delete_item()
            .table_name(&self.name)
            .key(LEASE_KEY, s(&lease.key))
            .condition_expression("#counter = :counter")
            .expression_attribute_names("#counter", LEASE_COUNTER)
            .expression_attribute_values(":counter", n(lease.counter))
            .send()
            .await;
        self.conditional(result, "DeleteItem", || {
            format!("deleting lease {}", lease.key)
        })
    }

    /// Fails with [`OtherStreamError`] when a lease in the table was created for another stream
    /// than the one given to [`LeaseTable::for_stream`]. Leases that name no stream pass.
    pub async fn check_stream(&self) -> anyhow::Result<()> {
        let Some(expected) = &self.stream else {
            return Ok(());
        };
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let out = self
                .client
                .scan()
                .table_name(&self.name)
                .consistent_read(true)
                .projection_expression("#stream")
                .expression_attribute_names("#stream", STREAM_NAME)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| {
                    anyhow::anyhow!("scanning lease table {:?}: {}", self.name, error_text(&e))
                })?;
            let other = out
                .items()
                .iter()
                .filter_map(|item| get_s(item, STREAM_NAME).ok().flatten())
                .find(|found| found != expected);
            if let Some(found) = other {
                return Err(OtherStreamError {
                    table: self.name.clone(),
                    expected: expected.clone(),
                    found,
                }
                .into());
            }
            match out.last_evaluated_key() {
                Some(key) if !key.is_empty() => start = Some(key.clone()),
                _ => return Ok(()),
            }
        }
    }

    /// Writes a new lease unless one exists for the shard. Returns whether it was written.
    pub async fn create_lease(&self, lease: &Lease) -> Result<bool, TableError> {
        let mut item = lease.to_item();
        if let Some(stream) = &self.stream {
            item.insert(STREAM_NAME.into(), s(stream));
        }
        let result = self
            .client
            .put_item()
            .table_name(&self.name)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(#key)")
            .expression_attribute_names("#key", LEASE_KEY)
            .send()
            .await;
        self.conditional(result, "PutItem", || {
            format!("creating lease {}", lease.key)
        })
    }

    /// A conditional write's answer: whether it was written (`false`: the condition failed).
    fn conditional<T, E>(
        &self,
        result: Result<
            T,
            aws_sdk_dynamodb::error::SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>,
        >,
        operation: &'static str,
        what: impl FnOnce() -> String,
    ) -> Result<bool, TableError>
    where
        E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + 'static,
    {
        match result {
            Ok(_) => Ok(true),
            Err(err) => match classify(&err) {
                ErrorKind::ConditionFailed => Ok(false),
                kind => {
                    Err(self.error(operation, kind, format!("{}: {}", what(), error_text(&err))))
                }
            },
        }
    }

    fn error(&self, operation: &'static str, kind: ErrorKind, message: String) -> TableError {
        TableError {
            operation,
            table: self.name.clone(),
            kind,
            message,
        }
    }

    /// Bumps the counter: "still alive".
    pub async fn renew(&self, lease: &Lease) -> Result<Lease, WriteError> {
        Update::new(lease).send(self).await
    }

    /// [`LeaseTable::renew`], writing the lease's recent read rate too (`throughputKBps`, as
    /// the KCL 3.x renewer does; same condition).
    pub async fn renew_with_throughput(
        &self,
        lease: &Lease,
        kbps: f64,
    ) -> Result<Lease, WriteError> {
        let mut update = Update::new(lease);
        if kbps.is_finite() {
            update.set(THROUGHPUT_KBPS, AttributeValue::N(kbps.to_string()));
        }
        update.send(self).await
    }

    /// [`Op::Take`](super::machine::Op::Take): makes `worker_id` the owner of an unowned or
    /// expired lease, or of one handed to it. A `checkpointOwner` naming another worker stays
    /// (that worker may still be finishing its batch: the taker waits for it); one naming
    /// `worker_id` itself goes (its own earlier task is over).
    ///
    /// `expired` ([`Op::TakeExpired`](super::machine::Op::TakeExpired)): the lease's counter has
    /// not moved for the failover time; `checkpointOwner` is removed whoever it names.
    pub async fn take(
        &self,
        lease: &Lease,
        worker_id: &str,
        expired: bool,
    ) -> Result<Lease, WriteError> {
        let mut update = Update::new(lease);
        update.set_owner(worker_id);
        if expired || lease.checkpoint_owner.as_deref() == Some(worker_id) {
            update.remove(CHECKPOINT_OWNER);
        }
        if lease.handed_over_by.is_some() {
            update.remove(HANDED_OVER_BY);
        }
        update.send(self).await
    }

    /// Steals a live worker's lease with a graceful handoff (the Java KCL 3.x protocol):
    /// `worker_id` becomes the owner and `checkpointOwner` names the old owner, who may still
    /// checkpoint until it clears it. Conditional on the counter and owner as seen, and on no
    /// handoff being in progress already.
    pub async fn take_with_handoff(
        &self,
        lease: &Lease,
        worker_id: &str,
    ) -> Result<Lease, WriteError> {
        let Some(old) = lease.owner.as_deref() else {
            return self.take(lease, worker_id, false).await;
        };
        let mut update = Update::new(lease);
        update.set_owner(worker_id);
        update.set(CHECKPOINT_OWNER, s(old));
        update.require_absent(CHECKPOINT_OWNER);
        update.send(self).await
    }

    /// Hands a lease this worker holds, and no longer processes, to `to` (a stopping worker's
    /// leases to a live worker, which finds them by [`LeaseTable::owned_keys`]).
    pub async fn hand_over(&self, lease: &Lease, to: &str) -> Result<Lease, WriteError> {
        // A `checkpointOwner` stays: the recipient waits for that handoff as this worker did.
        // `handedOverBy` tells the recipient it may take the lease at once: a lease merely
        // showing its id might be held by a second live process with that id.
        let mut update = Update::new(lease);
        update.set_owner(to);
        if let Some(by) = &lease.owner {
            update.set(HANDED_OVER_BY, s(by));
        }
        update.send(self).await
    }

    /// The leader assigns an expired or unowned lease to `to` (the KCL 3.x `assignLease`):
    /// `leaseOwner = to`, `checkpointOwner` removed, the counter one up, `handedOverBy = by`
    /// (the leader), so that a worker of ours takes it up at once. Conditional on the counter
    /// and owner as scanned: the leader judged the lease expired from that counter (stricter
    /// than the KCL, whose condition is the owner and `checkpointOwner` only).
    pub async fn assign(&self, lease: &Lease, to: &str, by: &str) -> Result<Lease, WriteError> {
        let mut update = Update::new(lease);
        update.set_owner(to);
        update.remove(CHECKPOINT_OWNER);
        update.set(HANDED_OVER_BY, s(by));
        update.send(self).await
    }

    /// The leader moves a live worker's lease to `to` with a graceful handoff (the KCL 3.x
    /// `initiateGracefulLeaseHandoff`): `leaseOwner = to`, `checkpointOwner` = the old owner,
    /// `handedOverBy = by`; the counter is left alone, so the old owner's renewals are not cut
    /// short before it sees the handoff. Conditional on the owner as scanned and on no handoff
    /// in progress.
    pub async fn assign_with_handoff(
        &self,
        lease: &Lease,
        to: &str,
        by: &str,
    ) -> Result<Lease, WriteError> {
        let Some(old) = lease.owner.as_deref() else {
            return self.assign(lease, to, by).await;
        };
        let mut update = Update::owner_only(lease, old);
        update.set_owner(to);
        update.set(CHECKPOINT_OWNER, s(old));
        update.set(HANDED_OVER_BY, s(by));
        update.require_absent(CHECKPOINT_OWNER);
        update.send(self).await
    }

    /// Ends a handoff from the new owner's side (its timeout ran out): removes
    /// `checkpointOwner`, so the old owner can no longer checkpoint.
    pub async fn clear_handoff(&self, lease: &Lease) -> Result<Lease, WriteError> {
        let mut update = Update::new(lease);
        update.remove(CHECKPOINT_OWNER);
        update.send(self).await
    }

    /// A checkpoint by the old owner during a handoff: conditional on `checkpointOwner` naming
    /// it, whatever the counter and owner (the new owner renews meanwhile). The counter is left
    /// alone, so the new owner's renewals do not trip over it.
    pub async fn checkpoint_in_handoff(
        &self,
        lease: &Lease,
        checkpoint: &Checkpoint,
        child_shard_ids: &[String],
        old_owner: &str,
    ) -> Result<Lease, WriteError> {
        let mut update = Update::handoff(lease, old_owner);
        update.set_checkpoint(checkpoint, child_shard_ids);
        update.send(self).await
    }

    /// Pins `LATEST` during a handoff (see [`LeaseTable::checkpoint_in_handoff`]).
    pub async fn pin_latest_in_handoff(
        &self,
        lease: &Lease,
        at: DateTime<Utc>,
        old_owner: &str,
    ) -> Result<Lease, WriteError> {
        let mut update = Update::handoff(lease, old_owner);
        update.set(LATEST_START, n(at.timestamp_millis()));
        update.send(self).await
    }

    /// The old owner is done: removes `checkpointOwner` (conditional on it naming `old_owner`),
    /// so the new owner starts.
    pub async fn finish_handoff(
        &self,
        lease: &Lease,
        old_owner: &str,
    ) -> Result<Lease, WriteError> {
        let mut update = Update::handoff(lease, old_owner);
        update.remove(CHECKPOINT_OWNER);
        update.send(self).await
    }

    /// Records progress; a `ShardEnd` checkpoint also records the children.
    pub async fn checkpoint(
        &self,
        lease: &Lease,
        checkpoint: &Checkpoint,
        child_shard_ids: &[String],
    ) -> Result<Lease, WriteError> {
        let mut update = Update::new(lease);
        update.set_checkpoint(checkpoint, child_shard_ids);
        update.send(self).await
    }

    /// The first phase of a two-phase checkpoint: `pendingCheckpoint` and its sub-sequence
    /// number, as the Java KCL's `prepareCheckpoint` writes them.
    pub async fn prepare_checkpoint(
        &self,
        lease: &Lease,
        position: &ExtendedSequenceNumber,
    ) -> Result<Lease, WriteError> {
        let mut update = Update::new(lease);
        update.set(PENDING_CHECKPOINT, s(&position.sequence_number));
        update.set(
            PENDING_CHECKPOINT_SUB_SEQUENCE,
            n(position.sub_sequence_number),
        );
        update.send(self).await
    }

    /// A prepared checkpoint by the old owner during a handoff (see
    /// [`LeaseTable::checkpoint_in_handoff`]).
    pub async fn prepare_checkpoint_in_handoff(
        &self,
        lease: &Lease,
        position: &ExtendedSequenceNumber,
        old_owner: &str,
    ) -> Result<Lease, WriteError> {
        let mut update = Update::handoff(lease, old_owner);
        update.set(PENDING_CHECKPOINT, s(&position.sequence_number));
        update.set(
            PENDING_CHECKPOINT_SUB_SEQUENCE,
            n(position.sub_sequence_number),
        );
        update.send(self).await
    }

    /// Records where a `LATEST` lease was first read (see [`Lease::latest_start`]).
    pub async fn pin_latest(&self, lease: &Lease, at: DateTime<Utc>) -> Result<Lease, WriteError> {
        let mut update = Update::new(lease);
        update.set(LATEST_START, n(at.timestamp_millis()));
        update.send(self).await
    }

    /// Gives the lease up: removes the owner so that any worker may take it at once.
    pub async fn release(&self, lease: &Lease) -> Result<Lease, WriteError> {
        let mut update = Update::new(lease);
        update.remove(LEASE_OWNER);
        update.send(self).await
    }
}

/// A conditional `UpdateItem` on one lease: the condition is the counter and owner as last
/// seen, the counter always goes one up.
struct Update<'a> {
    lease: &'a Lease,
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
    sets: Vec<String>,
    removes: Vec<String>,
    /// `Some(old owner)`: a handoff write, conditional on `checkpointOwner` only.
    handoff: Option<String>,
    /// Extra conditions: attributes that must be absent.
    absent: Vec<String>,
    /// `Some(owner)`: conditional on `leaseOwner = owner` only, no counter bump (the leader's
    /// graceful handoff).
    owner_only: Option<String>,
}

impl<'a> Update<'a> {
    /// No attribute written yet, and no condition beyond the lease's own.
    fn blank(lease: &'a Lease) -> Self {
        Self {
            lease,
            names: HashMap::new(),
            values: HashMap::new(),
            sets: Vec::new(),
            removes: Vec::new(),
            handoff: None,
            absent: Vec::new(),
            owner_only: None,
        }
    }

    fn new(lease: &'a Lease) -> Self {
        let mut update = Self::blank(lease);
        update.set(LEASE_COUNTER, n(lease.counter.saturating_add(1)));
        update
    }

    /// A write by the old owner during a handoff: no counter bump, conditional on
    /// `checkpointOwner = old_owner`.
    fn handoff(lease: &'a Lease, old_owner: &str) -> Self {
        Self {
            handoff: Some(old_owner.to_string()),
            ..Self::blank(lease)
        }
    }

    /// A write by the leader on a live worker's lease: no counter bump, conditional on
    /// `leaseOwner = owner`.
    fn owner_only(lease: &'a Lease, owner: &str) -> Self {
        Self {
            owner_only: Some(owner.to_string()),
            ..Self::blank(lease)
        }
    }

    fn require_absent(&mut self, attribute: &str) {
        let name = self.name(attribute);
        self.absent.push(name);
    }

    fn name(&mut self, attribute: &str) -> String {
        let alias = format!("#a{}", self.names.len());
        self.names.insert(alias.clone(), attribute.to_string());
        alias
    }

    fn set(&mut self, attribute: &str, value: AttributeValue) {
        let name = self.name(attribute);
        let placeholder = format!(":v{}", self.values.len());
        self.values.insert(placeholder.clone(), value);
        self.sets.push(format!("{name} = {placeholder}"));
    }

    /// Makes `to` the owner, counting an owner switch when the lease comes from another owner.
    fn set_owner(&mut self, to: &str) {
        self.set(LEASE_OWNER, s(to));
        if self.lease.owner.as_deref().is_some_and(|o| o != to) {
            self.set(
                OWNER_SWITCHES,
                n(self.lease.owner_switches_since_checkpoint.saturating_add(1)),
            );
        }
    }

    /// What every checkpoint writes: the position, no owner switches since, the children (for
    /// `SHARD_END`), and no prepared checkpoint or pinned `LATEST` any more.
    fn set_checkpoint(&mut self, checkpoint: &Checkpoint, child_shard_ids: &[String]) {
        self.set(CHECKPOINT, s(checkpoint.value()));
        self.set(CHECKPOINT_SUB_SEQUENCE, n(checkpoint.sub_sequence_number()));
        self.set(OWNER_SWITCHES, n(0));
        if !child_shard_ids.is_empty() {
            let mut children = child_shard_ids.to_vec();
            children.sort();
            children.dedup();
            self.set(CHILD_SHARD_IDS, AttributeValue::Ss(children));
        }
        self.remove(PENDING_CHECKPOINT);
        self.remove(PENDING_CHECKPOINT_SUB_SEQUENCE);
        self.remove(PENDING_CHECKPOINT_STATE);
        self.remove(LATEST_START);
    }

    fn remove(&mut self, attribute: &str) {
        let name = self.name(attribute);
        self.removes.push(name);
    }

    async fn send(mut self, table: &LeaseTable) -> Result<Lease, WriteError> {
        let mut condition = match (self.handoff.take(), self.owner_only.take()) {
            (None, Some(owner)) => {
                let name = self.name(LEASE_OWNER);
                self.values.insert(":expected_owner".into(), s(&owner));
                format!("{name} = :expected_owner")
            }
            (Some(old), _) => {
                let checkpoint_owner = self.name(CHECKPOINT_OWNER);
                self.values
                    .insert(":expected_checkpoint_owner".into(), s(&old));
                format!("{checkpoint_owner} = :expected_checkpoint_owner")
            }
            (None, None) => {
                let counter = self.name(LEASE_COUNTER);
                let owner = self.name(LEASE_OWNER);
                let mut condition = format!("{counter} = :expected_counter");
                self.values
                    .insert(":expected_counter".into(), n(self.lease.counter));
                match &self.lease.owner {
                    Some(o) => {
                        condition.push_str(&format!(" AND {owner} = :expected_owner"));
                        self.values.insert(":expected_owner".into(), s(o));
                    }
                    None => condition.push_str(&format!(" AND attribute_not_exists({owner})")),
                }
                condition
            }
        };
        for name in &self.absent {
            condition.push_str(&format!(" AND attribute_not_exists({name})"));
        }
        let mut parts = Vec::new();
        if !self.sets.is_empty() {
            parts.push(format!("SET {}", self.sets.join(", ")));
        }
        if !self.removes.is_empty() {
            parts.push(format!("REMOVE {}", self.removes.join(", ")));
        }
        let expression = parts.join(" ");
        let key = self.lease.key.clone();
        let result = table
            .client
            .update_item()
            .table_name(&table.name)
            .key(LEASE_KEY, s(&key))
            .update_expression(expression)
            .condition_expression(condition)
            .set_expression_attribute_names(Some(self.names))
            .set_expression_attribute_values(Some(self.values))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match result {
            Ok(out) => match out.attributes() {
                Some(item) => Lease::from_item(item).map_err(|e| WriteError::Failed {
                    key,
                    kind: ErrorKind::Invalid,
                    message: e.to_string(),
                }),
                None => Err(WriteError::Failed {
                    key,
                    kind: ErrorKind::Other,
                    message: "UpdateItem returned no attributes".into(),
                }),
            },
            Err(err) => match classify(&err) {
                ErrorKind::ConditionFailed => Err(WriteError::Conflict(key)),
                kind => Err(WriteError::Failed {
                    key,
                    kind,
                    message: error_text(&err),
                }),
            },
        }
    }
}
