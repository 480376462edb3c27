//! Docker Engine driver that runs the isobench guest image as a container.
//!
//! Every call goes to the Engine API through `bollard`; nothing shells out to the `docker`
//! command-line client. The steps a trial takes, in order:
//!
//! 1. [`Engine::connect`] reaches the daemon (`DOCKER_HOST` or the local Unix socket) and
//!    negotiates the API version.
//! 2. [`Engine::ensure_image`] imports the guest image's `rootfs.tar` under its tag, streaming
//!    the file, with `/sbin/isobench-init` as the entrypoint.
#![deny(missing_docs)]

mod engine;
mod error;
mod image;

pub use engine::{Engine, EngineVersion, DEFAULT_CALL_TIMEOUT, DEFAULT_IMPORT_TIMEOUT};
pub use error::ContainerError;
pub use image::{ImageStatus, GUEST_ENTRYPOINT};
