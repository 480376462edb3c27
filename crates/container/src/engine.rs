//! Connection to the Docker daemon: host selection, API version negotiation and the timeout
//! that bounds every call.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;
use tracing::debug;

use crate::error::ContainerError;

/// Socket used when `DOCKER_HOST` is unset.
pub const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";

/// Time allowed for one ordinary Engine API call (inspect, create, start, remove).
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Time allowed for importing a root filesystem archive. Debian's engine 20.10 imported a
/// 413 MB archive in about 7 s; the margin covers slow disks and busy hosts.
pub const DEFAULT_IMPORT_TIMEOUT: Duration = Duration::from_secs(900);

/// Versions the daemon reported, recorded with every result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineVersion {
    /// Engine release, such as `20.10.24+dfsg1`.
    pub engine: String,
    /// API version both sides speak after negotiation, such as `1.41`.
    pub api: String,
    /// Newest API version the daemon supports.
    pub server_api: String,
}

/// A connection to one Docker daemon.
///
/// Cloning is cheap: clones share the HTTP connection pool.
#[derive(Debug, Clone)]
pub struct Engine {
    docker: Docker,
    host: String,
    version: EngineVersion,
    call_timeout: Duration,
    import_timeout: Duration,
    /// OCI runtime names, read from the daemon once and shared by clones.
    runtimes: Arc<OnceCell<Vec<String>>>,
}

impl Engine {
    /// Connects to the daemon named by `DOCKER_HOST`, or the local Unix socket
    /// `/var/run/docker.sock` when it is unset, and negotiates the API version.
    pub async fn connect() -> Result<Engine, ContainerError> {
        let host = std::env::var("DOCKER_HOST")
            .ok()
            .filter(|value| !value.is_empty())
            .unwrap_or_else(|| DEFAULT_HOST.to_string());
        Engine::connect_to(&host, DEFAULT_CALL_TIMEOUT).await
    }

    /// Connects to the daemon at `host` (`unix://PATH`, `tcp://HOST:PORT` or `http://HOST:PORT`)
    /// and negotiates the API version; `call_timeout` bounds this and every later ordinary call.
    pub async fn connect_to(host: &str, call_timeout: Duration) -> Result<Engine, ContainerError> {
        let docker = Docker::connect_with_host(host).map_err(|source| match source {
            // bollard checks that the socket file exists before the first request.
            bollard::errors::Error::SocketNotFoundError(_) => ContainerError::EngineUnreachable {
                host: host.to_string(),
                source,
            },
            source => ContainerError::InvalidHost {
                host: host.to_string(),
                source,
            },
        })?;
        // bollard's own timeout bounds only the wait for response headers. `call` bounds each
        // call as a whole, so bollard's limit only has to be the longest of those.
        let docker = docker.with_timeout(DEFAULT_IMPORT_TIMEOUT);

        let mut engine = Engine {
            docker,
            host: host.to_string(),
            version: EngineVersion {
                engine: String::new(),
                api: String::new(),
                server_api: String::new(),
            },
            call_timeout,
            import_timeout: DEFAULT_IMPORT_TIMEOUT,
            runtimes: Arc::default(),
        };

        // The first call decides between "unreachable" and a working daemon; bollard starts
        // at its own newest API version and steps down to the daemon's.
        let negotiated = engine
            .call(
                "version negotiation".to_string(),
                engine.docker.clone().negotiate_version(),
            )
            .await?;
        engine.docker = negotiated;
        let server = engine
            .call("version".to_string(), engine.docker.version())
            .await?;
        engine.version = EngineVersion {
            engine: server.version.unwrap_or_default(),
            api: engine.docker.client_version().to_string(),
            server_api: server.api_version.unwrap_or_default(),
        };
        debug!(host, version = ?engine.version, "connected to the Docker engine");
        Ok(engine)
    }

    /// Sets the time allowed for importing a root filesystem archive.
    pub fn with_import_timeout(mut self, timeout: Duration) -> Engine {
        self.import_timeout = timeout;
        self
    }

    /// Socket or URL of the daemon.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Engine and API versions, as negotiated at connection time.
    pub fn version(&self) -> &EngineVersion {
        &self.version
    }

    /// Returns the cgroup version the daemon reports (`1` or `2`), or `None` if it does not
    /// say (engines before API 1.40).
    pub async fn cgroup_version(&self) -> Result<Option<String>, ContainerError> {
        let info = self.call("info".to_string(), self.docker().info()).await?;
        let version = info.cgroup_version.map(|version| version.to_string());
        Ok(version.filter(|version| !version.is_empty()))
    }

    /// Time allowed for one ordinary Engine API call.
    pub fn call_timeout(&self) -> Duration {
        self.call_timeout
    }

    pub(crate) fn import_timeout(&self) -> Duration {
        self.import_timeout
    }

    pub(crate) fn runtime_cache(&self) -> &OnceCell<Vec<String>> {
        &self.runtimes
    }

    pub(crate) fn docker(&self) -> &Docker {
        &self.docker
    }

    /// Runs one Engine API call under the call timeout and names it in any error.
    pub(crate) async fn call<T>(
        &self,
        operation: String,
        request: impl Future<Output = Result<T, bollard::errors::Error>>,
    ) -> Result<T, ContainerError> {
        self.call_within(self.call_timeout, operation, request)
            .await
    }

    /// Runs one Engine API call under `timeout` and names it in any error.
    pub(crate) async fn call_within<T>(
        &self,
        timeout: Duration,
        operation: String,
        request: impl Future<Output = Result<T, bollard::errors::Error>>,
    ) -> Result<T, ContainerError> {
        match tokio::time::timeout(timeout, request).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(source)) => Err(self.classify(operation, source, timeout)),
            Err(_elapsed) => Err(self.timeout_error(operation, timeout)),
        }
    }

    /// Turns a bollard error into the driver's error: transport failures mean the daemon is
    /// gone, and daemon error responses keep their status code.
    pub(crate) fn classify(
        &self,
        operation: String,
        source: bollard::errors::Error,
        timeout: Duration,
    ) -> ContainerError {
        use bollard::errors::Error as E;
        match source {
            E::RequestTimeoutError => self.timeout_error(operation, timeout),
            E::IOError { .. }
            | E::HyperResponseError { .. }
            | E::HyperLegacyError { .. }
            | E::HttpClientError { .. }
            | E::SocketNotFoundError(_) => ContainerError::EngineUnreachable {
                host: self.host.clone(),
                source,
            },
            source => ContainerError::Api { operation, source },
        }
    }

    pub(crate) fn timeout_error(&self, operation: String, timeout: Duration) -> ContainerError {
        ContainerError::Timeout {
            host: self.host.clone(),
            operation,
            timeout,
        }
    }
}
