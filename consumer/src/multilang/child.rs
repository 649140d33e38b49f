//! The record processor of `consumer multilang`: one child process per lease held, driven
//! over its standard input and output by the MultiLangDaemon protocol ([`super::protocol`]).
//!
//! Each call of the [`RecordProcessor`] life cycle is one action: the message is written, then
//! the child's lines are read until its `status` for that action, answering every
//! `checkpoint` request on the way (with the lease's [`Checkpointer`] where the Java daemon
//! has one, `InvalidStateException` where it has none: during `initialize` and `leaseLost`).
//! Its standard error is forwarded to the log line by line, with the shard id.
//!
//! A child that exits, writes a line that is not a protocol message, answers `status` for
//! another action, or takes longer than `timeoutInSeconds` to write its next message is
//! killed, and the shard fails ([`ShardFailed`]): the lease is released, its checkpoints stand,
//! and the shard is taken again (here after a backoff) from the last checkpoint, so nothing
//! the child did not checkpoint is skipped. The Java daemon exits the whole JVM instead.
//!
//! The endings are bounded whatever `timeoutInSeconds` says (`shutdownRequested` within the
//! 5 seconds a stopping consumer has), and a child left behind is killed when its processor is
//! dropped.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{ChildStdin, ChildStdout};
use tokio::task::JoinHandle;

use super::protocol::{FromChild, NotProtocol, ToChild};
use crate::lease::item::{is_sequence_number, ExtendedSequenceNumber};
use crate::lease::{
    CheckpointError, Checkpointer, InitializationInput, ProcessRecordsInput, RecordProcessor,
    RecordProcessorFactory, ShardFailed,
};

/// The longest wait for the child's answer to `shutdownRequested` or `leaseLost`: within the
/// worker's shutdown budget, with room to release the leases after.
const ENDING_WAIT: Duration = Duration::from_millis(2000);

/// How long a child that was told its last action may take to exit after its input closes.
const EXIT_WAIT: Duration = Duration::from_millis(500);

/// A line longer than this is cut (standard error) or is not the protocol (standard output).
const MAX_LINE: usize = 1 << 20;

/// What every child of the application shares.
#[derive(Debug, Clone)]
pub struct ChildConfig {
    /// The program and its arguments (`executableName`).
    pub command: Vec<String>,
    /// `timeoutInSeconds`: the longest wait for each message of the child.
    pub timeout: Option<Duration>,
    /// `callProcessRecordsEvenForEmptyRecordList`.
    pub empty_batches: bool,
}

/// Makes a `ChildProcessor` for each lease taken.
#[derive(Debug, Clone)]
pub struct ChildProcessorFactory {
    config: Arc<ChildConfig>,
}

impl ChildProcessorFactory {
    /// A factory whose processors run the child process `config` describes.
    pub fn new(config: ChildConfig) -> Self {
        Self {
            config: Arc::new(config),
        }
    }
}

impl RecordProcessorFactory for ChildProcessorFactory {
    type Processor = ChildProcessor;

    fn create(&self, shard_id: &str) -> ChildProcessor {
        ChildProcessor {
            shard_id: shard_id.to_string(),
            config: self.config.clone(),
            child: None,
            pending: None,
        }
    }
}

/// One shard's child process (started by `initialize`).
pub struct ChildProcessor {
    shard_id: String,
    config: Arc<ChildConfig>,
    child: Option<Child>,
    /// The action whose status has not come yet, if any.
    pending: Option<&'static str>,
}

struct Child {
    process: tokio::process::Child,
    pid: u32,
    shard_id: String,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// Forwards standard error to the log until it closes.
    stderr: JoinHandle<()>,
}

/// Why a child was stopped: the cause in the error line.
#[derive(Debug, thiserror::Error)]
enum ChildError {
    #[error("cannot start the child process {command:?}: {error}")]
    Spawn { command: String, error: String },
    #[error("child process {pid} exited ({status}) while {action} was pending")]
    Exited {
        pid: u32,
        status: String,
        action: &'static str,
    },
    #[error("child process {pid} broke the protocol while {action} was pending: {error}")]
    NotProtocol {
        pid: u32,
        action: &'static str,
        error: NotProtocol,
    },
    #[error("child process {pid} answered status for {answered:?} while {action} was pending")]
    WrongStatus {
        pid: u32,
        answered: String,
        action: &'static str,
    },
    #[error("child process {pid} did not answer {action} within {} ms", .waited.as_millis())]
    Timeout {
        pid: u32,
        action: &'static str,
        waited: Duration,
    },
    #[error("child process {pid} did not checkpoint at the end of the shard")]
    NoShardEndCheckpoint { pid: u32 },
}

/// What checkpoint requests during an action may do.
enum Checkpoints<'a> {
    /// None (`initialize`, `leaseLost`): the Java daemon answers `InvalidStateException`.
    Refused,
    /// The lease is gone (an action interrupted by its loss): `ShutdownException`.
    Lost,
    Shard(&'a Checkpointer),
    /// At `shardEnded`: a request without a sequence number ends the shard (`SHARD_END` is
    /// written when the action is done).
    ShardEnd(&'a Checkpointer, bool),
}

impl ChildProcessor {
    fn spawn(&mut self) -> Result<&mut Child, ChildError> {
        let (program, args) =
            self.config
                .command
                .split_first()
                .ok_or_else(|| ChildError::Spawn {
                    command: String::new(),
                    error: "executableName is empty".into(),
                })?;
        let spawn_error = |error: String| ChildError::Spawn {
            command: self.config.command.join(" "),
            error,
        };
        let mut process = tokio::process::Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // Its own process group: a Ctrl-C in a terminal reaches the daemon only, which
            // then asks each child to shut down.
            .process_group(0)
            .spawn()
            .map_err(|e| spawn_error(e.to_string()))?;
        let pid = process.id().unwrap_or_default();
        let (Some(stdin), Some(stdout), Some(stderr)) = (
            process.stdin.take(),
            process.stdout.take(),
            process.stderr.take(),
        ) else {
            return Err(spawn_error("no pipes to the child".into()));
        };
        let shard_id = self.shard_id.clone();
        let stderr = tokio::spawn(forward_stderr(stderr, shard_id, pid));
        tracing::info!(shard_id = %self.shard_id, pid, command = %self.config.command.join(" "), "child process started");
        Ok(self.child.insert(Child {
            process,
            pid,
            shard_id: self.shard_id.clone(),
            stdin,
            stdout: BufReader::new(stdout),
            stderr,
        }))
    }

    /// Sends `message` and reads the child's lines until its status for it.
    async fn exchange(
        &mut self,
        message: &ToChild,
        checkpoints: &mut Checkpoints<'_>,
        wait: Option<Duration>,
    ) -> Result<(), ChildError> {
        let action = message.action();
        let Some(child) = self.child.as_mut() else {
            return Err(ChildError::Exited {
                pid: 0,
                status: "not running".into(),
                action,
            });
        };
        // Set until the status comes: a shard task dropped in between (the lease lost) leaves
        // it set, and `lease_lost` waits for that status first.
        self.pending = Some(action);
        child.report(action);
        child.send(message, action, wait).await?;
        child.await_status(action, checkpoints, wait).await?;
        self.pending = None;
        child.report("idle");
        Ok(())
    }
    /// Kills the child (if still running) and hands its cause over as the shard's failure.
    async fn fail(&mut self, error: ChildError) -> anyhow::Error {
        if let Some(child) = self.child.take() {
            child.stop().await;
        }
        ShardFailed(error.to_string()).into()
    }

    /// The last action of the child: closes its input and waits for it to exit.
    async fn finish(&mut self) {
        if let Some(child) = self.child.take() {
            child.stop().await;
        }
    }

    fn timeout(&self) -> Option<Duration> {
        self.config.timeout
    }

    fn ending_wait(&self) -> Duration {
        self.config
            .timeout
            .map_or(ENDING_WAIT, |t| t.min(ENDING_WAIT))
    }
}

/// A processor dropped with its child running (its shard task aborted): the child is killed
/// (`kill_on_drop`), and leaves the status page.
impl Drop for ChildProcessor {
    fn drop(&mut self) {
        if let (Some(child), Some(o)) = (&self.child, crate::observe::observer()) {
            o.child_gone(&self.shard_id, child.pid);
        }
    }
}

impl Child {
    /// Writes `message`, within `wait` when given (a child that stopped reading fills the
    /// pipe).
    async fn send(
        &mut self,
        message: &ToChild,
        action: &'static str,
        wait: Option<Duration>,
    ) -> Result<(), ChildError> {
        let written = match wait {
            Some(limit) => match tokio::time::timeout(limit, self.write(message)).await {
                Ok(written) => written,
                Err(_) => {
                    return Err(ChildError::Timeout {
                        pid: self.pid,
                        action,
                        waited: limit,
                    })
                }
            },
            None => self.write(message).await,
        };
        match written {
            Ok(()) => Ok(()),
            Err(_) => Err(self.exited(action).await),
        }
    }

    /// Reads the child's lines until its status for `action`, answering its checkpoint
    /// requests; each line within `wait` when given.
    async fn await_status(
        &mut self,
        action: &'static str,
        checkpoints: &mut Checkpoints<'_>,
        wait: Option<Duration>,
    ) -> Result<(), ChildError> {
        loop {
            let line = match wait {
                Some(limit) => match tokio::time::timeout(limit, self.read_line()).await {
                    Ok(line) => line,
                    Err(_) => {
                        return Err(ChildError::Timeout {
                            pid: self.pid,
                            action,
                            waited: limit,
                        })
                    }
                },
                None => self.read_line().await,
            };
            let Some(line) = line else {
                return Err(self.exited(action).await);
            };
            let parsed = FromChild::parse(&line).map_err(|error| ChildError::NotProtocol {
                pid: self.pid,
                action,
                error,
            })?;
            match parsed {
                None => {}
                Some(FromChild::Status { response_for }) if response_for == action => return Ok(()),
                Some(FromChild::Status { response_for }) => {
                    return Err(ChildError::WrongStatus {
                        pid: self.pid,
                        answered: response_for,
                        action,
                    })
                }
                Some(FromChild::Checkpoint {
                    sequence_number,
                    sub_sequence_number,
                }) => {
                    let error = answer_checkpoint(
                        checkpoints,
                        sequence_number.as_deref(),
                        sub_sequence_number,
                    )
                    .await;
                    let answer = ToChild::Checkpoint {
                        sequence_number,
                        sub_sequence_number,
                        error: error.map(String::from),
                    };
                    self.send(&answer, action, wait).await?;
                }
            }
        }
    }

    /// Shows the child's state on the status page.
    fn report(&self, state: &'static str) {
        if let Some(o) = crate::observe::observer() {
            o.child_state(&self.shard_id, self.pid, state);
        }
    }

    async fn write(&mut self, message: &ToChild) -> std::io::Result<()> {
        let mut line = message.to_line();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await?;
        self.stdin.flush().await
    }

    /// The next line of standard output; `None` at its end (or a read error).
    async fn read_line(&mut self) -> Option<String> {
        let mut buf = Vec::new();
        match (&mut self.stdout)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut buf)
            .await
        {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(String::from_utf8_lossy(&buf).into_owned()),
        }
    }

    /// Why writing or reading failed: the child's exit, as far as it can be known quickly.
    async fn exited(&mut self, action: &'static str) -> ChildError {
        let status = match tokio::time::timeout(EXIT_WAIT, self.process.wait()).await {
            Ok(Ok(status)) => status.to_string(),
            Ok(Err(err)) => err.to_string(),
            Err(_) => "closed its standard output".into(),
        };
        ChildError::Exited {
            pid: self.pid,
            status,
            action,
        }
    }

    /// Closes its input (a KCL child exits at its end), gives it [`EXIT_WAIT`] to exit, then
    /// kills it; forwards what is left of its standard error.
    async fn stop(mut self) {
        if let Some(o) = crate::observe::observer() {
            o.child_gone(&self.shard_id, self.pid);
        }
        drop(self.stdin);
        match tokio::time::timeout(EXIT_WAIT, self.process.wait()).await {
            Ok(Ok(status)) => {
                tracing::info!(shard_id = %self.shard_id, pid = self.pid, status = %status, "child process exited")
            }
            _ => {
                let _ = self.process.start_kill();
                let _ = tokio::time::timeout(EXIT_WAIT, self.process.wait()).await;
                tracing::info!(shard_id = %self.shard_id, pid = self.pid, "child process killed");
            }
        }
        if tokio::time::timeout(EXIT_WAIT, &mut self.stderr)
            .await
            .is_err()
        {
            // A grandchild may hold the pipe open.
            self.stderr.abort();
        }
    }
}

/// Logs each line of the child's standard error (cut at [`MAX_LINE`]) until it closes.
async fn forward_stderr(stderr: impl AsyncRead + Unpin, shard_id: String, pid: u32) {
    let mut reader = BufReader::new(stderr);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match (&mut reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut buf)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&buf);
        let line = text.trim_end_matches(['\n', '\r']);
        if !line.is_empty() {
            tracing::info!(shard_id = %shard_id, pid, line = %line, "child stderr");
        }
    }
}

/// Answers one checkpoint request: `None` when written (or covered), else the simple name of
/// the exception the Java KCL's checkpointer would have thrown.
async fn answer_checkpoint(
    checkpoints: &mut Checkpoints<'_>,
    sequence_number: Option<&str>,
    sub_sequence_number: Option<i64>,
) -> Option<&'static str> {
    let checkpointer = match checkpoints {
        Checkpoints::Refused => return Some("InvalidStateException"),
        Checkpoints::Lost => return Some("ShutdownException"),
        Checkpoints::ShardEnd(_, ended) if sequence_number.is_none() => {
            *ended = true;
            return None;
        }
        Checkpoints::Shard(c) | Checkpoints::ShardEnd(c, _) => *c,
    };
    let written = match sequence_number {
        None => checkpointer
            .checkpoint()
            .await
            .or_else(CheckpointError::unless_nothing_delivered),
        Some(seq) => {
            // `checkpoint(String)` is at sub-sequence number 0 in the KCL.
            let sub = sub_sequence_number.unwrap_or(0);
            let position = ExtendedSequenceNumber::new(seq, sub);
            // The KCL refuses a position before the last checkpoint; ours would accept it.
            if is_sequence_number(seq)
                && checkpointer
                    .last_checkpoint()
                    .is_some_and(|last| position < last)
            {
                return Some("IllegalArgumentException");
            }
            checkpointer.checkpoint_at(seq, sub).await
        }
    };
    written.err().map(|err| match err {
        CheckpointError::LeaseLost(_) => "ShutdownException",
        CheckpointError::Invalid { .. } => "IllegalArgumentException",
        CheckpointError::Failed { message, .. }
            if message.contains("Throttl") || message.contains("ProvisionedThroughputExceeded") =>
        {
            "ThrottlingException"
        }
        CheckpointError::Failed { .. } => "KinesisClientLibDependencyException",
    })
}

impl RecordProcessor for ChildProcessor {
    async fn initialize(&mut self, input: InitializationInput) -> anyhow::Result<()> {
        if let Err(err) = self.spawn() {
            return Err(self.fail(err).await);
        }
        let message = ToChild::initialize(&input.shard_id, &input.checkpoint);
        match self
            .exchange(&message, &mut Checkpoints::Refused, self.timeout())
            .await
        {
            Ok(()) => Ok(()),
            Err(err) => Err(self.fail(err).await),
        }
    }

    async fn process_records(&mut self, input: ProcessRecordsInput<'_>) -> anyhow::Result<()> {
        let message = ToChild::process_records(input.records, input.millis_behind_latest);
        let mut checkpoints = Checkpoints::Shard(input.checkpointer);
        match self
            .exchange(&message, &mut checkpoints, self.timeout())
            .await
        {
            Ok(()) => Ok(()),
            Err(err) => Err(self.fail(err).await),
        }
    }

    async fn lease_lost(&mut self) {
        if self.child.is_none() {
            return;
        }
        let wait = Some(self.ending_wait());
        let ended = async {
            // The loss stopped the shard task in the middle of an action: let the child finish
            // it (its checkpoints refused) before telling it.
            if let (Some(action), Some(child)) = (self.pending.take(), self.child.as_mut()) {
                child
                    .await_status(action, &mut Checkpoints::Lost, wait)
                    .await?;
            }
            self.exchange(&ToChild::LeaseLost, &mut Checkpoints::Refused, wait)
                .await
        };
        if let Err(err) = ended.await {
            tracing::warn!(shard_id = %self.shard_id, error = %err, "child process failed on leaseLost");
        }
        self.finish().await;
    }

    async fn shard_ended(&mut self, checkpointer: &Checkpointer) -> anyhow::Result<()> {
        let mut checkpoints = Checkpoints::ShardEnd(checkpointer, false);
        let result = self
            .exchange(&ToChild::ShardEnded, &mut checkpoints, self.timeout())
            .await;
        let pid = self.child.as_ref().map_or(0, |c| c.pid);
        match (result, checkpoints) {
            (Ok(()), Checkpoints::ShardEnd(_, true)) => {
                self.finish().await;
                Ok(())
            }
            (Ok(()), _) => Err(self.fail(ChildError::NoShardEndCheckpoint { pid }).await),
            (Err(err), _) => Err(self.fail(err).await),
        }
    }

    async fn shutdown_requested(&mut self, checkpointer: &Checkpointer) -> anyhow::Result<()> {
        if self.child.is_none() {
            return Ok(());
        }
        let wait = Some(self.ending_wait());
        let result = self
            .exchange(
                &ToChild::ShutdownRequested,
                &mut Checkpoints::Shard(checkpointer),
                wait,
            )
            .await;
        self.finish().await;
        result.map_err(Into::into)
    }

    fn process_empty_batches(&self) -> bool {
        self.config.empty_batches
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A processor running `script` with `python3 -c`.
    fn processor(script: &str, timeout: Option<Duration>) -> ChildProcessor {
        ChildProcessorFactory::new(ChildConfig {
            command: vec!["python3".into(), "-c".into(), script.into()],
            timeout,
            empty_batches: false,
        })
        .create("shardId-000000000000")
    }

    /// Reads one message a line; for `processRecords`, asks for a checkpoint, then answers its
    /// status; writes every action it got (and the checkpoint answer's error) to `$OUT`.
    const CHILD: &str = r#"
import json, os, sys
out = open(os.environ["OUT"], "a")
for line in sys.stdin:
    message = json.loads(line)
    out.write(message["action"] + "\n"); out.flush()
    if message["action"] == "processRecords":
        sys.stdout.write(json.dumps({"action": "checkpoint", "sequenceNumber": None}) + "\n")
        sys.stdout.flush()
        answer = json.loads(sys.stdin.readline())
        out.write("checkpoint error " + str(answer.get("error")) + "\n"); out.flush()
    sys.stdout.write("\n" + json.dumps({"action": "status", "responseFor": message["action"]}) + "\n")
    sys.stdout.flush()
"#;

    #[tokio::test]
    async fn a_lost_lease_lets_the_action_in_hand_finish_then_says_lease_lost() {
        let out = std::env::temp_dir().join(format!("multilang-child-{}", uuid::Uuid::new_v4()));
        let script = CHILD.replace(
            "os.environ[\"OUT\"]",
            &format!("{:?}", out.display().to_string()),
        );
        let mut p = processor(&script, Some(Duration::from_secs(5)));
        p.spawn().expect("spawn");
        let message = ToChild::process_records(&[], None);
        let child = p.child.as_mut().expect("child");
        child
            .send(&message, "processRecords", None)
            .await
            .expect("send");
        // The shard task was dropped here, its status not read: the lease is lost.
        p.pending = Some("processRecords");
        p.lease_lost().await;
        assert!(p.child.is_none());
        let said = std::fs::read_to_string(&out).unwrap_or_default();
        let _ = std::fs::remove_file(&out);
        assert_eq!(
            said.lines().collect::<Vec<_>>(),
            vec![
                "processRecords",
                "checkpoint error ShutdownException",
                "leaseLost"
            ]
        );
    }

    #[tokio::test]
    async fn a_child_that_stops_reading_is_timed_out_while_written_to() {
        // Never reads its input: a large message fills the pipe.
        let mut p = processor(
            "import time; time.sleep(60)",
            Some(Duration::from_millis(500)),
        );
        p.spawn().expect("spawn");
        let big = ToChild::Shutdown {
            reason: "x".repeat(4 << 20),
        };
        let started = std::time::Instant::now();
        let err = p
            .exchange(&big, &mut Checkpoints::Refused, p.timeout())
            .await
            .unwrap_err();
        assert!(matches!(err, ChildError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        p.finish().await;
    }
}
