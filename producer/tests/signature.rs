//! Kinesis checks each call's SigV4 signature, and the signature covers the body; the
//! emulators check neither. The producer writes the `PutRecords` body itself and puts it in
//! place of the SDK's before the SDK signs (`producer/src/batching/request_body.rs`). Here the
//! signature of every call the producer sends is worked out again over the body that went out,
//! with the SDK's own signer: a body swapped after signing (an SDK that hashed the body earlier,
//! an interceptor moved to a later hook) would fail on AWS, and fails here.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_sdk_kinesis::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_kinesis::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_kinesis::error::BoxError;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use kinesis_producer::{Producer, ProducerConfig, ProducerRecord};
use serde_json::Value;
use testkit::Kind;

/// A request as it left the client, signed.
#[derive(Debug, Clone)]
struct Sent {
    method: String,
    uri: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Sent {
    fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
    }

    /// The part of the `Authorization` header after `name=`, up to the next comma.
    fn authorization(&self, name: &str) -> &str {
        let auth = self.header("authorization");
        let start = auth
            .find(&format!("{name}="))
            .unwrap_or_else(|| panic!("no {name} in {auth}"))
            + name.len()
            + 1;
        auth[start..].split(',').next().unwrap_or_default().trim()
    }
}

/// Keeps every request the client transmits, after signing (`read_before_transmit` runs after
/// the signer and every hook that may change the request).
#[derive(Debug, Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Sent>>>);

impl Intercept for Recorder {
    fn name(&self) -> &'static str {
        "signature test recorder"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let request = context.request();
        let sent = Sent {
            method: request.method().to_string(),
            uri: request.uri().to_string(),
            headers: request
                .headers()
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: request
                .body()
                .bytes()
                .ok_or("a streaming body, not one in memory")?
                .to_vec(),
        };
        self.0.lock().unwrap().push(sent);
        Ok(())
    }
}

/// The SigV4 signature of `sent` with `body` in place of its own, by the SDK's signer, over
/// the headers its `Authorization` header says were signed, at the time its `X-Amz-Date` says,
/// for the region and service of its credential scope.
fn signature(sent: &Sent, body: &[u8]) -> String {
    let signed: Vec<&str> = sent.authorization("SignedHeaders").split(';').collect();
    let headers = sent
        .headers
        .iter()
        .filter(|(n, _)| signed.contains(&n.to_ascii_lowercase().as_str()))
        .map(|(n, v)| (n.as_str(), v.as_str()));
    // Credential=<key id>/<date>/<region>/<service>/aws4_request
    let scope: Vec<&str> = sent.authorization("Credential").split('/').collect();
    let time = chrono::NaiveDateTime::parse_from_str(sent.header("x-amz-date"), "%Y%m%dT%H%M%SZ")
        .expect("X-Amz-Date")
        .and_utc();
    let identity = testkit::test_credentials().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(scope[2])
        .name(scope[3])
        .time(SystemTime::from(time))
        .settings(SigningSettings::default())
        .build()
        .expect("signing parameters")
        .into();
    let request = SignableRequest::new(&sent.method, &sent.uri, headers, SignableBody::Bytes(body))
        .expect("a signable request");
    let (_, signature) = sign(request, &params).expect("signed").into_parts();
    signature
}

async fn every_call_is_signed_over_the_body_it_sends(aggregation: bool) {
    let emu = testkit::shared(Kind::KinesisMock);
    let stream = testkit::unique_name(if aggregation { "sig-agg" } else { "sig" });
    testkit::create_stream(&emu.kinesis(), &stream, 2).await;
    let recorder = Recorder::default();
    let config = aws_sdk_kinesis::config::Builder::from(&emu.sdk_config())
        .interceptor(recorder.clone())
        .build();
    let client = aws_sdk_kinesis::Client::from_conf(config);
    let config = ProducerConfig {
        aggregation,
        ..ProducerConfig::new(&stream)
    };
    let (producer, flusher) = Producer::start(client, config).expect("valid");
    let records = 300;
    let mut receipts = Vec::new();
    for i in 0..records {
        // Keys and data with characters the body's JSON must escape.
        let record = ProducerRecord::new(format!("key \"{i}\"\\é"), format!("data {i}\n\u{1}"));
        receipts.push(producer.enqueue(record).await.expect("taken"));
    }
    for receipt in receipts {
        receipt.await.expect("acknowledged");
    }
    drop(producer);
    assert_eq!(flusher.finish(Duration::from_secs(10)).await, 0);

    let sent = recorder.0.lock().unwrap().clone();
    let calls: Vec<&Sent> = sent
        .iter()
        .filter(|s| s.header("x-amz-target").ends_with(".PutRecords"))
        .collect();
    assert!(!calls.is_empty(), "no PutRecords call was recorded");
    let mut entries = 0;
    for call in &calls {
        // The body that went out is the producer's, not the empty one the SDK serialised.
        let json: Value = serde_json::from_slice(&call.body).expect("a JSON body");
        let n = json["Records"].as_array().map_or(0, Vec::len);
        assert!(n > 0, "a PutRecords body without records went out");
        entries += n;
        assert_eq!(call.header("content-length"), call.body.len().to_string());
        assert_eq!(
            signature(call, &call.body),
            call.authorization("Signature"),
            "the signature does not cover the body sent, which begins {}",
            String::from_utf8_lossy(&call.body)
                .chars()
                .take(300)
                .collect::<String>()
        );
        // The check can fail: one byte of the body changed, and the signature differs.
        let mut changed = call.body.clone();
        let last = changed.len() - 2;
        changed[last] ^= 1;
        assert_ne!(signature(call, &changed), call.authorization("Signature"));
    }
    if aggregation {
        assert!(entries < records, "{entries} entries for {records} records");
    } else {
        assert_eq!(entries, records);
    }
}

#[tokio::test]
async fn every_put_records_call_is_signed_over_the_body_it_sends() {
    every_call_is_signed_over_the_body_it_sends(false).await;
}

#[tokio::test]
async fn every_aggregated_put_records_call_is_signed_over_the_body_it_sends() {
    every_call_is_signed_over_the_body_it_sends(true).await;
}
