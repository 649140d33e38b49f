//! The body of a `PutRecords` call, written in one pass into a buffer of its final size and
//! handed to the SDK in place of the one it would serialize.
//!
//! The SDK's serializer copies each entry's data (a `Blob` owns its bytes), base64-encodes it
//! into a string of its own, appends that to a body string grown by doubling, and so touches
//! each byte of a 5 MiB call four or five times, in fresh pages each call. Here the data is
//! base64-encoded straight from the entries into a buffer reserved at the body's size, and
//! the buffer goes back to a [`BodyPool`] when the SDK drops the request, for the next call.
//! An aggregate's MD5 digest is written here too: the call's aggregates are hashed together
//! ([`kpl::digests_into`], in SIMD lanes where the CPU has them).
//! The SDK still does everything else: endpoint, credentials, signing (over this body),
//! retries of its own, and reading the answer.

use std::sync::{Arc, Mutex};

use aws_sdk_kinesis::config::http::HttpRequest;
use bytes::Bytes;
use kinesis_common::kpl::{self, DIGEST_LEN};

use super::entry::Entry;

/// Buffers of finished calls, kept for the next ones: at most one per call in flight.
#[derive(Clone)]
pub(super) struct BodyPool {
    free: Arc<Mutex<Vec<Vec<u8>>>>,
    keep: usize,
}

impl BodyPool {
    pub(super) fn new(keep: usize) -> Self {
        Self {
            free: Arc::new(Mutex::new(Vec::new())),
            keep,
        }
    }

    fn take(&self) -> Vec<u8> {
        self.free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_default()
    }

    fn give_back(&self, mut buf: Vec<u8>) {
        buf.clear();
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        if free.len() < self.keep {
            free.push(buf);
        }
    }

    /// The JSON body of a `PutRecords` call to `stream` carrying `entries` in their order, as
    /// the SDK would write it (members in another order: JSON objects have none).
    pub(super) fn body(&self, stream: &str, entries: &[Entry]) -> Bytes {
        let mut buf = self.take();
        write_body(stream, entries, &mut buf);
        Bytes::from_owner(Pooled {
            buf,
            pool: self.clone(),
        })
    }
}

/// A body's buffer, returned to its pool when the last `Bytes` of it is dropped.
struct Pooled {
    buf: Vec<u8>,
    pool: BodyPool,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.buf));
    }
}

const DATA: &[u8] = b"{\"Data\":\"";
const PARTITION_KEY: &[u8] = b"\",\"PartitionKey\":";
const EXPLICIT_HASH_KEY: &[u8] = b",\"ExplicitHashKey\":";

fn write_body(stream: &str, entries: &[Entry], buf: &mut Vec<u8>) {
    let b64 = base64_simd::STANDARD;
    // The aggregates' digests, all hashed at once, in entry order.
    let undigested: Vec<&[u8]> = entries
        .iter()
        .filter(|e| e.aggregated)
        .map(|e| &e.data[..])
        .collect();
    let mut digests = vec![[0; DIGEST_LEN]; undigested.len()];
    kpl::digests_into(&undigested, &mut digests);
    let mut digests = digests.iter();
    // Escaping may lengthen a key; then the buffer grows once, rarely.
    let size = 32
        + stream.len()
        + entries
            .iter()
            .map(|e| {
                DATA.len()
                    + b64.encoded_length(e.data_len())
                    + PARTITION_KEY.len()
                    + e.partition_key.len()
                    + 4
                    + e.explicit_hash_key
                        .as_ref()
                        .map_or(0, |k| EXPLICIT_HASH_KEY.len() + k.len() + 2)
            })
            .sum::<usize>();
    buf.reserve(size);
    buf.extend_from_slice(b"{\"StreamName\":");
    json_string(stream, buf);
    buf.extend_from_slice(b",\"Records\":[");
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        buf.extend_from_slice(DATA);
        match e.aggregated.then(|| digests.next()).flatten() {
            Some(digest) => {
                // Base64 of data and digest as one: the data up to a multiple of 3 bytes, then
                // its rest with the digest.
                let cut = e.data.len() - e.data.len() % 3;
                b64.encode_append(&e.data[..cut], buf);
                let mut tail = [0u8; 2 + DIGEST_LEN];
                let rest = e.data.len() - cut;
                tail[..rest].copy_from_slice(&e.data[cut..]);
                tail[rest..rest + DIGEST_LEN].copy_from_slice(digest);
                b64.encode_append(&tail[..rest + DIGEST_LEN], buf);
            }
            None => b64.encode_append(&e.data, buf),
        }
        buf.extend_from_slice(PARTITION_KEY);
        json_string(&e.partition_key, buf);
        if let Some(key) = &e.explicit_hash_key {
            buf.extend_from_slice(EXPLICIT_HASH_KEY);
            json_string(key, buf);
        }
        buf.push(b'}');
    }
    buf.extend_from_slice(b"]}");
}

/// `s` as a JSON string, escaped as JSON requires.
fn json_string(s: &str, buf: &mut Vec<u8>) {
    // Writing to a Vec cannot fail, and a str always serializes.
    serde_json::to_writer(&mut *buf, s).expect("a str serializes to a Vec");
}

/// Puts `body` in place of the request's (before signing, on every attempt).
pub(super) fn replace_body(request: &mut HttpRequest, body: &Bytes) {
    *request.body_mut() = body.clone().into();
    request
        .headers_mut()
        .insert("Content-Length", body.len().to_string());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batching::entry::test_pending;
    use crate::batching::record::ProducerRecord;
    use serde_json::{json, Value};

    fn entry(data: &[u8], key: &str, hash: Option<&str>) -> Entry {
        let mut record = ProducerRecord::new(key, data.to_vec());
        record.explicit_hash_key = hash.map(str::to_string);
        let later = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        Entry::single(test_pending(record, later).0, None)
    }

    #[test]
    fn the_body_is_the_put_records_json_with_each_entry_in_order() {
        let entries = [
            entry(b"hello", "k\"1\\\n\u{1}é", None),
            entry(&[0, 255, 1, 2], "k2", Some("12345")),
            entry(b"", "k3", None),
        ];
        let pool = BodyPool::new(1);
        let body = pool.body("demo \"stream\"", &entries);
        let parsed: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            parsed,
            json!({
                "StreamName": "demo \"stream\"",
                "Records": [
                    {"Data": "aGVsbG8=", "PartitionKey": "k\"1\\\n\u{1}é"},
                    {"Data": "AP8BAg==", "PartitionKey": "k2", "ExplicitHashKey": "12345"},
                    {"Data": "", "PartitionKey": "k3"},
                ]
            })
        );
    }

    #[test]
    fn each_aggregate_goes_out_with_its_digest_whatever_its_length() {
        use crate::batching::aggregation::Aggregates;
        let later = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut entries = vec![entry(b"plain", "p", None)];
        // Members of 1 to 3 bytes: undigested lengths of every remainder modulo 3.
        for len in 1..=6 {
            let mut aggregates = Aggregates::new(1 << 20);
            for key in ["a", "b"] {
                let record = ProducerRecord::new(key, vec![len as u8; len]);
                assert!(aggregates
                    .add("s".into(), test_pending(record, later).0)
                    .is_none());
            }
            entries.extend(aggregates.seal_all());
        }
        let lengths: Vec<usize> = entries.iter().map(|e| e.data.len() % 3).collect();
        assert!(
            [0, 1, 2].iter().all(|r| lengths[1..].contains(r)),
            "{lengths:?}"
        );
        let body = BodyPool::new(1).body("s", &entries);
        let parsed: Value = serde_json::from_slice(&body).unwrap();
        let records = parsed["Records"].as_array().unwrap();
        assert_eq!(records.len(), entries.len());
        let b64 = base64_simd::STANDARD;
        assert_eq!(
            b64.decode_to_vec(records[0]["Data"].as_str().unwrap())
                .unwrap(),
            b"plain"
        );
        for (len, record) in (1..=6).zip(&records[1..]) {
            let data = b64.decode_to_vec(record["Data"].as_str().unwrap()).unwrap();
            let aggregate = kpl::deaggregate(&data).expect("a whole aggregate, digest included");
            let members: Vec<(&str, &[u8])> = aggregate
                .iter()
                .map(|m| (m.partition_key, m.data))
                .collect();
            let expected = vec![len as u8; len];
            assert_eq!(members, [("a", &expected[..]), ("b", &expected[..])]);
        }
    }

    #[test]
    fn a_buffer_goes_back_to_the_pool_when_the_body_is_dropped_and_is_reused() {
        let entries = [entry(&[7; 1000], "k", None)];
        let pool = BodyPool::new(1);
        let first = pool.body("s", &entries);
        let (ptr, len) = (first.as_ptr(), first.len());
        let clone = first.clone();
        drop(first);
        assert!(
            pool.free.lock().unwrap().is_empty(),
            "a clone still holds it"
        );
        drop(clone);
        assert_eq!(pool.free.lock().unwrap().len(), 1);
        let second = pool.body("s", &entries);
        assert_eq!((second.as_ptr(), second.len()), (ptr, len));
        // Two bodies at once with room kept for one: the second buffer is not kept.
        let third = pool.body("s", &entries);
        drop((second, third));
        assert_eq!(pool.free.lock().unwrap().len(), 1);
    }
}
