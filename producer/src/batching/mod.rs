//! A buffered, batching Kinesis producer: hand it records, get back their sequence numbers.
//!
//! Guarantees:
//! - **Nothing is reported sent that Kinesis did not acknowledge**: a [`Receipt`] resolves to
//!   an [`Ack`] only with the shard id and sequence number Kinesis returned for that very entry.
//! - **Nothing is lost silently**: every record ends as an `Ack` or a [`SendError`]. Failed
//!   entries of a partial `PutRecords` and whole calls that failed transiently are retried with
//!   exponential backoff and full jitter until the record's time to live runs out.
//! - **Bounded memory**: [`Producer::enqueue`] waits while the buffer holds
//!   `max_buffered_records` records or `max_buffered_bytes` bytes (backpressure), each record
//!   counting its data, its partition key and [`RECORD_OVERHEAD_BYTES`] of bookkeeping; the
//!   data is held once (an aggregate's members are slices of it). A record takes its room
//!   until its outcome is delivered: its receipt resolved, or (handed over with
//!   [`Producer::enqueue_tagged`]) until the caller drops the [`OutcomeBatch`] reporting it.
//!
//! - **The time to live holds whatever the network does**: a record still queued (held back by
//!   the rate limiter, say) when its `record_ttl` runs out fails then, and a `PutRecords` call
//!   is abandoned when the earliest time to live among its records runs out, so a hung
//!   connection neither stretches a record's life nor keeps one of the `max_in_flight` slots.
//!
//! Order: the records of one partition key (or explicit hash key) are put in the order they
//! were handed over. A call carries them in that order (members of an aggregate too), and no
//! call carries one while a record of its key handed over earlier is still buffered (queued,
//! held back by the rate limiter, in an open aggregate), across a split or merge too: a new
//! shard map regroups everything buffered, in order. Two exceptions, as with the KPL: with
//! `max_in_flight` above 1 two calls may land in either order, and a record retried (a failed
//! entry, a throttled or failed call, an aggregate stored on the wrong side of a split) lands
//! after records of its key sent meanwhile. So with `max_in_flight = 1` and no retries Kinesis
//! receives them in order (and kinesis-mock stores them so; the `PutRecords` documentation does
//! not promise the order of one call's entries).
//!
//! With `aggregation`, user records bound for the same shard (by the stream's shard map, which
//! is refreshed when a record lands elsewhere than predicted, after a split or merge) are
//! packed into KPL aggregated records of at most `aggregation_max_bytes`; every member's
//! [`Ack`] then carries the aggregate's sequence number and its own sub-sequence number. An
//! aggregate stored on a shard whose hash key range does not hold every member (built from a
//! stale map) is never acknowledged: its members are put again under the refreshed map, as the
//! KPL does, since the Java KCL skips such an aggregate whole.
//!
//! Records are grouped into `PutRecords` calls of at most 500 entries and 5 MiB, sent when a
//! batch is full or when its oldest record has waited `linger`; at most `max_in_flight` calls
//! run at once.
//!
//! How it is put together, one job a module: `handle` (the [`Producer`] a program holds),
//! `record` and `config` (what goes in and comes out), `outcome` (receipts, or outcome
//! batches for tagged records), `entry` (what the buffer holds),
//! `event_loop` (the background task that owns the buffer: read it top-down), `aggregation`,
//! `rate_limit` (token buckets and the records they hold back), `shard_map`, `put_records`
//! (the call and the reading of its answer) and `request_body` (the call's JSON body).

mod aggregation;
mod config;
mod entry;
mod event_loop;
mod handle;
mod outcome;
mod put_records;
mod rate_limit;
mod record;
mod request_body;
mod shard_map;

pub use config::{InvalidConfig, ProducerConfig};
pub use handle::{Flusher, Producer, Receipt};
pub use outcome::{OutcomeBatch, Outcomes};
pub use record::{Ack, ProducerRecord, SendError};

/// The Kinesis limit for one record: data and partition key together.
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;
