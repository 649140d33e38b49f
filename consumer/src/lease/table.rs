//! The lease table: one DynamoDB item per shard, in the Java KCL 2.x format, so a table written
//! by a Java KCL application is read here and the other way round.
//!
//! | attribute | type | meaning |
//! |---|---|---|
//! | `leaseKey` | S | the shard id (hash key) |
//! | `leaseOwner` | S | the worker holding the lease; absent when nobody does |
//! | `leaseCounter` | N | bumped by every write; a counter that stops moving means a dead owner |
//! | `checkpoint` | S | a sequence number, or `TRIM_HORIZON` / `LATEST` / `AT_TIMESTAMP` / `SHARD_END` |
//! | `checkpointSubSequenceNumber` | N | position inside a KPL-aggregated record |
//! | `ownerSwitchesSinceCheckpoint` | N | how often the lease changed hands without progress |
//! | `parentShardId` | SS | parents that must reach `SHARD_END` first (absent when none) |
//! | `childShardIds` | SS | written with `SHARD_END` |
//! | `pendingCheckpoint`, `pendingCheckpointSubSequenceNumber` | S, N | the KCL's two-phase checkpoint; read, cleared by a checkpoint |
//! | `startingHashKey` / `endingHashKey` | S | the shard's hash key range |
//! | `latestStartTimestamp` | N | this project's: while the checkpoint is `LATEST`, the time (ms since the epoch) the application first read the shard; removed by a checkpoint |
//!
//! The Java KCL 3.x adds `entityType` (`LEASE` on leases), `throughputKBps`, `checkpointOwner`
//! (a graceful handoff in progress) and a `leaseOwner` index. Since 3.5 it also keeps other
//! entities in the lease table under their own `leaseKey`: its leader lock (`Leader`), worker
//! metrics (the worker id) and migration state (`Migration3.0`), each with an `entityType`
//! other than `LEASE`. [`LeaseTable::list`] leaves those out, so they are neither counted as
//! leases when balancing nor taken. Taking a lease removes `checkpointOwner`, as the KCL's own
//! take does: the handoff it marked is over.
//!
//! Every change of an existing item is an `UpdateItem` conditional on `leaseCounter` and
//! `leaseOwner` as last seen, sets the counter one higher, and returns the new item. A write that
//! fails its condition means somebody else wrote in between ([`WriteError::Conflict`]).
//! Attributes this module does not know (a newer KCL's) are left alone by these updates.
//!
//! One attribute is this consumer's own, not the KCL's: `kinesisStreamName` (S), the stream a
//! lease was created for. The KCL ignores attributes it does not know, so a Java application
//! still reads the table; [`LeaseTable::check_stream`] uses it to refuse, at start, a table left
//! by another stream, whose checkpoints would otherwise be applied to this stream's shards
//! (shard ids repeat across streams). Leases without it (written by the Java KCL, or by an
//! older version of this consumer) are accepted.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement,
    KeyType, Projection, ProjectionType, ReturnValue, ScalarAttributeType, TableStatus,
};
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, Utc};
use common::aws::{classify, ErrorKind};
use common::kinesis::error_text;
use tokio_util::sync::CancellationToken;

pub const LEASE_KEY: &str = "leaseKey";
pub const LEASE_OWNER: &str = "leaseOwner";
pub const LEASE_COUNTER: &str = "leaseCounter";
pub const CHECKPOINT: &str = "checkpoint";
pub const CHECKPOINT_SUB_SEQUENCE: &str = "checkpointSubSequenceNumber";
pub const OWNER_SWITCHES: &str = "ownerSwitchesSinceCheckpoint";
pub const PARENT_SHARD_IDS: &str = "parentShardId";
pub const CHILD_SHARD_IDS: &str = "childShardIds";
pub const PENDING_CHECKPOINT: &str = "pendingCheckpoint";
pub const PENDING_CHECKPOINT_SUB_SEQUENCE: &str = "pendingCheckpointSubSequenceNumber";
pub const PENDING_CHECKPOINT_STATE: &str = "pendingCheckpointState";
pub const STARTING_HASH_KEY: &str = "startingHashKey";
pub const ENDING_HASH_KEY: &str = "endingHashKey";
/// Not a KCL attribute: see the module documentation.
pub const STREAM_NAME: &str = "kinesisStreamName";
/// Not a KCL attribute: where `LATEST` was first read, so a later holder starts there too (a
/// Java KCL ignores it and reads from `LATEST` as it always does).
pub const LATEST_START: &str = "latestStartTimestamp";
pub const ENTITY_TYPE: &str = "entityType";
pub const CHECKPOINT_OWNER: &str = "checkpointOwner";
/// This project's own: the stopping worker that handed the lease to `leaseOwner`, which has not
/// taken it up yet (see [`super::machine::take_rule`]).
pub const HANDED_OVER_BY: &str = "handedOverBy";
/// The Java KCL 3.x's global secondary index: hash key `leaseOwner`, keys only.
pub const OWNER_INDEX: &str = "LeaseOwnerToLeaseKeyIndex";
/// The `entityType` of a lease; an item without `entityType` is a lease too (KCL 2.x, this
/// consumer).
pub const LEASE_ENTITY_TYPE: &str = "LEASE";

/// Whether an item of the lease table is a lease rather than another entity the KCL 3.5 keeps
/// there. Any `entityType` other than `LEASE` counts as another entity: a newer KCL's new
/// entity is far likelier than a lease under another name.
pub fn is_lease_item(item: &HashMap<String, AttributeValue>) -> bool {
    match item.get(ENTITY_TYPE) {
        Some(AttributeValue::S(kind)) => kind == LEASE_ENTITY_TYPE,
        _ => true,
    }
}

/// A position in a shard: a Kinesis sequence number and, for a KPL-aggregated record, the index
/// of the user record inside it (0 for an ordinary record).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ExtendedSequenceNumber {
    pub sequence_number: String,
    pub sub_sequence_number: i64,
}

impl ExtendedSequenceNumber {
    pub fn new(sequence_number: impl Into<String>, sub_sequence_number: i64) -> Self {
        Self {
            sequence_number: sequence_number.into(),
            sub_sequence_number,
        }
    }
}

/// Sequence numbers are decimal integers of up to 128 bits, compared by value.
pub fn compare_sequence_numbers(a: &str, b: &str) -> Ordering {
    let a = a.trim_start_matches('0');
    let b = b.trim_start_matches('0');
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// A sequence number as Kinesis writes them: decimal digits only.
pub fn is_sequence_number(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_digit())
}

impl Ord for ExtendedSequenceNumber {
    fn cmp(&self, other: &Self) -> Ordering {
        compare_sequence_numbers(&self.sequence_number, &other.sequence_number)
            .then(self.sub_sequence_number.cmp(&other.sub_sequence_number))
    }
}

impl PartialOrd for ExtendedSequenceNumber {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// What the `checkpoint` attribute says: a sentinel or how far the shard was processed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checkpoint {
    TrimHorizon,
    Latest,
    AtTimestamp,
    /// Every record of the shard was processed; its children may start.
    ShardEnd,
    /// Records up to and including this position were processed.
    At(ExtendedSequenceNumber),
}

impl Checkpoint {
    pub const TRIM_HORIZON: &'static str = "TRIM_HORIZON";
    pub const LATEST: &'static str = "LATEST";
    pub const AT_TIMESTAMP: &'static str = "AT_TIMESTAMP";
    pub const SHARD_END: &'static str = "SHARD_END";

    /// Reads the `checkpoint` / `checkpointSubSequenceNumber` pair.
    pub fn parse(value: &str, sub_sequence_number: i64) -> Option<Self> {
        Some(match value {
            Self::TRIM_HORIZON => Checkpoint::TrimHorizon,
            Self::LATEST => Checkpoint::Latest,
            Self::AT_TIMESTAMP => Checkpoint::AtTimestamp,
            Self::SHARD_END => Checkpoint::ShardEnd,
            seq if is_sequence_number(seq) => {
                Checkpoint::At(ExtendedSequenceNumber::new(seq, sub_sequence_number))
            }
            _ => return None,
        })
    }

    /// The `checkpoint` attribute's value.
    pub fn value(&self) -> &str {
        match self {
            Checkpoint::TrimHorizon => Self::TRIM_HORIZON,
            Checkpoint::Latest => Self::LATEST,
            Checkpoint::AtTimestamp => Self::AT_TIMESTAMP,
            Checkpoint::ShardEnd => Self::SHARD_END,
            Checkpoint::At(esn) => &esn.sequence_number,
        }
    }

    /// The `checkpointSubSequenceNumber` attribute's value (0 for the sentinels, like the KCL).
    pub fn sub_sequence_number(&self) -> i64 {
        match self {
            Checkpoint::At(esn) => esn.sub_sequence_number,
            _ => 0,
        }
    }
}

impl fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Checkpoint::At(esn) if esn.sub_sequence_number != 0 => {
                write!(f, "{}/{}", esn.sequence_number, esn.sub_sequence_number)
            }
            other => f.write_str(other.value()),
        }
    }
}

/// One lease item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The shard id.
    pub key: String,
    pub owner: Option<String>,
    pub counter: i64,
    pub checkpoint: Checkpoint,
    pub owner_switches_since_checkpoint: i64,
    pub parent_shard_ids: Vec<String>,
    pub child_shard_ids: Vec<String>,
    /// Written by a Java KCL's `prepareCheckpoint`; kept as read, cleared by a checkpoint.
    pub pending_checkpoint: Option<ExtendedSequenceNumber>,
    /// `(startingHashKey, endingHashKey)`.
    pub hash_key_range: Option<(String, String)>,
    /// With a `LATEST` checkpoint: when the application first read the shard. Every holder
    /// reads from there until the first real checkpoint, so a lease that moves before it loses
    /// nothing written meanwhile.
    pub latest_start: Option<DateTime<Utc>>,
    /// `checkpointOwner`: a graceful handoff is in progress; the worker named may still
    /// checkpoint (and must clear it), the owner must not start before it is gone.
    pub checkpoint_owner: Option<String>,
    /// `handedOverBy`: a stopping worker handed the lease to `owner`, who has not taken it up.
    pub handed_over_by: Option<String>,
}

impl Lease {
    /// What the lease state machine needs of the item.
    pub fn ownership(&self) -> super::machine::Ownership {
        super::machine::Ownership {
            owner: self.owner.clone(),
            checkpoint_owner: self.checkpoint_owner.clone(),
            counter: self.counter,
            handed_over: self.handed_over_by.is_some(),
        }
    }

    /// A new, unowned lease for a shard, as shard sync creates it.
    pub fn new_for_shard(
        shard_id: impl Into<String>,
        parent_shard_ids: Vec<String>,
        hash_key_range: Option<(String, String)>,
        checkpoint: Checkpoint,
    ) -> Self {
        Self {
            key: shard_id.into(),
            owner: None,
            counter: 0,
            checkpoint,
            owner_switches_since_checkpoint: 0,
            parent_shard_ids,
            child_shard_ids: Vec::new(),
            pending_checkpoint: None,
            hash_key_range,
            latest_start: None,
            checkpoint_owner: None,
            handed_over_by: None,
        }
    }

    pub fn is_owned_by(&self, worker_id: &str) -> bool {
        self.owner.as_deref() == Some(worker_id)
    }

    /// The whole item, as `PutItem` writes a new lease.
    pub fn to_item(&self) -> HashMap<String, AttributeValue> {
        let mut item = HashMap::new();
        item.insert(LEASE_KEY.into(), s(&self.key));
        if let Some(owner) = &self.owner {
            item.insert(LEASE_OWNER.into(), s(owner));
        }
        item.insert(LEASE_COUNTER.into(), n(self.counter));
        item.insert(CHECKPOINT.into(), s(self.checkpoint.value()));
        item.insert(
            CHECKPOINT_SUB_SEQUENCE.into(),
            n(self.checkpoint.sub_sequence_number()),
        );
        item.insert(
            OWNER_SWITCHES.into(),
            n(self.owner_switches_since_checkpoint),
        );
        // DynamoDB refuses empty sets: an absent attribute means "none", as for the KCL.
        if !self.parent_shard_ids.is_empty() {
            item.insert(
                PARENT_SHARD_IDS.into(),
                AttributeValue::Ss(self.parent_shard_ids.clone()),
            );
        }
        if !self.child_shard_ids.is_empty() {
            item.insert(
                CHILD_SHARD_IDS.into(),
                AttributeValue::Ss(self.child_shard_ids.clone()),
            );
        }
        if let Some(pending) = &self.pending_checkpoint {
            item.insert(PENDING_CHECKPOINT.into(), s(&pending.sequence_number));
            item.insert(
                PENDING_CHECKPOINT_SUB_SEQUENCE.into(),
                n(pending.sub_sequence_number),
            );
        }
        if let Some((start, end)) = &self.hash_key_range {
            item.insert(STARTING_HASH_KEY.into(), s(start));
            item.insert(ENDING_HASH_KEY.into(), s(end));
        }
        if let Some(at) = self.latest_start {
            item.insert(LATEST_START.into(), n(at.timestamp_millis()));
        }
        if let Some(old) = &self.checkpoint_owner {
            item.insert(CHECKPOINT_OWNER.into(), s(old));
        }
        if let Some(by) = &self.handed_over_by {
            item.insert(HANDED_OVER_BY.into(), s(by));
        }
        item
    }

    /// Reads an item. Optional attributes may be missing (older KCL versions omit some).
    pub fn from_item(item: &HashMap<String, AttributeValue>) -> Result<Self, LeaseFormatError> {
        let key = get_s(item, LEASE_KEY)
            .ok()
            .flatten()
            .ok_or(LeaseFormatError::missing(LEASE_KEY))?;
        let bad = |attribute: &'static str| LeaseFormatError {
            key: key.clone(),
            attribute,
        };
        let counter = get_n(item, LEASE_COUNTER).map_err(|_| bad(LEASE_COUNTER))?;
        let sub = get_n(item, CHECKPOINT_SUB_SEQUENCE)
            .map_err(|_| bad(CHECKPOINT_SUB_SEQUENCE))?
            .unwrap_or(0);
        let checkpoint = match get_s(item, CHECKPOINT).map_err(|_| bad(CHECKPOINT))? {
            Some(value) => Checkpoint::parse(&value, sub).ok_or_else(|| bad(CHECKPOINT))?,
            // The KCL always writes one; treat a bare item as never processed.
            None => Checkpoint::TrimHorizon,
        };
        let pending = match get_s(item, PENDING_CHECKPOINT).map_err(|_| bad(PENDING_CHECKPOINT))? {
            Some(seq) if !seq.is_empty() => Some(ExtendedSequenceNumber::new(
                seq,
                get_n(item, PENDING_CHECKPOINT_SUB_SEQUENCE)
                    .map_err(|_| bad(PENDING_CHECKPOINT_SUB_SEQUENCE))?
                    .unwrap_or(0),
            )),
            _ => None,
        };
        let range = match (
            get_s(item, STARTING_HASH_KEY).map_err(|_| bad(STARTING_HASH_KEY))?,
            get_s(item, ENDING_HASH_KEY).map_err(|_| bad(ENDING_HASH_KEY))?,
        ) {
            (Some(start), Some(end)) => Some((start, end)),
            _ => None,
        };
        let latest_start = get_n(item, LATEST_START)
            .map_err(|_| bad(LATEST_START))?
            .map(|ms| DateTime::<Utc>::from_timestamp_millis(ms).ok_or_else(|| bad(LATEST_START)))
            .transpose()?;
        Ok(Self {
            owner: get_s(item, LEASE_OWNER)
                .map_err(|_| bad(LEASE_OWNER))?
                .filter(|o| !o.is_empty()),
            counter: counter.unwrap_or(0),
            checkpoint,
            owner_switches_since_checkpoint: get_n(item, OWNER_SWITCHES)
                .map_err(|_| bad(OWNER_SWITCHES))?
                .unwrap_or(0),
            parent_shard_ids: get_ss(item, PARENT_SHARD_IDS).map_err(|_| bad(PARENT_SHARD_IDS))?,
            child_shard_ids: get_ss(item, CHILD_SHARD_IDS).map_err(|_| bad(CHILD_SHARD_IDS))?,
            pending_checkpoint: pending,
            hash_key_range: range,
            latest_start,
            checkpoint_owner: get_s(item, CHECKPOINT_OWNER)
                .map_err(|_| bad(CHECKPOINT_OWNER))?
                .filter(|o| !o.is_empty()),
            handed_over_by: get_s(item, HANDED_OVER_BY)
                .map_err(|_| bad(HANDED_OVER_BY))?
                .filter(|o| !o.is_empty()),
            key,
        })
    }
}

/// An item that is not a lease this module can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("lease item {key:?}: attribute {attribute} is missing or has the wrong type")]
pub struct LeaseFormatError {
    pub key: String,
    pub attribute: &'static str,
}

impl LeaseFormatError {
    fn missing(attribute: &'static str) -> Self {
        Self {
            key: String::new(),
            attribute,
        }
    }
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_string())
}

fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn get_s(item: &HashMap<String, AttributeValue>, name: &str) -> Result<Option<String>, ()> {
    match item.get(name) {
        None | Some(AttributeValue::Null(_)) => Ok(None),
        Some(AttributeValue::S(v)) => Ok(Some(v.clone())),
        Some(_) => Err(()),
    }
}

fn get_n(item: &HashMap<String, AttributeValue>, name: &str) -> Result<Option<i64>, ()> {
    match item.get(name) {
        None | Some(AttributeValue::Null(_)) => Ok(None),
        Some(AttributeValue::N(v)) => v.trim().parse().map(Some).map_err(|_| ()),
        Some(_) => Err(()),
    }
}

fn get_ss(item: &HashMap<String, AttributeValue>, name: &str) -> Result<Vec<String>, ()> {
    match item.get(name) {
        None | Some(AttributeValue::Null(_)) => Ok(Vec::new()),
        Some(AttributeValue::Ss(v)) => {
            let mut v = v.clone();
            v.sort();
            Ok(v)
        }
        Some(_) => Err(()),
    }
}

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
}

impl<'a> Update<'a> {
    fn new(lease: &'a Lease) -> Self {
        let mut update = Self {
            lease,
            names: HashMap::new(),
            values: HashMap::new(),
            sets: Vec::new(),
            removes: Vec::new(),
            handoff: None,
            absent: Vec::new(),
        };
        update.set(LEASE_COUNTER, n(lease.counter.saturating_add(1)));
        update
    }

    /// A write by the old owner during a handoff: no counter bump, conditional on
    /// `checkpointOwner = old_owner`.
    fn handoff(lease: &'a Lease, old_owner: &str) -> Self {
        Self {
            lease,
            names: HashMap::new(),
            values: HashMap::new(),
            sets: Vec::new(),
            removes: Vec::new(),
            handoff: Some(old_owner.to_string()),
            absent: Vec::new(),
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
        let mut condition = match self.handoff.take() {
            Some(old) => {
                let checkpoint_owner = self.name(CHECKPOINT_OWNER);
                self.values
                    .insert(":expected_checkpoint_owner".into(), s(&old));
                format!("{checkpoint_owner} = :expected_checkpoint_owner")
            }
            None => {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn full_lease() -> Lease {
        Lease {
            key: "shardId-000000000002".into(),
            owner: Some("worker-a".into()),
            counter: 42,
            checkpoint: Checkpoint::At(ExtendedSequenceNumber::new(
                "49590338271490256608559692538361571095921575989136588898",
                3,
            )),
            owner_switches_since_checkpoint: 1,
            parent_shard_ids: vec!["shardId-000000000000".into(), "shardId-000000000001".into()],
            child_shard_ids: vec!["shardId-000000000003".into()],
            pending_checkpoint: None,
            hash_key_range: Some(("0".into(), "170141183460469231731687303715884105727".into())),
            latest_start: None,
            checkpoint_owner: None,
            handed_over_by: None,
        }
    }

    #[test]
    fn a_lease_round_trips_with_the_kcl_attribute_names_and_types() {
        let lease = full_lease();
        let item = lease.to_item();
        let mut names: Vec<&str> = item.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            vec![
                "checkpoint",
                "checkpointSubSequenceNumber",
                "childShardIds",
                "endingHashKey",
                "leaseCounter",
                "leaseKey",
                "leaseOwner",
                "ownerSwitchesSinceCheckpoint",
                "parentShardId",
                "startingHashKey",
            ]
        );
        assert_eq!(item["leaseKey"], s("shardId-000000000002"));
        assert_eq!(item["leaseCounter"], AttributeValue::N("42".into()));
        assert_eq!(
            item["checkpointSubSequenceNumber"],
            AttributeValue::N("3".into())
        );
        assert!(matches!(item["parentShardId"], AttributeValue::Ss(ref v) if v.len() == 2));
        assert_eq!(Lease::from_item(&item).unwrap(), lease);
    }

    #[test]
    fn a_pinned_latest_start_round_trips_in_milliseconds() {
        let mut lease = Lease::new_for_shard("shardId-1", Vec::new(), None, Checkpoint::Latest);
        lease.latest_start = DateTime::<Utc>::from_timestamp_millis(1_795_000_000_123);
        let item = lease.to_item();
        assert_eq!(
            item["latestStartTimestamp"],
            AttributeValue::N("1795000000123".into())
        );
        assert_eq!(Lease::from_item(&item).unwrap(), lease);
    }

    #[test]
    fn empty_sets_and_no_owner_are_absent_attributes() {
        let lease = Lease::new_for_shard("shardId-1", Vec::new(), None, Checkpoint::TrimHorizon);
        let item = lease.to_item();
        assert!(!item.contains_key("leaseOwner"));
        assert!(!item.contains_key("parentShardId"));
        assert!(!item.contains_key("childShardIds"));
        assert_eq!(item["checkpoint"], s("TRIM_HORIZON"));
        assert_eq!(Lease::from_item(&item).unwrap(), lease);
    }

    /// An item as the Java KCL 2.x writes it, pending checkpoint included.
    #[test]
    fn an_item_written_by_the_java_kcl_is_read() {
        let item: HashMap<String, AttributeValue> = [
            ("leaseKey", s("shardId-000000000001")),
            ("leaseOwner", s("ip-10-0-0-1:6d6e8b3c")),
            ("leaseCounter", AttributeValue::N("1337".into())),
            ("checkpoint", s("SHARD_END")),
            ("checkpointSubSequenceNumber", AttributeValue::N("0".into())),
            (
                "ownerSwitchesSinceCheckpoint",
                AttributeValue::N("0".into()),
            ),
            (
                "parentShardId",
                AttributeValue::Ss(vec!["shardId-000000000000".into()]),
            ),
            (
                "childShardIds",
                AttributeValue::Ss(vec![
                    "shardId-000000000004".into(),
                    "shardId-000000000003".into(),
                ]),
            ),
            ("pendingCheckpoint", s("4959")),
            (
                "pendingCheckpointSubSequenceNumber",
                AttributeValue::N("2".into()),
            ),
            ("startingHashKey", s("0")),
            ("endingHashKey", s("99")),
            ("someNewerKclAttribute", AttributeValue::Bool(true)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let lease = Lease::from_item(&item).unwrap();
        assert_eq!(lease.owner.as_deref(), Some("ip-10-0-0-1:6d6e8b3c"));
        assert_eq!(lease.counter, 1337);
        assert_eq!(lease.checkpoint, Checkpoint::ShardEnd);
        assert_eq!(
            lease.child_shard_ids,
            vec!["shardId-000000000003", "shardId-000000000004"]
        );
        assert_eq!(
            lease.pending_checkpoint,
            Some(ExtendedSequenceNumber::new("4959", 2))
        );
        assert_eq!(lease.hash_key_range, Some(("0".into(), "99".into())));
    }

    /// Items the KCL 3.5 keeps in the lease table, as it writes them (attributes abridged).
    #[test]
    fn other_kcl_entities_in_the_lease_table_are_not_leases() {
        let item = |pairs: &[(&str, &str)]| -> HashMap<String, AttributeValue> {
            pairs.iter().map(|(k, v)| (k.to_string(), s(v))).collect()
        };
        for other in [
            item(&[
                ("leaseKey", "Leader"),
                ("ownerName", "w1"),
                ("entityType", "LEADER"),
            ]),
            item(&[("leaseKey", "w1"), ("entityType", "WORKER_METRIC_STATS")]),
            item(&[
                ("leaseKey", "Migration3.0"),
                ("cv", "CLIENT_VERSION_3X"),
                ("entityType", "CLIENT_VERSION_MIGRATION"),
            ]),
        ] {
            assert!(!is_lease_item(&other), "{other:?}");
        }
        let mut lease = full_lease().to_item();
        assert!(is_lease_item(&lease), "no entityType: a lease");
        lease.insert("entityType".into(), s("LEASE"));
        lease.insert("throughputKBps".into(), AttributeValue::N("0.0".into()));
        assert!(is_lease_item(&lease));
        assert_eq!(Lease::from_item(&lease).unwrap(), full_lease());
    }

    #[test]
    fn a_minimal_item_reads_with_defaults_and_a_bad_one_names_the_attribute() {
        let item: HashMap<String, AttributeValue> = [("leaseKey".to_string(), s("shardId-9"))]
            .into_iter()
            .collect();
        let lease = Lease::from_item(&item).unwrap();
        assert_eq!(lease.counter, 0);
        assert_eq!(lease.owner, None);
        assert_eq!(lease.checkpoint, Checkpoint::TrimHorizon);
        let mut bad = item.clone();
        bad.insert("leaseCounter".into(), s("many"));
        assert_eq!(
            Lease::from_item(&bad).unwrap_err().attribute,
            "leaseCounter"
        );
        let mut bad = item;
        bad.insert("checkpoint".into(), s("BEGINNING"));
        assert_eq!(Lease::from_item(&bad).unwrap_err().attribute, "checkpoint");
    }

    #[test]
    fn checkpoint_sentinels_and_sequence_numbers() {
        for word in ["TRIM_HORIZON", "LATEST", "AT_TIMESTAMP", "SHARD_END"] {
            let cp = Checkpoint::parse(word, 0).unwrap();
            assert_eq!(cp.value(), word);
            assert_eq!(cp.sub_sequence_number(), 0);
        }
        let cp = Checkpoint::parse("123", 4).unwrap();
        assert_eq!(cp, Checkpoint::At(ExtendedSequenceNumber::new("123", 4)));
        assert_eq!(cp.to_string(), "123/4");
        assert_eq!(Checkpoint::parse("12a", 0), None);
    }

    #[test]
    fn sequence_numbers_compare_by_value() {
        assert_eq!(compare_sequence_numbers("9", "10"), Ordering::Less);
        assert_eq!(compare_sequence_numbers("0010", "10"), Ordering::Equal);
        assert_eq!(
            compare_sequence_numbers(
                "49590338271490256608559692538361571095921575989136588898",
                "49590338271490256608559692538361571095921575989136588899"
            ),
            Ordering::Less
        );
        let a = ExtendedSequenceNumber::new("100", 5);
        let b = ExtendedSequenceNumber::new("100", 6);
        let c = ExtendedSequenceNumber::new("101", 0);
        assert!(a < b && b < c);
    }
}
