//! The producer: a batching Kinesis producer library ([`batching`]) and the timer-driven demo
//! service built on it ([`service`]).
//!
//! Run it with `cargo run -p producer` (docs/configuration.md lists the variables). Every message it
//! logs as `record sent` carries the shard id and sequence number Kinesis returned for it;
//! a message that could not be sent is logged as `record not sent` with the reason.

pub mod batching;
pub mod metrics;
pub mod service;
pub mod shard_stats;
pub mod status;

pub use batching::{
    Ack, Flusher, InvalidConfig, OutcomeBatch, Outcomes, Producer, ProducerConfig, ProducerRecord,
    Receipt, SendError,
};
