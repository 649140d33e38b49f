//! The lease item: one DynamoDB item per shard, in the Java KCL 2.x format, so a table written
//! by a Java KCL application is read here and the other way round. The format only: the calls
//! on the table are in `lease::table`.
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
//! | `checkpointOwner` | S | KCL 3.x: a graceful handoff in progress, naming the previous owner |
//! | `throughputKBps` | N | KCL 3.x: the holder's recent read rate, KiB/s, written with each renewal (`lease::throughput`) |
//! | `kinesisStreamName` | S | this project's: the stream the lease was created for |
//! | `latestStartTimestamp` | N | this project's: while the checkpoint is `LATEST`, the time (ms since the epoch) the application first read the shard; removed by a checkpoint |
//! | `handedOverBy` | S | this project's: a stopping worker handed the lease to `leaseOwner`, which has not taken it up |
//!
//! The Java KCL 3.x adds `entityType` (`LEASE` on leases), `throughputKBps`, `checkpointOwner`
//! and a `leaseOwner` index. Since 3.5 it also keeps other entities in the lease table under
//! their own `leaseKey`: its leader lock (`Leader`), worker metrics (the worker id) and
//! migration state (`Migration3.0`), each with an `entityType` other than `LEASE`
//! ([`is_lease_item`] tells them apart). The KCL ignores attributes it does not know, so a Java
//! application still reads a table with ours.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Utc};

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
/// KCL 3.x: written by the holder with each renewal; the leader balances by it.
pub const THROUGHPUT_KBPS: &str = "throughputKBps";
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
    /// The Kinesis record's sequence number (decimal digits).
    pub sequence_number: String,
    /// The user record's index inside a KPL aggregate; 0 for an ordinary record.
    pub sub_sequence_number: i64,
}

impl ExtendedSequenceNumber {
    /// The position of user record `sub_sequence_number` of record `sequence_number`.
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
    /// `TRIM_HORIZON`: start from the oldest record.
    TrimHorizon,
    /// `LATEST`: start from records written after the shard was first read.
    Latest,
    /// `AT_TIMESTAMP`: start from the configured time.
    AtTimestamp,
    /// Every record of the shard was processed; its children may start.
    ShardEnd,
    /// Records up to and including this position were processed.
    At(ExtendedSequenceNumber),
}

impl Checkpoint {
    /// The `checkpoint` attribute's value for [`Checkpoint::TrimHorizon`].
    pub const TRIM_HORIZON: &'static str = "TRIM_HORIZON";
    /// The `checkpoint` attribute's value for [`Checkpoint::Latest`].
    pub const LATEST: &'static str = "LATEST";
    /// The `checkpoint` attribute's value for [`Checkpoint::AtTimestamp`].
    pub const AT_TIMESTAMP: &'static str = "AT_TIMESTAMP";
    /// The `checkpoint` attribute's value for [`Checkpoint::ShardEnd`].
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
#[derive(Debug, Clone, PartialEq)]
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
    /// `throughputKBps`: the holder's recent read rate, as last written.
    pub throughput_kbps: Option<f64>,
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
            throughput_kbps: None,
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
        if let Some(kbps) = self.throughput_kbps.filter(|v| v.is_finite()) {
            item.insert(THROUGHPUT_KBPS.into(), AttributeValue::N(kbps.to_string()));
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
            throughput_kbps: get_f64(item, THROUGHPUT_KBPS).map_err(|_| bad(THROUGHPUT_KBPS))?,
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

pub(super) fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_string())
}

pub(super) fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

pub(super) fn get_s(
    item: &HashMap<String, AttributeValue>,
    name: &str,
) -> Result<Option<String>, ()> {
    match item.get(name) {
        None | Some(AttributeValue::Null(_)) => Ok(None),
        Some(AttributeValue::S(v)) => Ok(Some(v.clone())),
        Some(_) => Err(()),
    }
}

pub(super) fn get_n(item: &HashMap<String, AttributeValue>, name: &str) -> Result<Option<i64>, ()> {
    match item.get(name) {
        None | Some(AttributeValue::Null(_)) => Ok(None),
        Some(AttributeValue::N(v)) => v.trim().parse().map(Some).map_err(|_| ()),
        Some(_) => Err(()),
    }
}

pub(super) fn get_f64(
    item: &HashMap<String, AttributeValue>,
    name: &str,
) -> Result<Option<f64>, ()> {
    match item.get(name) {
        None | Some(AttributeValue::Null(_)) => Ok(None),
        Some(AttributeValue::N(v)) => match v.trim().parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(Some(v)),
            _ => Err(()),
        },
        Some(_) => Err(()),
    }
}

pub(super) fn get_ss(
    item: &HashMap<String, AttributeValue>,
    name: &str,
) -> Result<Vec<String>, ()> {
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
            throughput_kbps: None,
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
        lease.insert("throughputKBps".into(), AttributeValue::N("12.5".into()));
        assert!(is_lease_item(&lease));
        let read = Lease::from_item(&lease).unwrap();
        assert_eq!(read.throughput_kbps, Some(12.5));
        assert_eq!(
            Lease {
                throughput_kbps: None,
                ..read
            },
            full_lease()
        );
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
