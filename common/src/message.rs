//! `DataMessage`, the JSON record the producer writes and the consumer reads.
//!
//! The PascalCase field names are what the original .NET demo puts on the wire, so Rust and
//! .NET services can share a stream. `CreatedOn` is written as RFC 3339 UTC with millisecond
//! precision; any RFC 3339 time is accepted when reading (.NET writes seven fraction digits).
//! Unknown fields are ignored when decoding.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// The JSON message the demo services exchange, with the .NET services' `PascalCase`
/// field names.
///
/// ```
/// use kinesis_common::message::DataMessage;
///
/// let sent = DataMessage {
///     message: Some("hello".into()),
///     ..DataMessage::new()
/// };
/// let json = sent.to_json();
/// assert!(String::from_utf8_lossy(&json).contains(r#""Message":"hello""#));
/// assert_eq!(DataMessage::from_json(&json).unwrap(), sent);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DataMessage {
    /// `Id`: unique per message.
    pub id: Uuid,
    /// `CreatedOn`: when the message was made (written in milliseconds, UTC).
    #[serde(serialize_with = "millis_utc", deserialize_with = "any_rfc3339")]
    pub created_on: DateTime<Utc>,
    /// `Source`: optional, free text (the producer's `PRODUCER_SOURCE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// `Message`: optional, free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl DataMessage {
    /// A new message with a random Id, created now (truncated to milliseconds, as written).
    pub fn new() -> Self {
        let now = Utc::now();
        let created_on = DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now);
        Self {
            id: Uuid::new_v4(),
            created_on,
            source: None,
            message: None,
        }
    }

    /// The message as JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising this struct cannot fail: every field is a plain string.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Appends the JSON to `out` (to encode into a buffer that is reused).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        // Serialising this struct cannot fail: every field is a plain string, and writing to a
        // Vec cannot fail.
        let _ = serde_json::to_writer(out, self);
    }

    /// Reads a message from JSON bytes.
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

impl Default for DataMessage {
    fn default() -> Self {
        Self::new()
    }
}

fn millis_utc<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

fn any_rfc3339<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    let s = String::deserialize(d)?;
    DateTime::parse_from_rfc3339(&s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_dotnet_field_names_and_millisecond_utc() {
        let m = DataMessage {
            id: Uuid::parse_str("0b6b8a2e-6f0e-4c89-9a59-4b1c9f1d2e3f").unwrap(),
            created_on: DateTime::parse_from_rfc3339("2026-11-23T10:00:00.123456Z")
                .unwrap()
                .with_timezone(&Utc),
            source: None,
            message: None,
        };
        let json = String::from_utf8(m.to_json()).unwrap();
        assert_eq!(
            json,
            r#"{"Id":"0b6b8a2e-6f0e-4c89-9a59-4b1c9f1d2e3f","CreatedOn":"2026-11-23T10:00:00.123Z"}"#
        );
    }

    #[test]
    fn optional_fields_round_trip() {
        let mut m = DataMessage::new();
        m.source = Some("rust-producer".into());
        m.message = Some("hello".into());
        let back = DataMessage::from_json(&m.to_json()).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn reads_what_dotnet_writes_and_ignores_unknown_fields() {
        let json = br#"{"Id":"0b6b8a2e-6f0e-4c89-9a59-4b1c9f1d2e3f","CreatedOn":"2026-11-23T10:00:00.1234567+00:00","Extra":42}"#;
        let m = DataMessage::from_json(json).unwrap();
        assert_eq!(m.created_on.timestamp_subsec_nanos(), 123_456_700);
        assert_eq!(m.source, None);
    }

    #[test]
    fn rejects_what_is_not_a_data_message() {
        assert!(DataMessage::from_json(b"not json").is_err());
        assert!(
            DataMessage::from_json(br#"{"Id":"nope","CreatedOn":"2026-11-23T10:00:00Z"}"#).is_err()
        );
        assert!(
            DataMessage::from_json(br#"{"Id":"0b6b8a2e-6f0e-4c89-9a59-4b1c9f1d2e3f"}"#).is_err()
        );
    }
}
