//! The `docker` backend: the guest image's root filesystem as a container of the Docker
//! engine, driven through its API by `isobench_container`.
//!
//! Each run gets one internal bridge network, created at its first launch and removed by
//! [`Backend::finish`]; each trial gets one container on it with the microVM's CPU and memory
//! limits. The host reaches the Jupyter kernel at the container's own address on that network,
//! with no published ports and no userland proxy in the path.
//!
//! Phase marks: `container_created` when the create call returns, the guest entrypoint's
//! markers (`init_started`, `exec_kernel`) as they arrive on the attach stream, and
//! `container_started` when the start call returns. With Debian's engine 20.10 the markers
//! usually arrive a few milliseconds before the start call returns, so the start call's
//! interval is a concurrent phase (`start_call`, see `crate::phases`), not a step between them.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Instant;

use async_trait::async_trait;
use isobench_container::{
    Container, ContainerError, Engine, EngineVersion, JupyterParams, LaunchConfig, MemoryReading,
    Network, SweepScope,
};
use tokio::sync::Mutex;

use super::{
    Backend, BackendError, BackendKind, ChannelPorts, ExitInfo, Instance, LaunchSpec, MemorySample,
    PhaseMark,
};

/// Options that select the container's init and OCI runtime.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DockerOptions {
    /// Run Docker's bundled init (`docker-init`, which is tini) as the container's PID 1.
    pub init: bool,
    /// OCI runtime name, such as `crun`; `None` uses the daemon's default runtime.
    pub runtime: Option<String>,
}

/// The Docker Engine backend.
#[derive(Debug)]
pub struct DockerBackend {
    engine: Engine,
    options: DockerOptions,
    /// Networks created so far, by run id.
    networks: Mutex<HashMap<String, Network>>,
}

impl DockerBackend {
    /// Connects to the Docker engine (`DOCKER_HOST` or the local socket) and checks that it
    /// has the requested OCI runtime.
    pub async fn connect(options: DockerOptions) -> Result<DockerBackend, BackendError> {
        let engine = Engine::connect().await.map_err(unavailable)?;
        if let Some(runtime) = &options.runtime {
            engine.require_runtime(runtime).await.map_err(unavailable)?;
        }
        Ok(DockerBackend {
            engine,
            options,
            networks: Mutex::new(HashMap::new()),
        })
    }

    /// Engine and API versions negotiated at connection time, for the host metadata.
    pub fn engine_version(&self) -> &EngineVersion {
        self.engine.version()
    }

    /// The engine connection.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Returns the run's network, creating it at the run's first launch.
    async fn network(&self, run_id: &str) -> Result<Network, ContainerError> {
        let mut networks = self.networks.lock().await;
        if let Some(network) = networks.get(run_id) {
            return Ok(network.clone());
        }
        let network = self.engine.create_network(run_id).await?;
        networks.insert(run_id.to_owned(), network.clone());
        Ok(network)
    }
}

#[async_trait]
impl Backend for DockerBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Docker
    }

    fn name(&self) -> String {
        backend_name(&self.options)
    }

    async fn launch(
        &self,
        spec: &LaunchSpec,
        _t0: Instant,
    ) -> Result<Box<dyn Instance>, BackendError> {
        let network = self.network(&spec.run_id).await.map_err(launch_error)?;
        let ports = spec.ports;
        let config = LaunchConfig {
            run_id: spec.run_id.clone(),
            trial: spec.trial,
            image: spec.image.docker_tag.clone(),
            network: network.name.clone(),
            vcpus: spec.vcpus,
            memory_mib: spec.memory_mib,
            jupyter: JupyterParams {
                key: spec.key.clone(),
                ports: [
                    ports.shell,
                    ports.iopub,
                    ports.stdin,
                    ports.control,
                    ports.heartbeat,
                ],
            },
            init: self.options.init,
            runtime: self.options.runtime.clone(),
        };
        let container = self.engine.launch(&config).await.map_err(launch_error)?;
        Ok(Box::new(DockerInstance {
            container: Some(container),
            ports,
        }))
    }

    /// Removes containers and networks of runs whose process is gone.
    async fn sweep(&self) -> Result<(), BackendError> {
        self.engine
            .sweep(&SweepScope::Stale)
            .await
            .map(|_| ())
            .map_err(other_error)
    }

    /// Removes everything of the runs this backend launched, networks included.
    async fn finish(&self) -> Result<(), BackendError> {
        let mut networks = self.networks.lock().await;
        for (run_id, _network) in networks.drain() {
            self.engine
                .sweep(&SweepScope::Run(run_id))
                .await
                .map_err(other_error)?;
        }
        Ok(())
    }
}

/// One container running the Jupyter kernel.
#[derive(Debug)]
struct DockerInstance {
    /// The container; `None` only while [`Instance::stop`] consumes it.
    container: Option<Container>,
    ports: ChannelPorts,
}

impl DockerInstance {
    fn container(&self) -> &Container {
        self.container
            .as_ref()
            .expect("container present until stop")
    }
}

#[async_trait]
impl Instance for DockerInstance {
    fn address(&self) -> Ipv4Addr {
        self.container().address()
    }

    fn ports(&self) -> ChannelPorts {
        self.ports
    }

    fn marks(&self) -> Vec<PhaseMark> {
        self.container()
            .marks()
            .into_iter()
            .map(|mark| PhaseMark {
                name: mark.name,
                at: mark.at,
            })
            .collect()
    }

    async fn wait_exit(&mut self) -> ExitInfo {
        let container = self
            .container
            .as_mut()
            .expect("container present until stop");
        match container.wait_exit().await {
            Ok(exit) => ExitInfo {
                status: exit.describe(),
                oom_killed: exit.oom_killed,
                last_output: exit.last_output,
            },
            // The engine went away, so no exit status exists; the status carries the error.
            Err(error) => ExitInfo {
                status: format!("unknown, {error}"),
                oom_killed: false,
                last_output: container.output_tail(),
            },
        }
    }

    async fn memory(&mut self) -> Result<MemorySample, BackendError> {
        let reading = self.container().memory().await.map_err(other_error)?;
        Ok(memory_sample(&reading))
    }

    async fn stop(mut self: Box<Self>) -> Result<Option<ExitInfo>, BackendError> {
        let container = self.container.take().expect("container present until stop");
        let exit = container.stop().await.map_err(other_error)?;
        Ok(exit.map(|exit| ExitInfo {
            status: exit.describe(),
            oom_killed: exit.oom_killed,
            last_output: exit.last_output,
        }))
    }
}

/// Name shown in results: `docker`, with `+RUNTIME` and `+init` when those options are set.
fn backend_name(options: &DockerOptions) -> String {
    let mut name = String::from("docker");
    if let Some(runtime) = &options.runtime {
        name.push('+');
        name.push_str(runtime);
    }
    if options.init {
        name.push_str("+init");
    }
    name
}

/// Maps a container reading onto the backend-neutral sample. The guest view is left to the
/// workload, which reads `/proc/meminfo` from a cell.
fn memory_sample(reading: &MemoryReading) -> MemorySample {
    MemorySample {
        host_pss_bytes: Some(reading.host_pss_bytes()),
        vmm_overhead_bytes: None,
        cgroup_working_set_bytes: Some(reading.cgroup.working_set_bytes),
        cgroup_usage_bytes: Some(reading.cgroup.usage_bytes),
        guest_view: None,
    }
}

fn unavailable(error: ContainerError) -> BackendError {
    BackendError::Unavailable {
        backend: BackendKind::Docker,
        reason: error.to_string(),
    }
}

fn launch_error(error: ContainerError) -> BackendError {
    BackendError::Launch(error_chain(&error))
}

fn other_error(error: ContainerError) -> BackendError {
    BackendError::Other(error_chain(&error))
}

/// Joins an error's message with its sources', so the daemon's own text is kept.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use isobench_workload::client::KernelClient;
    use isobench_workload::connection::{ChannelPorts, ConnectionInfo};

    use super::*;

    /// Runs one trial's cycle through the `Backend` and `Instance` traits on the real engine:
    /// launch, ready at the container's address, memory, stop, finish.
    #[tokio::test]
    async fn backend_runs_trial_cycle_on_real_engine() {
        let image = match crate::image::locate() {
            Ok(image) => image,
            Err(error) => {
                eprintln!(
                    "\n\n*** SKIPPED: no guest image ({error}); run `isobench image build` ***\n\n"
                );
                return;
            }
        };
        crate::image::import_docker_image(&image).await.unwrap();
        let backend = DockerBackend::connect(DockerOptions::default())
            .await
            .unwrap();
        let run_id = format!("test-backend-{}", std::process::id());
        let spec = LaunchSpec {
            run_id: run_id.clone(),
            trial: 0,
            image,
            key: "00112233445566778899aabbccddeeff".to_owned(),
            ports: ChannelPorts::GUEST_DEFAULT,
            vcpus: 1,
            memory_mib: 512,
            ready_deadline: Duration::from_secs(90),
        };

        let t0 = Instant::now();
        let mut instance = backend.launch(&spec, t0).await.unwrap();
        let info = ConnectionInfo {
            ip: instance.address(),
            ports: instance.ports(),
            key: spec.key.clone(),
        };
        let deadline = t0 + spec.ready_deadline;
        let mut client = KernelClient::connect(&info, deadline).await.unwrap();
        let ready = client.wait_ready(deadline).await.unwrap();
        let sample = instance.memory().await.unwrap();
        let marks: Vec<String> = instance.marks().into_iter().map(|mark| mark.name).collect();
        client.shutdown().await.unwrap();
        let exit = instance.stop().await.unwrap();
        backend.finish().await.unwrap();
        let leftovers = backend
            .engine()
            .sweep(&SweepScope::Run(run_id))
            .await
            .unwrap();

        assert!(ready.ready_at > t0);
        // The entrypoint's markers usually arrive before the start call returns.
        let mut sorted_names = marks.clone();
        sorted_names.sort();
        assert_eq!(
            sorted_names,
            [
                "container_created",
                "container_started",
                "exec_kernel",
                "init_started"
            ]
        );
        assert_eq!(marks[0], "container_created");
        assert!(sample.host_pss_bytes.unwrap() > 0);
        assert!(sample.cgroup_working_set_bytes.unwrap() <= sample.cgroup_usage_bytes.unwrap());
        assert!(exit.is_some());
        assert!(leftovers.containers.is_empty(), "{leftovers:?}");
        assert!(leftovers.networks.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn name_shows_runtime_and_init() {
        let options = DockerOptions {
            init: true,
            runtime: Some("crun".to_owned()),
        };
        let name = backend_name(&options);
        assert_eq!(name, "docker+crun+init");
    }

    #[test]
    fn error_chain_keeps_sources() {
        let error = ContainerError::Proc {
            path: "/proc/1/cgroup".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        let message = error_chain(&error);
        assert!(
            message.starts_with("cannot read /proc/1/cgroup: "),
            "{message}"
        );
    }
}
