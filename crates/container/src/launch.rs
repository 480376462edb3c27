//! Launching the guest image as a container: create, attach, start, in that order, with the
//! microVM's resource limits.
//!
//! ```text
//!   create ──► "container_created"      (name, labels, limits, read-only root, tmpfs)
//!   attach ──► reader task              (stdout and stderr; stamps markers, keeps the tail)
//!   start  ──► "container_started"      (inserted in time order: markers may come first)
//!   inspect ─► address on the run's network, PID of the container's init
//! ```
//!
//! Attaching before start means no byte the entrypoint writes is lost. If any step after
//! create fails, or the launch future is dropped, the guard removes the container.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Instant;

use bollard::models::{ContainerCreateBody, EndpointSettings, HostConfig, NetworkingConfig};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, InspectContainerOptions,
    StartContainerOptions,
};
use tracing::debug;

use crate::container::{insert_mark, spawn_output_reader, Container, Mark, RemovalGuard};
use crate::engine::Engine;
use crate::error::ContainerError;
use crate::network::{validate_run_id, NAME_PREFIX};
use crate::owner::{self, RUN_ID_LABEL};

/// Smallest memory limit the Docker engine accepts (6 MiB in engine 20.10).
pub const MIN_MEMORY_MIB: u32 = 6;

/// Timeout the engine waits between `SIGTERM` and `SIGKILL` when stopping, in seconds. The
/// Jupyter kernel has exited after its shutdown request by then, so this only bounds a stop of
/// a kernel that did not, and no figure includes Docker's default 10 s grace.
pub const STOP_TIMEOUT_S: i32 = 1;

/// Jupyter connection parameters handed to the guest entrypoint through its environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JupyterParams {
    /// HMAC-SHA256 key as hex (`ISOBENCH_KEY`); empty disables message signing.
    pub key: String,
    /// Shell, IOPub, stdin, control and heartbeat ports, in that order (`ISOBENCH_PORTS`).
    pub ports: [u16; 5],
}

/// Everything [`Engine::launch`] needs for one container.
#[derive(Debug, Clone)]
pub struct LaunchConfig {
    /// Run id, carried in the container's name and labels.
    pub run_id: String,
    /// Trial number within the run, part of the container's name.
    pub trial: u32,
    /// Image tag, such as `isobench-guest:<image id>`.
    pub image: String,
    /// Name or id of the run's network (see [`Engine::create_network`]).
    pub network: String,
    /// CPU limit in whole CPUs, applied as `NanoCPUs`.
    pub vcpus: u32,
    /// Memory limit in MiB; swap is disabled by setting the memory-plus-swap limit equal to it.
    pub memory_mib: u32,
    /// Jupyter connection parameters.
    pub jupyter: JupyterParams,
    /// Whether Docker's bundled init (`docker-init`, which is tini) runs as PID 1 and starts
    /// the guest entrypoint.
    pub init: bool,
    /// OCI runtime name, such as `crun`; `None` uses the daemon's default runtime.
    pub runtime: Option<String>,
}

impl LaunchConfig {
    /// Container name, `isobench-<run id>-<trial>`.
    pub fn container_name(&self) -> String {
        format!("{NAME_PREFIX}{}-{}", self.run_id, self.trial)
    }
}

impl Engine {
    /// Creates, attaches to and starts one container of the guest image on the run's network,
    /// stamping `container_created` and `container_started` when those calls return and every
    /// entrypoint marker when it arrives on standard output.
    pub async fn launch(&self, config: &LaunchConfig) -> Result<Container, ContainerError> {
        validate_run_id(&config.run_id)?;
        validate_limits(config)?;
        if let Some(runtime) = &config.runtime {
            self.require_runtime(runtime).await?;
        }

        let name = config.container_name();
        let id = self.create_container(config, &name).await?;
        let created_at = Instant::now();
        let mut guard = RemovalGuard::new(self.clone(), id.clone());

        let marks = vec![Mark {
            name: "container_created".to_string(),
            at: created_at,
        }];
        let container = match self.attach_and_start(config, &id, &name, marks).await {
            Ok(container) => container,
            Err(error) => {
                guard.remove_now().await;
                return Err(error);
            }
        };
        guard.disarm();
        Ok(container)
    }

    /// Creates the container; a name clash with a container of the same run that was never
    /// started counts as this create having succeeded earlier.
    async fn create_container(
        &self,
        config: &LaunchConfig,
        name: &str,
    ) -> Result<String, ContainerError> {
        let options = CreateContainerOptionsBuilder::new().name(name).build();
        let body = container_body(config);
        let created = self
            .call(
                format!("create container {name}"),
                self.docker().create_container(Some(options), body),
            )
            .await;
        match created {
            Ok(created) => {
                for warning in &created.warnings {
                    tracing::warn!(container = name, warning, "Docker engine warning at create");
                }
                Ok(created.id)
            }
            Err(error) if error.status_code() == Some(409) => {
                self.adopt_created(config, name).await
            }
            Err(error) => Err(map_create_error(error, config)),
        }
    }

    /// Returns the id of the existing container `name` if it belongs to this run and has not
    /// been started; anything else is a name clash.
    async fn adopt_created(
        &self,
        config: &LaunchConfig,
        name: &str,
    ) -> Result<String, ContainerError> {
        let clash = || ContainerError::NameClash {
            kind: "container",
            name: name.to_string(),
        };
        let existing = self
            .call(
                format!("inspect container {name}"),
                self.docker()
                    .inspect_container(name, None::<InspectContainerOptions>),
            )
            .await?;
        let labels = existing
            .config
            .as_ref()
            .and_then(|config| config.labels.clone())
            .unwrap_or_default();
        let same_run = labels.get(RUN_ID_LABEL) == Some(&config.run_id);
        let never_started = existing
            .state
            .as_ref()
            .and_then(|state| state.status)
            .is_some_and(|status| status == bollard::models::ContainerStateStatusEnum::CREATED);
        match (same_run, never_started, existing.id) {
            (true, true, Some(id)) => Ok(id),
            _ => Err(clash()),
        }
    }

    async fn attach_and_start(
        &self,
        config: &LaunchConfig,
        id: &str,
        name: &str,
        marks: Vec<Mark>,
    ) -> Result<Container, ContainerError> {
        let attach_options = AttachContainerOptionsBuilder::new()
            .stream(true)
            .stdout(true)
            .stderr(true)
            .logs(false)
            .build();
        let attached = self
            .call(
                format!("attach to container {name}"),
                self.docker().attach_container(id, Some(attach_options)),
            )
            .await?;
        // Reading starts before start, so a marker written while the start call is still in
        // flight is stamped when it arrives, not when the call returns.
        let (marks, output, reader) = spawn_output_reader(attached.output, marks);
        let mut reader = AbortOnDrop(Some(reader));

        let started = self
            .call(
                format!("start container {name}"),
                self.docker()
                    .start_container(id, None::<StartContainerOptions>),
            )
            .await;
        let started_at = Instant::now();
        // 304: already started, by an earlier attempt of this same launch.
        match started {
            Ok(()) => {}
            Err(error) if error.status_code() == Some(304) => {}
            Err(error) => return Err(error),
        }
        insert_mark(
            &marks,
            Mark {
                name: "container_started".to_string(),
                at: started_at,
            },
        );

        let inspected = self
            .call(
                format!("inspect container {name}"),
                self.docker()
                    .inspect_container(id, None::<InspectContainerOptions>),
            )
            .await?;
        let init_pid = inspected
            .state
            .as_ref()
            .and_then(|state| state.pid)
            .and_then(|pid| u32::try_from(pid).ok())
            .filter(|pid| *pid > 0);
        let address = inspected
            .network_settings
            .and_then(|settings| settings.networks)
            .and_then(|networks| find_address(&networks, &config.network));
        let address = address.ok_or_else(|| ContainerError::AddressMissing {
            container: name.to_string(),
            network: config.network.clone(),
        })?;
        debug!(container = name, %address, ?init_pid, "container started");

        let reader = reader.0.take().expect("reader present until handed over");
        Ok(Container::new(
            self.clone(),
            id.to_string(),
            name.to_string(),
            address,
            init_pid,
            marks,
            output,
            reader,
        ))
    }

    /// Returns the names of the OCI runtimes the daemon has, such as `runc` and `crun`. The
    /// list is read once per connection, because the daemon changes it only on restart.
    pub async fn runtimes(&self) -> Result<Vec<String>, ContainerError> {
        let names = self
            .runtime_cache()
            .get_or_try_init(|| async {
                let info = self.call("info".to_string(), self.docker().info()).await?;
                let mut names: Vec<String> =
                    info.runtimes.unwrap_or_default().into_keys().collect();
                names.sort();
                Ok::<_, ContainerError>(names)
            })
            .await?;
        Ok(names.clone())
    }

    /// Returns an error naming the daemon's runtimes unless it has a runtime called `runtime`.
    pub async fn require_runtime(&self, runtime: &str) -> Result<(), ContainerError> {
        let available = self.runtimes().await?;
        if available.iter().any(|name| name == runtime) {
            Ok(())
        } else {
            Err(ContainerError::UnknownRuntime {
                runtime: runtime.to_string(),
                available,
            })
        }
    }
}

/// Aborts the output reader if the launch fails before handing it to the [`Container`].
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(reader) = self.0.take() {
            reader.abort();
        }
    }
}

fn validate_limits(config: &LaunchConfig) -> Result<(), ContainerError> {
    if config.vcpus == 0 {
        return Err(ContainerError::InvalidCpuLimit {
            vcpus: config.vcpus,
        });
    }
    if config.memory_mib < MIN_MEMORY_MIB {
        return Err(ContainerError::MemoryLimitTooSmall {
            memory_mib: config.memory_mib,
            min_mib: MIN_MEMORY_MIB,
        });
    }
    Ok(())
}

/// Builds the create request: resource limits equal to the microVM's, a read-only root with
/// tmpfs on `/tmp` and `/run`, no published ports, the run's labels.
fn container_body(config: &LaunchConfig) -> ContainerCreateBody {
    let memory_bytes = i64::from(config.memory_mib) * 1024 * 1024;
    let mut tmpfs = HashMap::new();
    // Sizes are left to the kernel's default (half of RAM); the memory limit bounds them.
    tmpfs.insert("/tmp".to_string(), "rw,nosuid,nodev,mode=1777".to_string());
    tmpfs.insert("/run".to_string(), "rw,nosuid,nodev,mode=755".to_string());

    let host_config = HostConfig {
        nano_cpus: Some(i64::from(config.vcpus) * 1_000_000_000),
        memory: Some(memory_bytes),
        memory_swap: Some(memory_bytes),
        readonly_rootfs: Some(true),
        tmpfs: Some(tmpfs),
        init: Some(config.init),
        runtime: config.runtime.clone(),
        network_mode: Some(config.network.clone()),
        auto_remove: Some(false),
        ..Default::default()
    };
    let mut endpoints = HashMap::new();
    endpoints.insert(config.network.clone(), EndpointSettings::default());

    let ports = config.jupyter.ports.map(|port| port.to_string()).join(",");
    ContainerCreateBody {
        image: Some(config.image.clone()),
        hostname: Some("isobench".to_string()),
        env: Some(vec![
            "ISOBENCH_IP=0.0.0.0".to_string(),
            format!("ISOBENCH_KEY={}", config.jupyter.key),
            format!("ISOBENCH_PORTS={ports}"),
        ]),
        labels: Some(owner::labels(&config.run_id)),
        attach_stdin: Some(false),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        tty: Some(false),
        open_stdin: Some(false),
        stop_timeout: Some(i64::from(STOP_TIMEOUT_S)),
        host_config: Some(host_config),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(endpoints),
        }),
        ..Default::default()
    }
}

/// Finds the container's IPv4 address on `network`, given by name or id.
fn find_address(networks: &HashMap<String, EndpointSettings>, network: &str) -> Option<Ipv4Addr> {
    let endpoint = networks.get(network).or_else(|| {
        networks
            .values()
            .find(|endpoint| endpoint.network_id.as_deref() == Some(network))
    })?;
    endpoint.ip_address.as_deref()?.parse().ok()
}

/// Names the usual causes of a failed create: a missing image, an unknown network.
fn map_create_error(error: ContainerError, config: &LaunchConfig) -> ContainerError {
    let message = api_message(&error).unwrap_or_default();
    match error.status_code() {
        Some(404) if message.contains("image") => ContainerError::ImageMissing {
            tag: config.image.clone(),
        },
        Some(404) if message.contains("network") => ContainerError::NetworkMissing {
            network: config.network.clone(),
        },
        _ => error,
    }
}

/// Returns the daemon's error message of an API error.
fn api_message(error: &ContainerError) -> Option<&str> {
    match error {
        ContainerError::Api {
            source: bollard::errors::Error::DockerResponseServerError { message, .. },
            ..
        } => Some(message),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> LaunchConfig {
        LaunchConfig {
            run_id: "run1".to_string(),
            trial: 3,
            image: "isobench-guest:abc".to_string(),
            network: "isobench-run1".to_string(),
            vcpus: 2,
            memory_mib: 512,
            jupyter: JupyterParams {
                key: "00ff".to_string(),
                ports: [50001, 50002, 50003, 50004, 50005],
            },
            init: false,
            runtime: None,
        }
    }

    #[test]
    fn container_name_carries_run_and_trial() {
        assert_eq!(config().container_name(), "isobench-run1-3");
    }

    #[test]
    fn body_sets_limits_without_swap() {
        let host = container_body(&config()).host_config.unwrap();
        assert_eq!(host.nano_cpus, Some(2_000_000_000));
        assert_eq!(host.memory, Some(512 << 20));
        assert_eq!(host.memory_swap, host.memory);
    }

    #[test]
    fn body_has_read_only_root_and_tmpfs() {
        let host = container_body(&config()).host_config.unwrap();
        assert_eq!(host.readonly_rootfs, Some(true));
        let tmpfs = host.tmpfs.unwrap();
        assert!(tmpfs.contains_key("/tmp"));
        assert!(tmpfs.contains_key("/run"));
    }

    #[test]
    fn body_publishes_no_ports() {
        let body = container_body(&config());
        assert!(body.exposed_ports.is_none());
        assert!(body.host_config.unwrap().port_bindings.is_none());
    }

    #[test]
    fn body_passes_jupyter_parameters() {
        let env = container_body(&config()).env.unwrap();
        assert!(env.contains(&"ISOBENCH_KEY=00ff".to_string()));
        assert!(env.contains(&"ISOBENCH_PORTS=50001,50002,50003,50004,50005".to_string()));
        assert!(env.contains(&"ISOBENCH_IP=0.0.0.0".to_string()));
    }

    #[test]
    fn body_labels_run_id() {
        let labels = container_body(&config()).labels.unwrap();
        assert_eq!(labels.get(RUN_ID_LABEL).map(String::as_str), Some("run1"));
    }

    #[test]
    fn limits_reject_zero_cpus() {
        let mut config = config();
        config.vcpus = 0;
        assert!(matches!(
            validate_limits(&config),
            Err(ContainerError::InvalidCpuLimit { .. })
        ));
    }

    #[test]
    fn limits_reject_memory_below_engine_minimum() {
        let mut config = config();
        config.memory_mib = MIN_MEMORY_MIB - 1;
        let error = validate_limits(&config).unwrap_err();
        assert!(matches!(error, ContainerError::MemoryLimitTooSmall { .. }));
    }
}
