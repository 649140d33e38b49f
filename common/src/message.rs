//! `DataMessage`, the JSON record the producer writes and the consumer reads.
//!
//! The PascalCase field names are what the original .NET demo puts on the wire, so Rust and
//! .NET services can share a stream. `CreatedOn` is written as RFC 3339 UTC with millisecond
//! precision; any RFC 3339 time is accepted when reading (.NET writes seven fraction digits).
//! Unknown fields are ignored when decoding.

use std::cell::Cell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Datelike, NaiveDate, NaiveTime, SecondsFormat, Timelike, Utc};
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
        Self {
            id: Uuid::new_v4(),
            created_on: now_millis(),
            source: None,
            message: None,
        }
    }

    /// The same message as a new one: a new random Id, created now; `Source` and `Message`
    /// kept (a producer reuses one message rather than copying its texts into each).
    pub fn renew(&mut self) {
        self.id = Uuid::new_v4();
        self.created_on = now_millis();
    }

    /// The message as JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising this struct cannot fail: every field is a plain string.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Appends the JSON to `out` (to encode into a buffer that is reused): the bytes
    /// [`DataMessage::to_json`] gives, written field by field without serde's machinery or an
    /// allocation (the producer service writes one message per record it hands over).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"Id\":\"");
        let mut id = [0u8; uuid::fmt::Hyphenated::LENGTH];
        out.extend_from_slice(self.id.hyphenated().encode_lower(&mut id).as_bytes());
        out.extend_from_slice(b"\",\"CreatedOn\":\"");
        write_millis_utc(&self.created_on, out);
        out.push(b'"');
        for (name, value) in [("Source", &self.source), ("Message", &self.message)] {
            if let Some(value) = value {
                out.extend_from_slice(b",\"");
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(b"\":");
                // A string's JSON (quoted, escaped) cannot fail to be written to a Vec.
                let _ = serde_json::to_writer(&mut *out, value);
            }
        }
        out.push(b'}');
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

/// `t` as RFC 3339 UTC with milliseconds (`2026-11-23T10:00:00.123Z`), as
/// `to_rfc3339_opts(SecondsFormat::Millis, true)` writes it; that formatting itself for what is
/// not a plain four-digit year and second (a leap second).
fn write_millis_utc(t: &DateTime<Utc>, out: &mut Vec<u8>) {
    thread_local! {
        /// The last second written and its `YYYY-MM-DDTHH:MM:SS`: messages made one after the
        /// other mostly share it, and working out the calendar date is the costly part.
        static LAST_SECOND: std::cell::Cell<(i64, [u8; 19])> = const { std::cell::Cell::new((i64::MIN, [0; 19])) };
    }
    let millis = t.timestamp_subsec_millis();
    let (second, prefix) = LAST_SECOND.get();
    if second == t.timestamp() && millis < 1000 {
        out.extend_from_slice(&prefix);
        out.push(b'.');
        out.push(b'0' + (millis / 100) as u8);
        out.extend_from_slice(&[b'0' + (millis / 10 % 10) as u8, b'0' + (millis % 10) as u8]);
        out.push(b'Z');
        return;
    }
    let start = out.len();
    write_millis_utc_fully(t, out);
    // Kept only when written as `YYYY-MM-DDTHH:MM:SS.mmmZ` (not a leap second, a year in 0-9999).
    if out.len() - start == 24 && millis < 1000 {
        let mut prefix = [0; 19];
        prefix.copy_from_slice(&out[start..start + 19]);
        LAST_SECOND.set((t.timestamp(), prefix));
    }
}

fn write_millis_utc_fully(t: &DateTime<Utc>, out: &mut Vec<u8>) {
    // The date and time once: each accessor of a `DateTime` converts it to local time again.
    let (date, time) = (t.date_naive(), t.time());
    let millis = t.timestamp_subsec_millis();
    let year = date.year();
    if !(0..=9999).contains(&year) || millis >= 1000 {
        out.extend_from_slice(t.to_rfc3339_opts(SecondsFormat::Millis, true).as_bytes());
        return;
    }
    let two = |out: &mut Vec<u8>, n: u32| {
        out.extend_from_slice(&[b'0' + (n / 10) as u8, b'0' + (n % 10) as u8])
    };
    let year = year as u32;
    two(out, year / 100);
    two(out, year % 100);
    out.push(b'-');
    two(out, date.month());
    out.push(b'-');
    two(out, date.day());
    out.push(b'T');
    two(out, time.hour());
    out.push(b':');
    two(out, time.minute());
    out.push(b':');
    two(out, time.second());
    out.push(b'.');
    out.push(b'0' + (millis / 100) as u8);
    two(out, millis % 100);
    out.push(b'Z');
}

/// Now, truncated to milliseconds (as written).
fn now_millis() -> DateTime<Utc> {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(since_epoch) => millis_since_epoch(since_epoch),
        // A clock set before 1970.
        Err(_) => {
            let now = Utc::now();
            DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now)
        }
    }
}

/// The time `since_epoch` after 1970, to the millisecond. Working out the calendar date is
/// the costly part, and the messages made one after the other share it: the last day's date
/// is kept.
fn millis_since_epoch(since_epoch: Duration) -> DateTime<Utc> {
    const DAY: u64 = 86_400;
    thread_local! {
        static LAST_DAY: Cell<Option<(u64, NaiveDate)>> = const { Cell::new(None) };
    }
    let (secs, millis) = (since_epoch.as_secs(), since_epoch.subsec_millis());
    let day = secs / DAY;
    let date = match LAST_DAY.get() {
        Some((last, date)) if last == day => Some(date),
        _ => {
            let date = i64::try_from(day * DAY)
                .ok()
                .and_then(|s| DateTime::from_timestamp(s, 0))
                .map(|t| t.date_naive());
            if let Some(date) = date {
                LAST_DAY.set(Some((day, date)));
            }
            date
        }
    };
    let time =
        NaiveTime::from_num_seconds_from_midnight_opt((secs % DAY) as u32, millis * 1_000_000);
    match (date, time) {
        (Some(date), Some(time)) => DateTime::from_naive_utc_and_offset(date.and_time(time), Utc),
        // Beyond chrono's range: its latest time.
        _ => DateTime::<Utc>::MAX_UTC,
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
    fn a_time_since_1970_is_the_same_millisecond_across_days_and_years() {
        let day = 86_400u64;
        // Around midnight, month ends, a leap day, 2038 and beyond, back and forth so that
        // the kept day is used and replaced.
        let secs = [
            0,
            1,
            day - 1,
            day,
            951_782_399,
            951_782_400,
            951_868_800,
            2_147_483_648,
            1_764_547_199,
            1_764_547_200,
            1_764_547_199,
            253_402_300_799,
        ];
        for (i, s) in secs.into_iter().enumerate() {
            for millis in [0u32, 7, 999] {
                let since = Duration::from_secs(s) + Duration::from_millis(u64::from(millis));
                let expected = DateTime::from_timestamp_millis(since.as_millis() as i64).unwrap();
                assert_eq!(millis_since_epoch(since), expected, "case {i}, {millis} ms");
            }
        }
        let before = Utc::now().timestamp_millis();
        let now = now_millis();
        let after = Utc::now().timestamp_millis();
        assert!((before..=after).contains(&now.timestamp_millis()));
        assert_eq!(now.timestamp_subsec_nanos() % 1_000_000, 0);
    }

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

    /// The hand-written encoder gives serde's bytes exactly: every field, escapes, and times
    /// from year 0 to beyond 9999, leap seconds included.
    #[test]
    fn write_json_writes_what_serde_writes() {
        let times = [
            "2026-11-23T10:00:00.123456Z",
            // The same second again (written from the last second's text), other millis.
            "2026-11-23T10:00:00.007Z",
            "2026-11-23T10:00:00.999Z",
            "2026-11-23T10:00:00Z",
            "0000-01-01T00:00:00Z",
            "0999-12-31T23:59:59.999Z",
            "9999-12-31T23:59:59.999999999Z",
            "2016-12-31T23:59:60.5Z",
            "1970-01-01T00:00:00.001Z",
        ];
        let mut times: Vec<DateTime<Utc>> = times
            .iter()
            .map(|t| DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&Utc))
            .collect();
        times.push(DateTime::from_timestamp(253_402_300_800, 7_000_000).unwrap()); // year 10000
        times.push(DateTime::from_timestamp(-62_167_219_201, 0).unwrap()); // year -1
        times.push(Utc::now());
        let texts = [
            None,
            Some(String::new()),
            Some("bench".to_string()),
            Some(
                "quote \" backslash \\ newline \n tab \t control \u{1} unicode é 😀 </script>"
                    .to_string(),
            ),
        ];
        let mut out = Vec::new();
        for created_on in times {
            for source in &texts {
                for message in &texts {
                    let m = DataMessage {
                        id: Uuid::new_v4(),
                        created_on,
                        source: source.clone(),
                        message: message.clone(),
                    };
                    out.clear();
                    out.extend_from_slice(b"prefix");
                    m.write_json(&mut out);
                    assert_eq!(&out[..6], b"prefix", "appends");
                    let serde = serde_json::to_vec(&m).unwrap();
                    assert_eq!(
                        String::from_utf8_lossy(&out[6..]),
                        String::from_utf8_lossy(&serde),
                        "{created_on:?}"
                    );
                }
            }
        }
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
