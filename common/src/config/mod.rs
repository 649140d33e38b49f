//! Service configuration: defaults, then an optional TOML file, then environment variables.
//!
//! This module (`vars.rs`) is the single list of the variables the services read. Each one is a [`VarSpec`]
//! constant; the typed loaders below can only read a variable through its constant, so a name
//! that is not declared here cannot be read anywhere. The docker-compose test checks the
//! compose file against these lists, and docs/configuration.md documents exactly these names
//! (`common/tests/docs.rs` checks it).
//!
//! Everything is read once at startup and validated into typed structs. A bad value is a
//! [`ConfigError`] whose one-line message names the variable, the value and what is allowed.
//!
//! Its parts: `vars.rs`, the variable registry (every [`VarSpec`] and which service reads it);
//! `raw.rs`, the raw layered values ([`RawConfig`]) and [`ConfigError`]; `shared.rs`, the
//! settings both services share; `producer.rs` and `consumer.rs`, each service's settings.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};

mod consumer;
mod producer;
mod raw;
mod shared;
/// The variable registry, public for the repository's own checks (`tests/compose.rs`); not
/// part of the API.
#[doc(hidden)]
pub mod vars;

pub use consumer::*;
pub use producer::*;
pub use raw::*;
pub use shared::*;
pub(crate) use vars::*;

#[cfg(test)]
mod tests;
