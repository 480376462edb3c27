//! A running container of the guest image: its phase marks, output, exit and removal.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bollard::container::LogOutput;
use bollard::query_parameters::{
    InspectContainerOptions, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
    WaitContainerOptionsBuilder,
};
use futures_util::{Stream, StreamExt};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::engine::Engine;
use crate::error::ContainerError;
use crate::launch::STOP_TIMEOUT_S;
use crate::markers::MarkerScanner;

/// Number of trailing output bytes kept for error messages.
const OUTPUT_TAIL_BYTES: usize = 4096;

/// Time the attach stream gets to deliver its last bytes after the container exited.
const OUTPUT_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// A named instant of a container's startup, taken with `Instant::now()` on the host when the
/// call returned or the marker arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    /// Event name: `container_created`, `container_started` or an entrypoint marker name.
    pub name: String,
    /// Host `CLOCK_MONOTONIC` time of arrival.
    pub at: Instant,
}

/// Exit state of a container's main process, from the engine's inspect data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerExit {
    /// Exit code of the container's PID 1; 128 plus the signal number after a signal.
    pub exit_code: i64,
    /// Whether the kernel's out-of-memory killer ended a process of the container
    /// (`State.OOMKilled`).
    pub oom_killed: bool,
    /// The engine's error text for the container, such as a failed start (`State.Error`).
    pub engine_error: Option<String>,
    /// The last bytes of the container's standard output and error, lossily decoded.
    pub last_output: String,
}

impl ContainerExit {
    /// Describes the exit in words: `out of memory`, `killed by signal 9` or `exit status 1`.
    pub fn describe(&self) -> String {
        if self.oom_killed {
            "out of memory".to_string()
        } else if self.exit_code > 128 && self.exit_code < 128 + 65 {
            format!("killed by signal {}", self.exit_code - 128)
        } else {
            format!("exit status {}", self.exit_code)
        }
    }
}

/// Shared, append-only list of phase marks.
pub(crate) type SharedMarks = Arc<Mutex<Vec<Mark>>>;
/// Shared tail of the container's output.
type SharedOutput = Arc<Mutex<VecDeque<u8>>>;

/// One container launched by [`Engine::launch`].
///
/// Dropping it without [`Container::stop`] spawns a forced removal on the current Tokio
/// runtime. If the runtime shuts down before that removal runs, the next sweep removes the
/// container.
#[derive(Debug)]
pub struct Container {
    engine: Engine,
    id: String,
    name: String,
    address: Ipv4Addr,
    init_pid: Option<u32>,
    marks: SharedMarks,
    output: SharedOutput,
    reader: Option<JoinHandle<()>>,
    guard: RemovalGuard,
}

impl Container {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        engine: Engine,
        id: String,
        name: String,
        address: Ipv4Addr,
        init_pid: Option<u32>,
        marks: SharedMarks,
        output: SharedOutput,
        reader: JoinHandle<()>,
    ) -> Container {
        let guard = RemovalGuard::new(engine.clone(), id.clone());
        Container {
            engine,
            id,
            name,
            address,
            init_pid,
            marks,
            output,
            reader: Some(reader),
            guard,
        }
    }

    /// Docker's container id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Container name, `isobench-<run id>-<trial>`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Returns the container's address on the run's network, where the Jupyter kernel listens.
    pub fn address(&self) -> Ipv4Addr {
        self.address
    }

    /// Host PID of the container's first process (the entrypoint, or `docker-init` with
    /// `init`), if the engine reported one.
    pub fn init_pid(&self) -> Option<u32> {
        self.init_pid
    }

    /// Engine the container runs on.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Phase marks received so far, in time order.
    pub fn marks(&self) -> Vec<Mark> {
        self.marks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Returns the last bytes of the container's output so far, lossily decoded.
    pub fn output_tail(&self) -> String {
        output_text(&self.output)
    }

    /// Waits until the container's main process exits and returns how it ended. The attach
    /// stream then gets a short time to deliver the last output before it is closed.
    ///
    /// Waiting has no timeout of its own, because a healthy kernel runs until stopped; the
    /// caller bounds it. A daemon that goes away ends the wait with an error.
    pub async fn wait_exit(&mut self) -> Result<ContainerExit, ContainerError> {
        let options = WaitContainerOptionsBuilder::new()
            .condition("not-running")
            .build();
        let mut wait = self.engine.docker().wait_container(&self.id, Some(options));
        let operation = format!("wait for container {}", self.name);
        match wait.next().await {
            Some(Ok(_)) => {}
            // bollard turns a non-zero exit status into this error; the status is read below.
            Some(Err(bollard::errors::Error::DockerContainerWaitError { .. })) => {}
            Some(Err(source)) => {
                return Err(self
                    .engine
                    .classify(operation, source, self.engine.call_timeout()))
            }
            None => {
                return Err(ContainerError::EngineUnreachable {
                    host: self.engine.host().to_string(),
                    source: bollard::errors::Error::DockerStreamError {
                        error: format!("{operation} ended without a status"),
                    },
                })
            }
        }
        self.close_output().await;
        self.inspect_exit().await
    }

    /// Returns how the container ended if it is no longer running, or `None` while it runs.
    pub async fn exit_if_stopped(&self) -> Result<Option<ContainerExit>, ContainerError> {
        let exit = self.inspect_exit_state().await?;
        Ok(exit)
    }

    /// Stops the container with a [`STOP_TIMEOUT_S`] grace period, removes it, and returns
    /// how it ended. Stopping a container that already stopped, and removing one that is
    /// gone, succeed.
    pub async fn stop(mut self) -> Result<Option<ContainerExit>, ContainerError> {
        let options = StopContainerOptionsBuilder::new().t(STOP_TIMEOUT_S).build();
        let stopped = self
            .engine
            .call(
                format!("stop container {}", self.name),
                self.engine.docker().stop_container(&self.id, Some(options)),
            )
            .await;
        match stopped {
            Ok(()) => {}
            Err(error) if matches!(error.status_code(), Some(304) | Some(404)) => {}
            Err(error) => return Err(error),
        }
        self.close_output().await;
        let exit = match self.inspect_exit().await {
            Ok(exit) => Some(exit),
            Err(error) if error.status_code() == Some(404) => None,
            Err(error) => return Err(error),
        };
        self.engine.remove_container(&self.id).await?;
        self.guard.disarm();
        Ok(exit)
    }

    /// Ends the output reader, waiting [`OUTPUT_DRAIN_TIMEOUT`] for the stream to finish.
    async fn close_output(&mut self) {
        let Some(mut reader) = self.reader.take() else {
            return;
        };
        if tokio::time::timeout(OUTPUT_DRAIN_TIMEOUT, &mut reader)
            .await
            .is_err()
        {
            debug!(container = %self.name, "attach stream still open after exit, closing it");
            reader.abort();
        }
    }

    async fn inspect_exit(&self) -> Result<ContainerExit, ContainerError> {
        match self.inspect_exit_state().await? {
            Some(exit) => Ok(exit),
            None => Err(ContainerError::StillRunning {
                container: self.name.clone(),
            }),
        }
    }

    async fn inspect_exit_state(&self) -> Result<Option<ContainerExit>, ContainerError> {
        let inspected = self
            .engine
            .call(
                format!("inspect container {}", self.name),
                self.engine
                    .docker()
                    .inspect_container(&self.id, None::<InspectContainerOptions>),
            )
            .await?;
        let state = inspected.state.unwrap_or_default();
        if state.running == Some(true) {
            return Ok(None);
        }
        Ok(Some(ContainerExit {
            exit_code: state.exit_code.unwrap_or_default(),
            oom_killed: state.oom_killed.unwrap_or(false),
            engine_error: state.error.filter(|error| !error.is_empty()),
            last_output: output_text(&self.output),
        }))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Some(reader) = self.reader.take() {
            reader.abort();
        }
    }
}

impl Engine {
    /// Removes a container by id or name, with its anonymous volumes, even while it runs. A
    /// container that is gone, or whose removal is already in progress, is not an error.
    pub async fn remove_container(&self, container: &str) -> Result<(), ContainerError> {
        let options = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        let removed = self
            .call(
                format!("remove container {container}"),
                self.docker().remove_container(container, Some(options)),
            )
            .await;
        match removed {
            Ok(()) => {
                debug!(container, "removed container");
                Ok(())
            }
            Err(error) if matches!(error.status_code(), Some(404) | Some(409)) => Ok(()),
            Err(error) => Err(error),
        }
    }
}

/// Removes a container when dropped while armed, so an early return or a dropped future does
/// not leak it.
#[derive(Debug)]
pub(crate) struct RemovalGuard {
    engine: Engine,
    id: String,
    armed: bool,
}

impl RemovalGuard {
    pub(crate) fn new(engine: Engine, id: String) -> RemovalGuard {
        RemovalGuard {
            engine,
            id,
            armed: true,
        }
    }

    pub(crate) fn disarm(&mut self) {
        self.armed = false;
    }

    /// Removes the container now and disarms the guard; a failure is logged, because the
    /// caller is already returning another error.
    pub(crate) async fn remove_now(&mut self) {
        if let Err(error) = self.engine.remove_container(&self.id).await {
            warn!(container = %self.id, error = %error, "removing container failed; the next sweep removes it");
        }
        self.armed = false;
    }
}

impl Drop for RemovalGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            warn!(container = %self.id, "no Tokio runtime to remove container; the next sweep removes it");
            return;
        };
        let engine = self.engine.clone();
        let id = std::mem::take(&mut self.id);
        runtime.spawn(async move {
            if let Err(error) = engine.remove_container(&id).await {
                warn!(container = %id, error = %error, "removing container failed; the next sweep removes it");
            }
        });
    }
}

/// Adds a mark at its place in time order; the list is otherwise appended to in arrival order.
pub(crate) fn insert_mark(marks: &SharedMarks, mark: Mark) {
    let mut marks = marks.lock().unwrap_or_else(PoisonError::into_inner);
    let position = marks.partition_point(|earlier| earlier.at <= mark.at);
    marks.insert(position, mark);
}

/// Starts the task that reads the attach stream: it stamps each entrypoint marker with
/// `Instant::now()` as its bytes arrive and keeps the output's last [`OUTPUT_TAIL_BYTES`].
pub(crate) fn spawn_output_reader(
    mut output: Pin<Box<dyn Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>>,
    marks: Vec<Mark>,
) -> (SharedMarks, SharedOutput, JoinHandle<()>) {
    let marks: SharedMarks = Arc::new(Mutex::new(marks));
    let tail: SharedOutput = Arc::new(Mutex::new(VecDeque::with_capacity(OUTPUT_TAIL_BYTES)));
    let task = tokio::spawn({
        let marks = Arc::clone(&marks);
        let tail = Arc::clone(&tail);
        async move {
            let mut scanner = MarkerScanner::new();
            while let Some(item) = output.next().await {
                let at = Instant::now();
                let chunk = match item {
                    Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                        for name in scanner.scan(&message) {
                            let mark = Mark { name, at };
                            marks
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .push(mark);
                        }
                        message
                    }
                    Ok(LogOutput::StdErr { message }) | Ok(LogOutput::StdIn { message }) => message,
                    Err(error) => {
                        debug!(error = %error, "attach stream ended with an error");
                        break;
                    }
                };
                let mut tail = tail.lock().unwrap_or_else(PoisonError::into_inner);
                tail.extend(chunk.iter().copied());
                let excess = tail.len().saturating_sub(OUTPUT_TAIL_BYTES);
                tail.drain(..excess);
            }
        }
    });
    (marks, tail, task)
}

fn output_text(output: &SharedOutput) -> String {
    let tail = output.lock().unwrap_or_else(PoisonError::into_inner);
    let (front, back) = tail.as_slices();
    let mut bytes = Vec::with_capacity(tail.len());
    bytes.extend_from_slice(front);
    bytes.extend_from_slice(back);
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(exit_code: i64, oom_killed: bool) -> ContainerExit {
        ContainerExit {
            exit_code,
            oom_killed,
            engine_error: None,
            last_output: String::new(),
        }
    }

    #[test]
    fn exit_describes_oom_before_signal() {
        assert_eq!(exit(137, true).describe(), "out of memory");
    }

    #[test]
    fn exit_describes_signal() {
        assert_eq!(exit(137, false).describe(), "killed by signal 9");
    }

    #[test]
    fn exit_describes_status() {
        assert_eq!(exit(1, false).describe(), "exit status 1");
    }

    #[tokio::test]
    async fn output_reader_stamps_markers_split_across_frames() {
        let frames = vec![
            Ok(LogOutput::StdOut {
                message: "log\x1eisobench-marker:init".into(),
            }),
            Ok(LogOutput::StdErr {
                message: "warning\n".into(),
            }),
            Ok(LogOutput::StdOut {
                message: "_started\x1f".into(),
            }),
        ];
        let stream = Box::pin(futures_util::stream::iter(frames));
        let (marks, tail, task) = spawn_output_reader(stream, Vec::new());
        task.await.unwrap();
        let names: Vec<String> = marks
            .lock()
            .unwrap()
            .iter()
            .map(|mark| mark.name.clone())
            .collect();
        assert_eq!(names, vec!["init_started"]);
        assert!(output_text(&tail).ends_with("_started\x1f"));
    }

    #[test]
    fn insert_mark_keeps_time_order() {
        let start = Instant::now();
        let mark = |name: &str, offset_ms: u64| Mark {
            name: name.to_string(),
            at: start + Duration::from_millis(offset_ms),
        };
        let marks: SharedMarks = Arc::new(Mutex::new(vec![mark("a", 0), mark("c", 20)]));
        insert_mark(&marks, mark("b", 10));
        let names: Vec<String> = marks
            .lock()
            .unwrap()
            .iter()
            .map(|m| m.name.clone())
            .collect();
        assert_eq!(names, vec!["a", "b", "c"]);
    }

    #[tokio::test]
    async fn output_reader_keeps_only_tail() {
        let big = vec![b'x'; OUTPUT_TAIL_BYTES * 2];
        let frames = vec![Ok(LogOutput::StdOut {
            message: big.into(),
        })];
        let (_marks, tail, task) =
            spawn_output_reader(Box::pin(futures_util::stream::iter(frames)), Vec::new());
        task.await.unwrap();
        assert_eq!(output_text(&tail).len(), OUTPUT_TAIL_BYTES);
    }
}
