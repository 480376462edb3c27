//! Errors of the Docker Engine driver.

use std::path::PathBuf;
use std::time::Duration;

/// Failure of a Docker Engine operation; each message names the value involved and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// The daemon address (`DOCKER_HOST`) has a form the driver cannot connect to.
    #[error(
        "invalid Docker host {host:?}: expected unix:///PATH, tcp://HOST:PORT or http://HOST:PORT"
    )]
    InvalidHost {
        /// The rejected address.
        host: String,
        /// bollard's parse error.
        #[source]
        source: bollard::errors::Error,
    },

    /// The daemon did not accept the connection or did not respond to the version request.
    #[error("cannot reach the Docker engine at {host}; start it with scripts/setup-host")]
    EngineUnreachable {
        /// Socket or URL the driver tried.
        host: String,
        /// The connection failure.
        #[source]
        source: bollard::errors::Error,
    },

    /// A call got no response within its timeout, so the daemon is stopped or hung.
    #[error(
        "the Docker engine at {host} timed out on {operation} after {timeout:?}; \
         check that it is running (scripts/setup-host starts it)"
    )]
    Timeout {
        /// Socket or URL of the daemon.
        host: String,
        /// The call that timed out, with the object it concerned.
        operation: String,
        /// How long the driver waited.
        timeout: Duration,
    },

    /// The daemon returned an error response, or the connection broke during the call.
    #[error("Docker engine call {operation} failed")]
    Api {
        /// The call that failed, with the object it concerned.
        operation: String,
        /// The daemon's error or the transport failure.
        #[source]
        source: bollard::errors::Error,
    },

    /// The guest image's tag is not in the daemon's image store.
    #[error("image {tag} not found in the Docker engine; build it with `isobench image build`")]
    ImageMissing {
        /// The missing tag.
        tag: String,
    },

    /// An image tag without a repository or with a malformed tag part.
    #[error("invalid image tag {tag:?}: expected REPOSITORY:TAG, such as isobench-guest:0123abcd")]
    InvalidTag {
        /// The rejected tag.
        tag: String,
    },

    /// The root filesystem archive cannot be opened or read.
    #[error(
        "cannot read root filesystem archive {}; build it with `isobench image build`",
        path.display()
    )]
    RootfsTar {
        /// Path of the archive.
        path: PathBuf,
        /// The I/O failure.
        #[source]
        source: std::io::Error,
    },

    /// The daemon rejected the root filesystem archive during the import.
    #[error("importing {} as image {tag} failed", path.display())]
    Import {
        /// Path of the archive.
        path: PathBuf,
        /// The tag being imported.
        tag: String,
        /// The daemon's error.
        #[source]
        source: bollard::errors::Error,
    },
}

impl ContainerError {
    /// Returns the HTTP status of the daemon's error response, if this is an API error.
    pub fn status_code(&self) -> Option<u16> {
        match self {
            ContainerError::Api { source, .. } | ContainerError::Import { source, .. } => {
                status_code(source)
            }
            _ => None,
        }
    }
}

/// Returns the HTTP status of a daemon error response.
pub(crate) fn status_code(error: &bollard::errors::Error) -> Option<u16> {
    match error {
        bollard::errors::Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}
