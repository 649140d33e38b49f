//! The MultiLangDaemon's properties file, read into this consumer's settings.
//!
//! Each key the daemon's users rely on maps to one of the consumer's settings (the README's
//! table); the mapped values override the same `CONSUMER_*` variables, and every other
//! variable (`HTTP_ADDR`, `LOG_FORMAT`, `CONSUMER_HANDOFF_TIMEOUT_MS`, the AWS variables...)
//! works as in leased mode. A key this consumer does not implement is reported once by name
//! ([`MultiLangSettings::unimplemented`]); a bad value stops the start with an error naming
//! the key.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use kinesis_common::config::{ConfigError, ConsumerSettings, RawConfig};

/// What `consumer multilang FILE` runs with.
#[derive(Debug, Clone)]
pub struct MultiLangSettings {
    /// The consumer's settings, from the file and the environment.
    pub consumer: ConsumerSettings,
    /// `executableName`, split on spaces as the Java daemon splits it.
    pub command: Vec<String>,
    /// `timeoutInSeconds`: the longest a child may take to answer a message.
    pub timeout: Option<Duration>,
    /// `callProcessRecordsEvenForEmptyRecordList`: `processRecords` also for reads that
    /// brought nothing.
    pub empty_batches: bool,
    /// `regionName`.
    pub region: Option<String>,
    /// `kinesisEndpoint`, `dynamoDBEndpoint`.
    pub kinesis_endpoint: Option<String>,
    /// `dynamoDBEndpoint`.
    pub dynamodb_endpoint: Option<String>,
    /// Keys read and not implemented, each with what happens instead: one warning each.
    pub unimplemented: Vec<(String, &'static str)>,
}

/// Why the properties file cannot be used; the message names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PropertiesError {
    /// The file cannot be read.
    #[error("cannot read properties file {path}: {reason}")]
    Read {
        /// The file's path.
        path: String,
        /// Why it cannot be read.
        reason: String,
    },
    /// A property holds a value it does not accept.
    #[error("invalid value for property {key}: {value:?} (allowed: {allowed})")]
    Invalid {
        /// The property.
        key: String,
        /// Its value.
        value: String,
        /// What it accepts.
        allowed: String,
    },
    /// A required property is missing.
    #[error("property {key} is required ({why})")]
    Missing {
        /// The property.
        key: &'static str,
        /// Why it is required.
        why: &'static str,
    },
    /// A setting from the environment (not the file) is wrong.
    #[error(transparent)]
    Env(ConfigError),
}

/// Keys that map to one of the consumer's variables, checked by the variable's own rules.
const MAPPED: &[(&str, &str)] = &[
    ("streamName", "STREAM_NAME"),
    ("applicationName", "CONSUMER_APPLICATION_NAME"),
    ("workerId", "CONSUMER_WORKER_ID"),
    ("failoverTimeMillis", "CONSUMER_FAILOVER_MS"),
    ("maxRecords", "CONSUMER_MAX_RECORDS"),
    ("idleTimeBetweenReadsInMillis", "CONSUMER_POLL_INTERVAL_MS"),
    ("shardSyncIntervalMillis", "CONSUMER_SHARD_SYNC_MS"),
    ("maxLeasesForWorker", "CONSUMER_MAX_LEASES_PER_WORKER"),
];

/// The Java daemon's polling keys: with `retrievalMode` unset (`DEFAULT`), any of them set
/// means polling, none means fan-out, as `RetrievalMode.decideForDefault` decides.
const POLLING_KEYS: &[&str] = &[
    "maxRecords",
    "idleTimeBetweenReadsInMillis",
    "retryGetRecordsInSeconds",
    "maxGetRecordsThreadPool",
    "millisBehindLatestThresholdForReducedTps",
];

/// Keys read for their meaning elsewhere, or that need nothing here.
const HANDLED: &[&str] = &[
    "executableName",
    "streamArn",
    "initialPositionInStream",
    "initialPositionInStreamExtended",
    "regionName",
    "kinesisEndpoint",
    "dynamoDBEndpoint",
    "retrievalMode",
    "timeoutInSeconds",
    "callProcessRecordsEvenForEmptyRecordList",
    // Only for the Java daemon's user agent.
    "processingLanguage",
];

/// Credential provider names that mean the default chain, which this consumer always uses.
const DEFAULT_CREDENTIALS: &[&str] = &[
    "DefaultCredentialsProvider",
    "DefaultAWSCredentialsProviderChain",
];

/// Reads `path` and layers it over `env` (the process environment).
pub fn load(
    path: &Path,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<MultiLangSettings, PropertiesError> {
    let read_error = |reason: String| PropertiesError::Read {
        path: path.display().to_string(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| read_error(e.to_string()))?;
    let properties = java_properties::read(std::io::BufReader::new(file))
        .map_err(|e| read_error(e.to_string()))?;
    from_properties(&properties.into_iter().collect(), env)
}

fn invalid(key: &str, value: &str, allowed: &str) -> PropertiesError {
    PropertiesError::Invalid {
        key: key.to_string(),
        value: value.to_string(),
        allowed: allowed.to_string(),
    }
}

/// Java's `BooleanConverter` words.
fn boolean(key: &str, value: &str) -> Result<bool, PropertiesError> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "yes" | "y" | "on" | "1" => Ok(true),
        "false" | "no" | "n" | "off" | "0" => Ok(false),
        _ => Err(invalid(key, value, "true or false")),
    }
}

fn url(key: &str, value: &str) -> Result<String, PropertiesError> {
    if value.starts_with("http://") || value.starts_with("https://") {
        Ok(value.to_string())
    } else {
        Err(invalid(
            key,
            value,
            "a URL such as https://kinesis.us-east-1.amazonaws.com",
        ))
    }
}

/// The stream name in `arn:aws:kinesis:REGION:ACCOUNT:stream/NAME`.
fn stream_name_from_arn(value: &str) -> Option<&str> {
    let parts: Vec<&str> = value.splitn(6, ':').collect();
    match parts.as_slice() {
        ["arn", _partition, "kinesis", _region, _account, resource] => resource
            .strip_prefix("stream/")
            .filter(|name| !name.is_empty() && !name.contains('/')),
        _ => None,
    }
}

/// Maps `properties` (key to value, as the file has them) over `env`.
pub fn from_properties(
    properties: &BTreeMap<String, String>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<MultiLangSettings, PropertiesError> {
    let get = |key: &str| {
        properties
            .get(key)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    };
    let command: Vec<String> = get("executableName")
        .map(|v| {
            v.split(' ')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    if command.is_empty() {
        return Err(PropertiesError::Missing {
            key: "executableName",
            why: "the command line of the record processor, e.g. executableName = python3 app.py",
        });
    }
    if get("applicationName").is_none() {
        return Err(PropertiesError::Missing {
            key: "applicationName",
            why: "the lease table's name",
        });
    }
    // The file's values are layered over the environment: they are the application's.
    let mut values: Vec<(String, String)> = env.into_iter().collect();
    let mut set = |var: &str, value: String| values.push((var.to_string(), value));
    set("CONSUMER_MODE", "leased".into());
    for (key, var) in MAPPED {
        if let Some(value) = get(key) {
            set(var, value.to_string());
        }
    }
    if let Some(arn) = get("streamArn") {
        // As in the Java daemon, the ARN wins over streamName.
        let name = stream_name_from_arn(arn).ok_or_else(|| {
            invalid(
                "streamArn",
                arn,
                "arn:aws:kinesis:REGION:ACCOUNT:stream/NAME",
            )
        })?;
        set("STREAM_NAME", name.to_string());
    } else if get("streamName").is_none() {
        return Err(PropertiesError::Missing {
            key: "streamName",
            why: "or streamArn: the stream to read",
        });
    }
    // initialPositionInStreamExtended (epoch seconds) wins, as it is set after in Java too.
    if let Some(seconds) = get("initialPositionInStreamExtended") {
        let at = seconds
            .parse::<i64>()
            .ok()
            .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
            .ok_or_else(|| {
                invalid(
                    "initialPositionInStreamExtended",
                    seconds,
                    "a time in seconds since the epoch",
                )
            })?;
        set("CONSUMER_INITIAL_POSITION", "AT_TIMESTAMP".into());
        set("CONSUMER_START_TIMESTAMP", at.to_rfc3339());
    } else if let Some(position) = get("initialPositionInStream") {
        match position.to_ascii_uppercase().as_str() {
            p @ ("TRIM_HORIZON" | "LATEST") => set("CONSUMER_INITIAL_POSITION", p.into()),
            _ => {
                return Err(invalid(
                    "initialPositionInStream",
                    position,
                    "TRIM_HORIZON or LATEST (AT_TIMESTAMP through initialPositionInStreamExtended)",
                ))
            }
        }
    }
    let retrieval = match get("retrievalMode").map(|m| m.to_ascii_uppercase()) {
        None => None,
        Some(m) if m == "DEFAULT" => None,
        Some(m) if m == "POLLING" => Some("polling"),
        Some(m) if m == "FANOUT" => Some("fanout"),
        Some(_) => {
            return Err(invalid(
                "retrievalMode",
                get("retrievalMode").unwrap_or_default(),
                "FANOUT, POLLING or DEFAULT",
            ))
        }
    };
    let retrieval = retrieval.unwrap_or(if POLLING_KEYS.iter().any(|k| get(k).is_some()) {
        "polling"
    } else {
        "fanout"
    });
    set("CONSUMER_RETRIEVAL", retrieval.into());
    let timeout = match get("timeoutInSeconds") {
        None => None,
        Some(v) => Some(
            v.parse::<u64>()
                .ok()
                .filter(|s| (1..=86_400).contains(s))
                .map(Duration::from_secs)
                .ok_or_else(|| invalid("timeoutInSeconds", v, "1 to 86400"))?,
        ),
    };
    let empty_batches = get("callProcessRecordsEvenForEmptyRecordList")
        .map(|v| boolean("callProcessRecordsEvenForEmptyRecordList", v))
        .transpose()?
        .unwrap_or(false);
    let mut unimplemented = Vec::new();
    let region = get("regionName").map(String::from);
    let kinesis_endpoint = get("kinesisEndpoint")
        .map(|v| url("kinesisEndpoint", v))
        .transpose()?;
    let dynamodb_endpoint = get("dynamoDBEndpoint")
        .map(|v| url("dynamoDBEndpoint", v))
        .transpose()?;
    for (key, value) in properties {
        let key = key.as_str();
        if key
            .to_ascii_lowercase()
            .starts_with("awscredentialsprovider")
        {
            let provider = value.split('|').next().unwrap_or_default().trim();
            if !DEFAULT_CREDENTIALS.contains(&provider) {
                unimplemented.push((
                    key.to_string(),
                    "the default credential chain (AWS_* variables, profile, container or instance role) is used",
                ));
            }
            continue;
        }
        let known = HANDLED.contains(&key) || MAPPED.iter().any(|(k, _)| *k == key);
        if !known {
            unimplemented.push((key.to_string(), "ignored"));
        }
    }
    let raw = RawConfig::load(values).map_err(PropertiesError::Env)?;
    let consumer = ConsumerSettings::from_raw(&raw).map_err(|err| {
        // A mapped key's value failed the variable's rules: name the key.
        let var = err.var();
        let key = MAPPED
            .iter()
            .find(|(k, v)| *v == var && get(k).is_some())
            .map(|(k, _)| *k);
        match (key, &err) {
            (Some(key), ConfigError::Invalid { value, allowed, .. }) => {
                invalid(key, value, allowed)
            }
            _ => PropertiesError::Env(err),
        }
    })?;
    Ok(MultiLangSettings {
        consumer,
        command,
        timeout,
        empty_batches,
        region,
        kinesis_endpoint,
        dynamodb_endpoint,
        unimplemented,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(text: &str) -> BTreeMap<String, String> {
        java_properties::read(text.as_bytes())
            .unwrap()
            .into_iter()
            .collect()
    }

    fn env() -> Vec<(String, String)> {
        vec![("AWS_REGION".into(), "us-east-1".into())]
    }

    /// kclpy's samples/sample.properties, as shipped (comments left out).
    const KCLPY_SAMPLE: &str = "\
executableName = sample_kclpy_app.py
streamArn = arn:aws:kinesis:us-east-5:000000000000:stream/kclpysample
streamName = kclpysample
applicationName = PythonKCLSample
AwsCredentialsProvider = DefaultCredentialsProvider
processingLanguage = python/3.8
initialPositionInStream = TRIM_HORIZON
regionName = us-east-1
";

    #[test]
    fn the_kclpy_sample_runs_as_is() {
        let s = from_properties(&props(KCLPY_SAMPLE), env()).unwrap();
        assert_eq!(s.command, vec!["sample_kclpy_app.py"]);
        assert_eq!(s.consumer.shared.stream_name, "kclpysample");
        assert_eq!(s.consumer.lease.application_name, "PythonKCLSample");
        assert_eq!(
            s.consumer.mode,
            kinesis_common::config::ConsumerMode::Leased
        );
        assert_eq!(
            s.consumer.retrieval,
            kinesis_common::config::Retrieval::FanOut
        );
        assert_eq!(s.region.as_deref(), Some("us-east-1"));
        assert!(s.unimplemented.is_empty(), "{:?}", s.unimplemented);
        assert!(!s.empty_batches);
    }

    #[test]
    fn keys_map_to_the_consumers_settings() {
        let text = "\
executableName = python3  app.py --verbose
streamName = orders
applicationName = orders-app
workerId = w1
failoverTimeMillis = 20000
maxRecords = 500
idleTimeBetweenReadsInMillis = 700
shardSyncIntervalMillis = 30000
initialPositionInStreamExtended = 1700000000
timeoutInSeconds = 30
callProcessRecordsEvenForEmptyRecordList = TRUE
kinesisEndpoint = http://localhost:4566
dynamoDBEndpoint = http://localhost:4567
";
        let s = from_properties(&props(text), env()).unwrap();
        assert_eq!(s.command, vec!["python3", "app.py", "--verbose"]);
        assert_eq!(s.consumer.lease.worker_id.as_deref(), Some("w1"));
        assert_eq!(s.consumer.lease.failover, Duration::from_millis(20_000));
        assert_eq!(s.consumer.max_records, 500);
        assert_eq!(s.consumer.poll_interval, Duration::from_millis(700));
        assert_eq!(
            s.consumer.shard_sync_interval,
            Duration::from_millis(30_000)
        );
        assert_eq!(
            s.consumer.initial_position,
            kinesis_common::config::InitialPosition::AtTimestamp(
                chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap()
            )
        );
        // Polling keys set, no retrievalMode: polling, as the Java daemon decides.
        assert_eq!(
            s.consumer.retrieval,
            kinesis_common::config::Retrieval::Polling
        );
        assert_eq!(s.timeout, Some(Duration::from_secs(30)));
        assert!(s.empty_batches);
        assert_eq!(s.kinesis_endpoint.as_deref(), Some("http://localhost:4566"));
        assert_eq!(
            s.dynamodb_endpoint.as_deref(),
            Some("http://localhost:4567")
        );
        let fanout = format!("{text}retrievalMode = fanout\n");
        let s = from_properties(&props(&fanout), env()).unwrap();
        assert_eq!(
            s.consumer.retrieval,
            kinesis_common::config::Retrieval::FanOut
        );
    }

    #[test]
    fn unimplemented_keys_are_named_once_each() {
        let text = format!(
            "{KCLPY_SAMPLE}metricsLevel = NONE\nAWSCredentialsProvider = ProfileCredentialsProvider|dev\ncallProcessRecordsEvenForEmptyRecordList = true\nmaxActiveThreads = 4\n"
        );
        let s = from_properties(&props(&text), env()).unwrap();
        let mut keys: Vec<&str> = s.unimplemented.iter().map(|(k, _)| k.as_str()).collect();
        keys.sort();
        assert_eq!(
            keys,
            vec!["AWSCredentialsProvider", "maxActiveThreads", "metricsLevel"]
        );
    }

    #[test]
    fn a_bad_value_names_its_key() {
        for (line, key) in [
            ("failoverTimeMillis = soon", "failoverTimeMillis"),
            ("maxRecords = 20000", "maxRecords"),
            (
                "initialPositionInStream = AT_SEQUENCE",
                "initialPositionInStream",
            ),
            ("timeoutInSeconds = 0", "timeoutInSeconds"),
            ("retrievalMode = push", "retrievalMode"),
            ("streamArn = orders", "streamArn"),
            ("kinesisEndpoint = localhost:4566", "kinesisEndpoint"),
            (
                "callProcessRecordsEvenForEmptyRecordList = maybe",
                "callProcessRecordsEvenForEmptyRecordList",
            ),
            ("applicationName = x", "applicationName"),
        ] {
            let err =
                from_properties(&props(&format!("{KCLPY_SAMPLE}{line}\n")), env()).unwrap_err();
            assert!(
                matches!(&err, PropertiesError::Invalid { key: k, .. } if k == key),
                "{line}: {err}"
            );
            assert!(err.to_string().contains(key), "{err}");
        }
        let err =
            from_properties(&props("streamName = s\napplicationName = app\n"), env()).unwrap_err();
        assert_eq!(err.to_string().split(' ').nth(1), Some("executableName"));
        let err = from_properties(&props("executableName = x\napplicationName = app\n"), env())
            .unwrap_err();
        assert!(err.to_string().contains("streamName"), "{err}");
    }
}
