//! The Jupyter client: ready detection, cell execution, interrupt and shutdown.
//!
//! Framing, signing and signature verification come from `jupyter-zmq-client` over the pure
//! Rust `zeromq` crate. Every received message is verified with the connection's key; a message
//! whose signature does not match is rejected with [`ClientError::BadSignature`].
//!
//! One task drives the shell and IOPub sockets; a request waits on both at once:
//!
//! ```text
//!   execute_request ──► shell ──► kernel ──► shell: execute_reply ─┐
//!                                   └──────► IOPub: busy, stream, ├─► ExecuteOutcome
//!                                            execute_result, idle ─┘  (both with our msg_id)
//! ```

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use jupyter_protocol::{
    ExecuteRequest, ExecutionState, InterruptRequest, JupyterMessage, JupyterMessageContent,
    KernelInfoRequest, MediaType, ReplyStatus, ShutdownRequest, Stdio,
};
use jupyter_zmq_client::{
    ClientControlConnection, ClientIoPubConnection, ClientShellConnection, RawMessage, RuntimeError,
};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::sync::{watch, Mutex};

use crate::connection::{generate_key, ConnectionInfo};
use crate::suite::{shorten, Cell, Metric};

/// Interval between TCP probes while the kernel has not bound its ports yet, unless the caller
/// sets another with [`KernelClient::connect_probing`].
pub const LISTEN_PROBE_INTERVAL: Duration = Duration::from_millis(2);

/// Interval between `kernel_info_request`s while no reply has arrived. Requests are not lost
/// once the shell socket is connected, so repeating them often only queues duplicates.
const READY_RETRY_BEFORE_REPLY: Duration = Duration::from_millis(200);

/// Interval between `kernel_info_request`s after the reply arrived but no IOPub `status` did:
/// each request makes the kernel publish `busy` and `idle` again.
const READY_RETRY_AFTER_REPLY: Duration = Duration::from_millis(20);

/// Time allowed for a reply on the control channel.
const CONTROL_REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Username written into the header of every request.
const USERNAME: &str = "isobench";

/// Failure of a client operation.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The kernel did not accept TCP connections on a port before the deadline.
    #[error(
        "kernel at {address} did not accept connections before the ready deadline (probed for \
         {:.2} s): check that it started and binds that address, or raise --ready-deadline",
        .waited.as_secs_f64()
    )]
    NotListening {
        /// `ip:port` probed.
        address: String,
        /// Time waited.
        waited: Duration,
    },
    /// Connecting a ZeroMQ socket failed.
    #[error("failed to connect the {channel} channel to {address}")]
    Connect {
        /// Channel name.
        channel: &'static str,
        /// `ip:port`.
        address: String,
        /// The cause.
        #[source]
        source: RuntimeError,
    },
    /// Sending a message failed.
    #[error("failed to send {msg_type} on the {channel} channel")]
    Send {
        /// Channel name.
        channel: &'static str,
        /// Message type.
        msg_type: &'static str,
        /// The cause.
        #[source]
        source: RuntimeError,
    },
    /// A received message's HMAC-SHA256 signature does not match its contents and our key.
    #[error("message on the {channel} channel has an invalid signature: the kernel uses another key, or the message was altered")]
    BadSignature {
        /// Channel name.
        channel: &'static str,
    },
    /// A received message could not be decoded.
    #[error("invalid message on the {channel} channel")]
    Receive {
        /// Channel name.
        channel: &'static str,
        /// The cause.
        #[source]
        source: RuntimeError,
    },
    /// The kernel closed its shell connection, which means it exited.
    #[error("kernel closed its connection while {during}: it has probably exited")]
    Disconnected {
        /// The step the client was waiting in.
        during: &'static str,
    },
    /// The kernel was not ready before the deadline.
    #[error("kernel not ready after {waited:?} and {attempts} kernel_info_request(s): shell reply {}, IOPub status {}", received(*.reply_received), received(*.status_received))]
    ReadyTimeout {
        /// Time waited.
        waited: Duration,
        /// `kernel_info_request`s sent.
        attempts: u32,
        /// Whether a matching `kernel_info_reply` arrived.
        reply_received: bool,
        /// Whether an IOPub `status` arrived.
        status_received: bool,
    },
    /// A request got no complete reply before its timeout.
    #[error("{msg_type} got no {missing} within {waited:?}")]
    Timeout {
        /// Request type.
        msg_type: &'static str,
        /// The message that did not arrive.
        missing: &'static str,
        /// Time waited.
        waited: Duration,
    },
    /// A cell raised an exception or was aborted.
    #[error("cell {cell:?} failed: {ename}: {evalue}")]
    CellFailed {
        /// Cell name.
        cell: String,
        /// Exception name, or `aborted`.
        ename: String,
        /// Exception value.
        evalue: String,
    },
    /// A cell's answer differs from its expected value; the trial fails.
    #[error("cell {cell:?} gave a wrong answer: {detail}")]
    WrongAnswer {
        /// Cell name.
        cell: String,
        /// The expected and the received value.
        detail: String,
    },
    /// The kernel replied to a control request with an error.
    #[error("kernel rejected {msg_type}")]
    Rejected {
        /// Request type.
        msg_type: &'static str,
    },
}

fn received(flag: bool) -> &'static str {
    if flag {
        "received"
    } else {
        "missing"
    }
}

/// When the kernel became ready, timed on the host's monotonic clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadyReport {
    /// When the first `kernel_info_request` was sent.
    pub first_request_at: Instant,
    /// When the first `kernel_info_reply` with a matching parent arrived on the shell channel.
    pub reply_at: Instant,
    /// When the first IOPub `status` message arrived.
    pub first_status_at: Instant,
    /// When both had arrived: the later of `reply_at` and `first_status_at`.
    pub ready_at: Instant,
    /// `kernel_info_request`s sent.
    pub attempts: u32,
}

/// Outcome of an `execute_request`, from the kernel's `execute_reply`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecuteStatus {
    /// The code ran to completion.
    Ok,
    /// The code raised an exception.
    Error {
        /// Exception name, such as `KeyboardInterrupt`.
        ename: String,
        /// Exception value.
        evalue: String,
    },
    /// The kernel skipped the code because an earlier request failed.
    Aborted,
}

/// One `execute_request` and everything the kernel sent back for it.
#[derive(Debug, Clone)]
pub struct ExecuteOutcome {
    /// When the request was handed to the shell socket.
    pub sent_at: Instant,
    /// When the `execute_reply` arrived.
    pub reply_at: Instant,
    /// When the IOPub `status: idle` with the request as parent arrived.
    pub idle_at: Instant,
    /// Outcome of the execution.
    pub status: ExecuteStatus,
    /// Concatenated `stream` output named `stdout`.
    pub stdout: String,
    /// Concatenated `stream` output named `stderr`.
    pub stderr: String,
    /// The `text/plain` form of the `execute_result`, if the code produced one.
    pub result: Option<String>,
}

impl ExecuteOutcome {
    /// Wall time from sending the request to having both the reply and the `idle` status.
    pub fn wall(&self) -> Duration {
        self.reply_at.max(self.idle_at) - self.sent_at
    }

    /// The value a cell's check compares: the result text, or else the standard output
    /// without its trailing newline.
    pub fn answer(&self) -> &str {
        match &self.result {
            Some(result) => result,
            None => self.stdout.trim_end_matches('\n'),
        }
    }
}

/// Timing of one timed run of a cell, in nanoseconds from sending the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellRun {
    /// Until both the `execute_reply` and the IOPub `idle` arrived.
    pub wall_ns: u64,
    /// Until the `execute_reply` arrived.
    pub reply_ns: u64,
    /// Until the IOPub `idle` arrived.
    pub idle_ns: u64,
}

/// The timed runs of one cell, all of which passed the cell's check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellOutcome {
    /// Cell name.
    pub name: String,
    /// Metric of the cell.
    pub metric: Metric,
    /// Bytes one run moves, for throughput cells.
    pub bytes_per_run: Option<u64>,
    /// The timed runs, in order.
    pub runs: Vec<CellRun>,
    /// The last run's answer, shortened to about 200 characters; the recorded value of
    /// observation cells.
    pub answer: String,
}

impl CellOutcome {
    /// Wall times of the timed runs, in order.
    pub fn wall_times(&self) -> Vec<Duration> {
        self.runs
            .iter()
            .map(|run| Duration::from_nanos(run.wall_ns))
            .collect()
    }

    /// Throughput of each timed run in MB/s (10^6 bytes per second), for throughput cells.
    pub fn throughput_mb_per_s(&self) -> Option<Vec<f64>> {
        let bytes = self.bytes_per_run? as f64;
        Some(
            self.runs
                .iter()
                .map(|run| bytes / (run.wall_ns.max(1) as f64 / 1e9) / 1e6)
                .collect(),
        )
    }
}

/// Sends `interrupt_request` and `shutdown_request` on the control channel; usable while the
/// [`KernelClient`] it came from is busy executing a cell.
#[derive(Clone)]
pub struct ControlHandle {
    control: Arc<Mutex<ClientControlConnection>>,
}

impl ControlHandle {
    /// Sends `interrupt_request` and waits for the kernel's `interrupt_reply`. A running cell
    /// then ends with `KeyboardInterrupt`; the kernel keeps running.
    pub async fn interrupt(&self) -> Result<(), ClientError> {
        let request = JupyterMessage::new(InterruptRequest {}, None);
        let reply = self.request(request, "interrupt_request").await?;
        // ipykernel 6.17 echoes the request's empty content as the reply, without `status`.
        match reply.get("status").and_then(|status| status.as_str()) {
            None | Some("ok") => Ok(()),
            Some(_) => Err(ClientError::Rejected {
                msg_type: "interrupt_request",
            }),
        }
    }

    /// Sends `shutdown_request` (no restart) and waits for the kernel's `shutdown_reply`. The
    /// kernel process exits shortly after; the backend observes the exit.
    pub async fn shutdown(&self) -> Result<(), ClientError> {
        let request = JupyterMessage::new(ShutdownRequest { restart: false }, None);
        self.request(request, "shutdown_request").await.map(|_| ())
    }

    /// Sends a request and returns the content of the reply whose parent is that request.
    ///
    /// Replies are read one layer below `Connection::read`, which verifies the signature
    /// and then fails on replies whose content lacks a field the protocol crate requires, as
    /// ipykernel 6.17's `interrupt_reply` does. Here only the headers are decoded.
    async fn request(
        &self,
        request: JupyterMessage,
        msg_type: &'static str,
    ) -> Result<serde_json::Value, ClientError> {
        use zeromq::SocketRecv as _;

        let request = with_username(request);
        let msg_id = request.header.msg_id.clone();
        let mut control = self.control.lock().await;
        control
            .send(request)
            .await
            .map_err(|source| ClientError::Send {
                channel: "control",
                msg_type,
                source,
            })?;
        let control = &mut *control;
        let wait_reply = async {
            loop {
                let frames =
                    control.socket.recv().await.map_err(|source| {
                        receive_error("control", RuntimeError::ZmqError(source))
                    })?;
                let raw = RawMessage::from_multipart(frames, &control.mac)
                    .map_err(|source| receive_error("control", source))?;
                let parent: serde_json::Value =
                    serde_json::from_slice(&raw.jparts[1]).unwrap_or_default();
                if parent.get("msg_id").and_then(|id| id.as_str()) == Some(msg_id.as_str()) {
                    return serde_json::from_slice(&raw.jparts[3]).map_err(|source| {
                        receive_error("control", RuntimeError::SerdeError(source))
                    });
                }
            }
        };
        tokio::time::timeout(CONTROL_REPLY_TIMEOUT, wait_reply)
            .await
            .map_err(|_| ClientError::Timeout {
                msg_type,
                missing: "reply on the control channel",
                waited: CONTROL_REPLY_TIMEOUT,
            })?
    }
}

/// A client connected to one Jupyter kernel's shell, IOPub and control channels.
pub struct KernelClient {
    info: ConnectionInfo,
    shell: ClientShellConnection,
    iopub: ClientIoPubConnection,
    control: ControlHandle,
    /// Becomes `true` when the kernel closes the shell connection.
    disconnected: watch::Receiver<bool>,
}

impl KernelClient {
    /// Connects to the kernel described by `info`, first waiting until its shell, IOPub and
    /// control ports accept TCP connections, until `deadline`.
    ///
    /// The ports are probed every [`LISTEN_PROBE_INTERVAL`] instead of leaving the wait to
    /// ZeroMQ, whose reconnect backoff doubles up to seconds and would add that delay to the
    /// time to ready.
    pub async fn connect(
        info: &ConnectionInfo,
        deadline: Instant,
    ) -> Result<KernelClient, ClientError> {
        Self::connect_probing(info, deadline, LISTEN_PROBE_INTERVAL).await
    }

    /// Connects as [`KernelClient::connect`] does, probing the ports every `probe_interval`.
    /// Each probe the kernel is not yet listening for costs the guest a SYN and a RST, so a
    /// guest that runs far slower than the host wants a longer interval.
    pub async fn connect_probing(
        info: &ConnectionInfo,
        deadline: Instant,
        probe_interval: Duration,
    ) -> Result<KernelClient, ClientError> {
        let started = Instant::now();
        for port in [info.ports.shell, info.ports.iopub, info.ports.control] {
            wait_listening(info, port, started, deadline, probe_interval).await?;
        }

        let protocol = info.to_protocol();
        let session_id = new_session_id();
        let connect_deadline = tokio::time::Instant::from_std(deadline);

        let iopub = tokio::time::timeout_at(
            connect_deadline,
            jupyter_zmq_client::create_client_iopub_connection(&protocol, "", &session_id),
        )
        .await;
        let iopub = connect_result("iopub", info, info.ports.iopub, started, iopub)?;

        let identity =
            jupyter_zmq_client::peer_identity_for_session(&session_id).map_err(|source| {
                ClientError::Connect {
                    channel: "shell",
                    address: address(info, info.ports.shell),
                    source,
                }
            })?;
        let shell = tokio::time::timeout_at(
            connect_deadline,
            jupyter_zmq_client::create_client_shell_connection_with_identity(
                &protocol,
                &session_id,
                identity,
            ),
        )
        .await;
        let mut shell = connect_result("shell", info, info.ports.shell, started, shell)?;

        let control = tokio::time::timeout_at(
            connect_deadline,
            jupyter_zmq_client::create_client_control_connection(&protocol, &session_id),
        )
        .await;
        let control = connect_result("control", info, info.ports.control, started, control)?;

        let disconnected = watch_disconnect(&mut shell);
        Ok(KernelClient {
            info: info.clone(),
            shell,
            iopub,
            control: ControlHandle {
                control: Arc::new(Mutex::new(control)),
            },
            disconnected,
        })
    }

    /// The connection parameters this client uses.
    pub fn connection_info(&self) -> &ConnectionInfo {
        &self.info
    }

    /// Returns a handle that interrupts or shuts down the kernel while this client waits.
    pub fn control_handle(&self) -> ControlHandle {
        self.control.clone()
    }

    /// Repeats `kernel_info_request` until a `kernel_info_reply` whose parent is one of the
    /// requests arrived on the shell channel and at least one IOPub `status` message arrived,
    /// under `deadline`.
    ///
    /// Both are required because IOPub is a PUB socket that drops messages published before
    /// our subscription reaches it: a kernel that answers on shell may still be invisible on
    /// IOPub for a while. A kernel that exits after the client connected ends the wait with
    /// [`ClientError::Disconnected`]. The caller races this call against the backend's exit
    /// watch, so that an exit is reported with its status and output.
    pub async fn wait_ready(&mut self, deadline: Instant) -> Result<ReadyReport, ClientError> {
        let started = Instant::now();
        let mut request_ids = HashSet::new();
        let mut attempts = 0u32;
        let mut first_request_at = None;
        let mut reply_at: Option<Instant> = None;
        let mut first_status_at: Option<Instant> = None;
        let mut next_request_at = started;

        loop {
            if let (Some(reply), Some(status)) = (reply_at, first_status_at) {
                return Ok(ReadyReport {
                    first_request_at: first_request_at.unwrap_or(started),
                    reply_at: reply,
                    first_status_at: status,
                    ready_at: reply.max(status),
                    attempts,
                });
            }

            let now = Instant::now();
            if now >= deadline {
                return Err(ClientError::ReadyTimeout {
                    waited: now - started,
                    attempts,
                    reply_received: reply_at.is_some(),
                    status_received: first_status_at.is_some(),
                });
            }
            if now >= next_request_at {
                let request = with_username(JupyterMessage::new(KernelInfoRequest {}, None));
                request_ids.insert(request.header.msg_id.clone());
                self.shell
                    .send(request)
                    .await
                    .map_err(|source| ClientError::Send {
                        channel: "shell",
                        msg_type: "kernel_info_request",
                        source,
                    })?;
                attempts += 1;
                first_request_at.get_or_insert(now);
                let interval = if reply_at.is_some() {
                    READY_RETRY_AFTER_REPLY
                } else {
                    READY_RETRY_BEFORE_REPLY
                };
                next_request_at = now + interval;
            }

            let wake_at = tokio::time::Instant::from_std(next_request_at.min(deadline));
            tokio::select! {
                message = self.shell.read() => {
                    let message = message.map_err(|source| receive_error("shell", source))?;
                    let matches = message
                        .parent_header
                        .as_ref()
                        .is_some_and(|parent| request_ids.contains(&parent.msg_id));
                    if matches && matches!(message.content, JupyterMessageContent::KernelInfoReply(_)) {
                        reply_at.get_or_insert_with(Instant::now);
                    }
                }
                message = self.iopub.read() => {
                    let message = message.map_err(|source| receive_error("iopub", source))?;
                    if matches!(message.content, JupyterMessageContent::Status(_)) {
                        first_status_at.get_or_insert_with(Instant::now);
                    }
                }
                _ = tokio::time::sleep_until(wake_at) => {}
                _ = self.disconnected.wait_for(|closed| *closed) => {
                    return Err(ClientError::Disconnected { during: "waiting for ready" });
                }
            }
        }
    }

    /// Sends `code` as `execute_request` and waits, at most `timeout`, for its `execute_reply`
    /// and its IOPub `idle`, collecting stream output and the result on the way.
    ///
    /// An exception in the code is not an error here; it shows in
    /// [`ExecuteOutcome::status`].
    pub async fn execute(
        &mut self,
        code: &str,
        timeout: Duration,
    ) -> Result<ExecuteOutcome, ClientError> {
        let request = with_username(JupyterMessage::new(
            ExecuteRequest {
                code: code.to_owned(),
                silent: false,
                store_history: false,
                user_expressions: None,
                allow_stdin: false,
                stop_on_error: true,
            },
            None,
        ));
        let msg_id = request.header.msg_id.clone();

        let sent_at = Instant::now();
        self.shell
            .send(request)
            .await
            .map_err(|source| ClientError::Send {
                channel: "shell",
                msg_type: "execute_request",
                source,
            })?;
        let deadline = tokio::time::Instant::from_std(sent_at + timeout);

        let mut reply: Option<(Instant, ExecuteStatus)> = None;
        let mut idle_at: Option<Instant> = None;
        let mut stdout = String::new();
        let mut stderr = String::new();
        let mut result = None;

        loop {
            if let (Some((reply_at, status)), Some(idle_at)) = (&reply, idle_at) {
                return Ok(ExecuteOutcome {
                    sent_at,
                    reply_at: *reply_at,
                    idle_at,
                    status: status.clone(),
                    stdout,
                    stderr,
                    result,
                });
            }
            tokio::select! {
                message = self.shell.read() => {
                    let message = message.map_err(|source| receive_error("shell", source))?;
                    if !is_child_of(&message, &msg_id) {
                        continue;
                    }
                    if let JupyterMessageContent::ExecuteReply(content) = message.content {
                        let status = match content.status {
                            ReplyStatus::Ok => ExecuteStatus::Ok,
                            ReplyStatus::Aborted => ExecuteStatus::Aborted,
                            ReplyStatus::Error => {
                                let error = content.error.unwrap_or_default();
                                ExecuteStatus::Error { ename: error.ename, evalue: error.evalue }
                            }
                        };
                        reply = Some((Instant::now(), status));
                    }
                }
                message = self.iopub.read() => {
                    let message = message.map_err(|source| receive_error("iopub", source))?;
                    if !is_child_of(&message, &msg_id) {
                        continue;
                    }
                    match message.content {
                        JupyterMessageContent::Status(status)
                            if status.execution_state == ExecutionState::Idle =>
                        {
                            idle_at = Some(Instant::now());
                        }
                        JupyterMessageContent::StreamContent(stream) => match stream.name {
                            Stdio::Stdout => stdout.push_str(&stream.text),
                            Stdio::Stderr => stderr.push_str(&stream.text),
                        },
                        JupyterMessageContent::ExecuteResult(content) => {
                            result = content.data.content.into_iter().find_map(|media| match media {
                                MediaType::Plain(text) => Some(text),
                                _ => None,
                            });
                        }
                        _ => {}
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(ClientError::Timeout {
                        msg_type: "execute_request",
                        missing: if reply.is_none() { "execute_reply" } else { "IOPub idle status" },
                        waited: timeout,
                    });
                }
                _ = self.disconnected.wait_for(|closed| *closed) => {
                    return Err(ClientError::Disconnected { during: "executing a cell" });
                }
            }
        }
    }

    /// Runs a cell's warm-up and timed repetitions, checking every answer. A failed or wrong
    /// run is an error, so a wrong answer is never averaged in.
    pub async fn run_cell(&mut self, cell: &Cell) -> Result<CellOutcome, ClientError> {
        let mut runs = Vec::with_capacity(cell.repetitions as usize);
        let mut answer = String::new();
        for index in 0..cell.warmup + cell.repetitions {
            let outcome = self.execute(&cell.code, cell.timeout()).await?;
            check_outcome(cell, &outcome)?;
            if index >= cell.warmup {
                runs.push(CellRun {
                    wall_ns: duration_ns(outcome.wall()),
                    reply_ns: duration_ns(outcome.reply_at - outcome.sent_at),
                    idle_ns: duration_ns(outcome.idle_at - outcome.sent_at),
                });
            }
            answer = shorten(outcome.answer());
        }
        Ok(CellOutcome {
            name: cell.name.clone(),
            metric: cell.metric,
            bytes_per_run: cell.bytes_per_run,
            runs,
            answer,
        })
    }

    /// Sends `interrupt_request` on the control channel; see [`ControlHandle::interrupt`].
    pub async fn interrupt(&self) -> Result<(), ClientError> {
        self.control.interrupt().await
    }

    /// Sends `shutdown_request` on the control channel; see [`ControlHandle::shutdown`]. A
    /// kernel that has already closed its connection is not asked, because no reply would come.
    pub async fn shutdown(self) -> Result<(), ClientError> {
        if *self.disconnected.borrow() {
            return Err(ClientError::Disconnected {
                during: "shutting down",
            });
        }
        self.control.shutdown().await
    }
}

fn check_outcome(cell: &Cell, outcome: &ExecuteOutcome) -> Result<(), ClientError> {
    match &outcome.status {
        ExecuteStatus::Ok => {}
        ExecuteStatus::Error { ename, evalue } => {
            return Err(ClientError::CellFailed {
                cell: cell.name.clone(),
                ename: ename.clone(),
                evalue: evalue.clone(),
            })
        }
        ExecuteStatus::Aborted => {
            return Err(ClientError::CellFailed {
                cell: cell.name.clone(),
                ename: "aborted".into(),
                evalue: "the kernel skipped the cell".into(),
            })
        }
    }
    cell.check(outcome.answer(), outcome.stdout.len() as u64)
        .map_err(|detail| ClientError::WrongAnswer {
            cell: cell.name.clone(),
            detail,
        })
}

/// Returns a session id unique on this host: random when the system's generator works, else
/// made of the process id, a counter and the time. `jupyter_client` uses a UUID; the kernel only
/// needs the id to differ between clients.
fn new_session_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    generate_key().unwrap_or_else(|_| {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos());
        let count = COUNTER.fetch_add(1, Ordering::Relaxed);
        format!("isobench-{}-{count}-{nanos}", std::process::id())
    })
}

fn duration_ns(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

fn with_username(mut message: JupyterMessage) -> JupyterMessage {
    message.header.username = USERNAME.to_owned();
    message
}

fn is_child_of(message: &JupyterMessage, msg_id: &str) -> bool {
    message
        .parent_header
        .as_ref()
        .is_some_and(|parent| parent.msg_id == msg_id)
}

/// Maps a receive failure to the client's error. A signature that is not lower-case hex fails
/// to decode and one that does not match fails to verify: both are bad signatures.
pub(crate) fn receive_error(channel: &'static str, source: RuntimeError) -> ClientError {
    match source {
        RuntimeError::VerifyError(_) | RuntimeError::DecodeError(_) | RuntimeError::MissingHmac => {
            ClientError::BadSignature { channel }
        }
        source => ClientError::Receive { channel, source },
    }
}

fn address(info: &ConnectionInfo, port: u16) -> String {
    format!("{}:{port}", info.ip)
}

fn connect_result<T>(
    channel: &'static str,
    info: &ConnectionInfo,
    port: u16,
    started: Instant,
    result: Result<Result<T, RuntimeError>, tokio::time::error::Elapsed>,
) -> Result<T, ClientError> {
    match result {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(source)) => Err(ClientError::Connect {
            channel,
            address: address(info, port),
            source,
        }),
        Err(_) => Err(ClientError::NotListening {
            address: address(info, port),
            waited: started.elapsed(),
        }),
    }
}

async fn wait_listening(
    info: &ConnectionInfo,
    port: u16,
    started: Instant,
    deadline: Instant,
    probe_interval: Duration,
) -> Result<(), ClientError> {
    loop {
        if TcpStream::connect((info.ip, port)).await.is_ok() {
            return Ok(());
        }
        if Instant::now() + probe_interval > deadline {
            return Err(ClientError::NotListening {
                address: address(info, port),
                waited: started.elapsed(),
            });
        }
        tokio::time::sleep(probe_interval).await;
    }
}

/// Watches the shell socket's monitor and flags the first disconnect of the kernel.
fn watch_disconnect(shell: &mut ClientShellConnection) -> watch::Receiver<bool> {
    use zeromq::Socket as _;

    let (sender, receiver) = watch::channel(false);
    let mut events = shell.socket.monitor();
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            if let zeromq::SocketEvent::Disconnected(_) = event {
                tracing::debug!("kernel closed the shell connection");
                let _ = sender.send(true);
                break;
            }
        }
    });
    receiver
}
