//! Shared building blocks of the Kinesis producer and consumer libraries and their services.
//!
//! - [`kpl`]: the KPL aggregation format (aggregate, deaggregate, hash keys).
//! - [`message`]: the `DataMessage` wire format shared with the original .NET services.
//! - [`config`]: the single list of environment variables, loaded once into typed settings.
//! - [`aws`]: AWS SDK configuration from the standard chain (region, credentials, endpoints).
//! - [`kinesis`]: stream helpers both services need (wait until ACTIVE, list shards).
//! - [`telemetry`]: log setup (`LOG_FORMAT`, `RUST_LOG`).
//! - [`http`]: the HTTP server on `HTTP_ADDR` (metrics, health, readiness) and the
//!   `healthcheck` subcommand.
//! - [`shutdown`]: SIGINT/SIGTERM to a `CancellationToken`.
//! - [`backoff`]: exponential backoff with full jitter.
//!
//! The test kit (emulators, process harness, fault proxy) is the unpublished `testkit` crate,
//! a dev-dependency of the others.

#![warn(missing_docs)]

pub mod aws;
pub mod backoff;
pub mod config;
pub mod http;
pub mod kinesis;
pub mod kpl;
pub mod message;
mod process_metrics;
pub mod shutdown;
pub mod telemetry;
