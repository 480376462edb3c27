//! The guest image in the Docker engine: `rootfs.tar` imported under the image's tag.

use std::time::Instant;

use isobench_container::{Engine, ImageStatus as EngineImageStatus};
use serde::{Deserialize, Serialize};

use crate::backend::GuestImagePaths;
use crate::image::ImageError;

/// Whether the Docker engine has the guest image's tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum DockerImageState {
    /// The engine has the tag.
    Present,
    /// The engine responds but lacks the tag.
    Missing,
    /// The engine is unreachable. `message` is the driver's error, with what to do.
    EngineUnreachable {
        /// The engine driver's error.
        message: String,
    },
}

/// Outcome of [`import_docker_image`].
#[derive(Debug, Clone, PartialEq)]
pub enum ImportOutcome {
    /// The tag already existed.
    Present,
    /// `rootfs.tar` was imported now, taking this many seconds.
    Imported {
        /// Wall time of the import, in seconds.
        seconds: f64,
    },
}

/// Asks the Docker engine named by `DOCKER_HOST` (or the local socket) whether it has `tag`.
pub async fn docker_image_state(tag: &str) -> DockerImageState {
    let engine = match Engine::connect().await {
        Ok(engine) => engine,
        Err(error) => {
            return DockerImageState::EngineUnreachable {
                message: error.to_string(),
            }
        }
    };
    match engine.image_exists(tag).await {
        Ok(true) => DockerImageState::Present,
        Ok(false) => DockerImageState::Missing,
        Err(error) => DockerImageState::EngineUnreachable {
            message: error.to_string(),
        },
    }
}

/// Imports the guest image's `rootfs.tar` into the Docker engine under its tag, streaming the
/// file, unless the tag exists already.
pub async fn import_docker_image(paths: &GuestImagePaths) -> Result<ImportOutcome, ImageError> {
    let tag = paths.docker_tag.clone();
    let docker_error = |source| ImageError::DockerImport {
        tag: tag.clone(),
        source: Box::new(source),
    };
    let engine = Engine::connect().await.map_err(docker_error)?;
    let started = Instant::now();
    match engine
        .ensure_image(&paths.rootfs_tar, &paths.docker_tag)
        .await
        .map_err(docker_error)?
    {
        EngineImageStatus::Present => Ok(ImportOutcome::Present),
        EngineImageStatus::Imported => Ok(ImportOutcome::Imported {
            seconds: started.elapsed().as_secs_f64(),
        }),
    }
}
