//! A batching Kinesis producer library, and the timer-driven `producer` service built on it.
//!
//! [`Producer`] takes [`ProducerRecord`]s and packs them into as few `PutRecords` calls as the
//! Kinesis limits allow (batching, optional KPL aggregation, per-shard rate limiting), retries
//! what failed with backoff, and answers each record: an [`Ack`] with the shard and sequence
//! number Kinesis stored it under, or a [`SendError`] saying why it was not sent. Memory is
//! bounded ([`ProducerConfig::max_buffered_records`], [`ProducerConfig::max_buffered_bytes`]):
//! handing over waits while the buffer is full.
//!
//! [`service`] is the service (`cargo run -p kinesis-producer`, variables in the README): every
//! message it logs as `record sent` carries the shard id and sequence number Kinesis returned
//! for it; a message that could not be sent is logged as `record not sent` with the reason.

#![warn(missing_docs)]

mod batching;
mod metrics;
pub mod service;
mod shard_stats;
mod status;

pub use batching::{
    Ack, Flusher, InvalidConfig, OutcomeBatch, Outcomes, Producer, ProducerConfig, ProducerRecord,
    Receipt, SendError,
};
pub use metrics::ProducerMetrics;
