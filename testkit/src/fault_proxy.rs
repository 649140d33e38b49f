//! A fault-injecting HTTP proxy for tests: it sits between a service under test and a real
//! emulator and, switched at run time, provokes the failures the emulators never produce —
//! dropped connections, calls that hang, streaming answers that stop delivering, throttling and
//! other error answers, `PutRecords` calls that fail some of their entries individually, and
//! `PutRecords` answers that leave entries unconfirmed (blank, or missing from a short answer).
//!
//! It runs on its own thread with its own runtime, so it keeps serving while a test thread
//! blocks (waiting for a child process, say). It speaks HTTP/1.1, which is what the AWS SDK
//! uses against a plain `http://` endpoint. Requests are told apart by their `X-Amz-Target`
//! operation (`Kinesis_20131202.PutRecords` is `PutRecords`, `DynamoDB_20120810.UpdateItem` is
//! `UpdateItem`).
//!
//! A partial `PutRecords` failure is made the way Kinesis makes one: the chosen entries are
//! not forwarded at all (so nothing reported failed is stored), the surviving ones are sent on
//! as one `PutRecords`, and the answer is merged back in the original order with the chosen
//! entries carrying an `ErrorCode`. Unconfirmed entries are made the same way, not stored, but
//! answered with an empty entry (neither `ErrorCode` nor `SequenceNumber`) or left out of the
//! answer, and not counted in `FailedRecordCount`: an answer that lies by omission.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::Rng;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ProxyBody = BoxBody<Bytes, BoxError>;

/// What a matching rule does to a request.
#[derive(Debug, Clone, PartialEq)]
enum Action {
    /// Close the connection without an answer (and, for a rule on every operation, close every
    /// open connection when the rule is set, and drop new ones as soon as they are accepted).
    Cut,
    /// Read the request and never answer.
    Hang,
    /// Forward the request, pass the answer's status and headers on, then never another byte
    /// of its body (a streaming answer, such as a `SubscribeToShard` event stream, that stops
    /// delivering while the connection stays open).
    Stall,
    /// Forward the request, then hold the whole answer this long before passing it on (the
    /// call is applied; its answer is late).
    Delay(std::time::Duration),
    /// Answer with this status; with an AWS error code the body is the JSON error the AWS
    /// JSON protocols use, without one it is a plain page, as from a load balancer.
    Error { status: u16, code: Option<String> },
    /// `PutRecords` only: keep each entry from the emulator with probability `fraction`, and
    /// answer it as `answer` says.
    Entries { answer: EntryAnswer, fraction: f64 },
}

/// How an entry kept from the emulator is answered.
#[derive(Debug, Clone, PartialEq)]
enum EntryAnswer {
    /// Failed with this error code (a partial failure, as Kinesis reports one).
    Error(String),
    /// An entry with neither an error code nor a sequence number.
    Blank,
    /// No entry at all: the answer is shorter than the request.
    Missing,
}

/// One fault: what to do, to which operations, how often. Build with the constructors, then
/// narrow with [`Rule::only`], [`Rule::fraction`] and [`Rule::times`].
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    action: Action,
    operations: Option<Vec<String>>,
    fraction: f64,
    times: Option<u64>,
}

impl Rule {
    fn new(action: Action) -> Self {
        Self {
            action,
            operations: None,
            fraction: 1.0,
            times: None,
        }
    }

    /// Drops connections: every open one when set (if not narrowed to operations), new ones at
    /// once, and matching requests without an answer.
    pub fn cut() -> Self {
        Self::new(Action::Cut)
    }

    /// Accepts matching requests and never answers them (a half-open peer).
    pub fn hang() -> Self {
        Self::new(Action::Hang)
    }

    /// Forwards matching requests and passes on the head of the answer, then holds its body:
    /// the connection stays open and delivers nothing more (an event stream gone quiet).
    pub fn stall() -> Self {
        Self::new(Action::Stall)
    }

    /// Forwards matching requests at once and holds their answers for `delay`: the emulator
    /// has applied the call, the caller hears of it late.
    pub fn delay(delay: std::time::Duration) -> Self {
        Self::new(Action::Delay(delay))
    }

    /// Answers matching requests with `status`, and the AWS error `code` if given (otherwise a
    /// JSON body with only a message and no AWS error type, as a gateway or load balancer
    /// sends).
    pub fn error(status: u16, code: Option<&str>) -> Self {
        Self::new(Action::Error {
            status,
            code: code.map(str::to_string),
        })
    }

    /// Kinesis and DynamoDB throttling: 400 `ProvisionedThroughputExceededException`.
    pub fn throttle() -> Self {
        Self::error(400, Some("ProvisionedThroughputExceededException"))
    }

    /// Fails entries of `PutRecords` calls individually with `code` (each with the rule's
    /// fraction as probability); only the other entries reach the emulator.
    pub fn fail_entries(code: &str) -> Self {
        Self::entries(EntryAnswer::Error(code.to_string()))
    }

    /// Keeps entries of `PutRecords` calls from the emulator (each with the rule's fraction as
    /// probability) and answers each with an empty entry, neither error code nor sequence
    /// number, in a call that reports no failure.
    pub fn blank_entries() -> Self {
        Self::entries(EntryAnswer::Blank)
    }

    /// Keeps entries of `PutRecords` calls from the emulator (each with the rule's fraction as
    /// probability) and leaves them out of the answer, which is then shorter than the request
    /// and reports no failure.
    pub fn unanswered_entries() -> Self {
        Self::entries(EntryAnswer::Missing)
    }

    fn entries(answer: EntryAnswer) -> Self {
        Self::new(Action::Entries {
            answer,
            fraction: 1.0,
        })
        .only(&["PutRecords"])
    }

    /// Applies only to these operations (`PutRecords`, `GetRecords`, `UpdateItem`, ...).
    pub fn only(mut self, operations: &[&str]) -> Self {
        self.operations = Some(operations.iter().map(|s| s.to_string()).collect());
        self
    }

    /// Applies to this fraction of matching requests (of entries, for the entry rules).
    pub fn fraction(mut self, fraction: f64) -> Self {
        let fraction = fraction.clamp(0.0, 1.0);
        match &mut self.action {
            // Drawn per entry, so every PutRecords call is a candidate.
            Action::Entries { fraction: f, .. } => *f = fraction,
            _ => self.fraction = fraction,
        }
        self
    }

    /// Applies to the first `n` matching requests only.
    pub fn times(mut self, n: u64) -> Self {
        self.times = Some(n);
        self
    }

    fn matches_operation(&self, op: &str) -> bool {
        self.operations
            .as_ref()
            .is_none_or(|ops| ops.iter().any(|o| o == op))
    }

    fn cuts_everything(&self) -> bool {
        self.action == Action::Cut && self.operations.is_none()
    }
}

#[derive(Default)]
struct State {
    rules: Vec<Rule>,
    requests: HashMap<String, usize>,
    faults: HashMap<String, usize>,
}

impl State {
    /// The action for one request, counting it and using up a `times` budget.
    fn decide(&mut self, op: &str) -> Option<Action> {
        *self.requests.entry(op.to_string()).or_default() += 1;
        let mut rng = rand::thread_rng();
        for rule in &mut self.rules {
            if !rule.matches_operation(op) || rule.times == Some(0) {
                continue;
            }
            if rng.gen::<f64>() >= rule.fraction {
                continue;
            }
            if let Some(n) = rule.times.as_mut() {
                *n -= 1;
            }
            *self.faults.entry(op.to_string()).or_default() += 1;
            return Some(rule.action.clone());
        }
        None
    }
}

/// A running proxy; stops (and closes every connection) on drop.
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    cut_tx: watch::Sender<u64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts a proxy on a free local port forwarding to `upstream` (`http://host:port`).
    pub fn start(upstream: &str) -> Self {
        let upstream: hyper::Uri = upstream.parse().expect("upstream is an http:// URL");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("local address");
        let state = Arc::new(Mutex::new(State::default()));
        let (cut_tx, cut_rx) = watch::channel(0u64);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let shared = Shared {
            upstream,
            state: state.clone(),
            client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
        };
        let thread = std::thread::Builder::new()
            .name("fault-proxy".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("proxy runtime");
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(listener).expect("tokio listener");
                    tokio::select! {
                        _ = accept_loop(listener, shared, cut_rx) => {}
                        _ = stop_rx => {}
                    }
                });
                // Dropping the runtime ends every connection task, hung ones included.
                runtime.shutdown_background();
            })
            .expect("spawn proxy thread");
        Self {
            addr,
            state,
            cut_tx,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// The endpoint to give the service under test instead of the emulator's.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Replaces the active rules; for each request the first matching rule applies.
    pub fn set(&self, rules: Vec<Rule>) {
        let cut_all = rules.iter().any(Rule::cuts_everything);
        if let Ok(mut state) = self.state.lock() {
            state.rules = rules;
        }
        if cut_all {
            self.cut_tx.send_modify(|generation| *generation += 1);
        }
    }

    /// Removes every rule: requests pass through again.
    pub fn clear(&self) {
        self.set(Vec::new());
    }

    /// Requests seen so far for `operation` (faulted or not).
    pub fn requests(&self, operation: &str) -> usize {
        self.state
            .lock()
            .map(|s| s.requests.get(operation).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Requests for `operation` a rule applied to so far.
    pub fn faults(&self, operation: &str) -> usize {
        self.state
            .lock()
            .map(|s| s.faults.get(operation).copied().unwrap_or(0))
            .unwrap_or(0)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[derive(Clone)]
struct Shared {
    upstream: hyper::Uri,
    state: Arc<Mutex<State>>,
    client: Client<HttpConnector, ProxyBody>,
}

impl Shared {
    fn cutting_everything(&self) -> bool {
        self.state
            .lock()
            .map(|s| s.rules.iter().any(Rule::cuts_everything))
            .unwrap_or(false)
    }
}

async fn accept_loop(listener: TcpListener, shared: Shared, cut_rx: watch::Receiver<u64>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        if shared.cutting_everything() {
            drop(stream);
            continue;
        }
        let shared = shared.clone();
        let mut cut_rx = cut_rx.clone();
        cut_rx.mark_unchanged();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(shared.clone(), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                // A cut closes the connection however far its request got.
                _ = cut_rx.changed() => {}
            }
        });
    }
}

/// Why the proxy closed a connection without answering.
#[derive(Debug, thiserror::Error)]
#[error("connection cut by the fault proxy")]
struct Cut;

async fn handle(shared: Shared, req: Request<Incoming>) -> Result<Response<ProxyBody>, BoxError> {
    let op = req
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.rsplit('.').next())
        .unwrap_or("")
        .to_string();
    let action = shared.state.lock().ok().and_then(|mut s| s.decide(&op));
    match action {
        None => forward(&shared, req).await,
        Some(Action::Cut) => Err(Box::new(Cut)),
        Some(Action::Hang) => {
            // Take the whole request, as a peer that accepted it would, then say nothing.
            let _ = req.into_body().collect().await;
            std::future::pending::<()>().await;
            unreachable!()
        }
        Some(Action::Stall) => {
            let (head, upstream) = forward(&shared, req).await?.into_parts();
            Ok(Response::from_parts(head, Stalled(upstream).boxed()))
        }
        Some(Action::Delay(delay)) => {
            let answer = forward(&shared, req).await?;
            tokio::time::sleep(delay).await;
            Ok(answer)
        }
        Some(Action::Error { status, code }) => Ok(error_response(status, code.as_deref())),
        Some(Action::Entries { answer, fraction }) => {
            fail_entries(&shared, req, &answer, fraction).await
        }
    }
}

/// A body that never yields a frame; it keeps the upstream body (unread) so the emulator's
/// side of the stream stays open too.
struct Stalled(#[allow(dead_code)] ProxyBody);

impl hyper::body::Body for Stalled {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        std::task::Poll::Pending
    }
}

fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

fn error_response(status: u16, code: Option<&str>) -> Response<ProxyBody> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let builder = Response::builder().status(status);
    let response = match code {
        Some(code) => builder
            .header("content-type", "application/x-amz-json-1.1")
            .header("x-amzn-errortype", code)
            .body(full(
                json!({"__type": code, "message": format!("{code} injected by the fault proxy")})
                    .to_string(),
            )),
        // What API gateways and load balancers commonly send: JSON with a message and no
        // AWS error type, so the SDK sees a service error without a code.
        None => {
            let reason = status.canonical_reason().unwrap_or("");
            builder
                .header("content-type", "application/json")
                .body(full(
                    json!({"message": format!("{} {reason}", status.as_u16())}).to_string(),
                ))
        }
    };
    response.unwrap_or_else(|_| Response::new(full("")))
}

/// The request sent on to the emulator: same method, path, headers and body.
fn upstream_request(
    shared: &Shared,
    parts: hyper::http::request::Parts,
    body: ProxyBody,
) -> Result<Request<ProxyBody>, BoxError> {
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let uri: hyper::Uri = format!(
        "{}://{}{}",
        shared.upstream.scheme_str().unwrap_or("http"),
        shared
            .upstream
            .authority()
            .map(|a| a.as_str())
            .unwrap_or(""),
        path
    )
    .parse()?;
    let mut request = Request::from_parts(parts, body);
    *request.uri_mut() = uri;
    Ok(request)
}

async fn forward(shared: &Shared, req: Request<Incoming>) -> Result<Response<ProxyBody>, BoxError> {
    let (parts, body) = req.into_parts();
    let body = body.map_err(|e| Box::new(e) as BoxError).boxed();
    let request = upstream_request(shared, parts, body)?;
    let response = shared.client.request(request).await?;
    Ok(response.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed()))
}

async fn fail_entries(
    shared: &Shared,
    req: Request<Incoming>,
    answer: &EntryAnswer,
    fraction: f64,
) -> Result<Response<ProxyBody>, BoxError> {
    let (mut parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let mut call: Value = serde_json::from_slice(&body)?;
    let entries = call["Records"].as_array().cloned().unwrap_or_default();
    let failed: Vec<bool> = {
        let mut rng = rand::thread_rng();
        entries
            .iter()
            .map(|_| rng.gen::<f64>() < fraction)
            .collect()
    };
    let survivors: Vec<Value> = entries
        .iter()
        .zip(&failed)
        .filter(|(_, f)| !**f)
        .map(|(e, _)| e.clone())
        .collect();
    let mut answers = Vec::new();
    let mut failed_count = match answer {
        EntryAnswer::Error(_) => failed.iter().filter(|f| **f).count() as u64,
        EntryAnswer::Blank | EntryAnswer::Missing => 0,
    };
    let mut encryption = Value::Null;
    if !survivors.is_empty() {
        call["Records"] = Value::Array(survivors);
        let new_body = Bytes::from(serde_json::to_vec(&call)?);
        parts.headers.remove(hyper::header::CONTENT_LENGTH);
        let request = upstream_request(shared, parts, full(new_body))?;
        let response = shared.client.request(request).await?;
        let (head, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        if !head.status.is_success() {
            // The whole call failed upstream: pass that answer on as it is.
            return Ok(Response::from_parts(head, full(body)));
        }
        let answer: Value = serde_json::from_slice(&body)?;
        failed_count += answer["FailedRecordCount"].as_u64().unwrap_or(0);
        encryption = answer["EncryptionType"].clone();
        answers = answer["Records"].as_array().cloned().unwrap_or_default();
    }
    let mut upstream = answers.into_iter();
    let records: Vec<Value> = failed
        .iter()
        .filter_map(|f| match (f, answer) {
            (false, _) => Some(upstream.next().unwrap_or(Value::Null)),
            (true, EntryAnswer::Error(code)) => Some(
                json!({"ErrorCode": code, "ErrorMessage": format!("{code} injected by the fault proxy")}),
            ),
            (true, EntryAnswer::Blank) => Some(json!({})),
            (true, EntryAnswer::Missing) => None,
        })
        .collect();
    let mut merged = json!({"FailedRecordCount": failed_count, "Records": records});
    if !encryption.is_null() {
        merged["EncryptionType"] = encryption;
    }
    Ok(Response::builder()
        .status(200)
        .header("content-type", "application/x-amz-json-1.1")
        .body(full(merged.to_string()))?)
}
