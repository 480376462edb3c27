//! The guest image in the daemon's image store: imported from `rootfs.tar`, found by tag.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use bollard::query_parameters::CreateImageOptionsBuilder;
use futures_util::StreamExt;
use tokio_util::io::ReaderStream;
use tracing::info;

use crate::engine::Engine;
use crate::error::ContainerError;

/// Entrypoint of the guest image: the guest entrypoint that starts the Jupyter kernel.
pub const GUEST_ENTRYPOINT: &str = "/sbin/isobench-init";

/// Size of each chunk of the archive sent to the daemon; the import keeps about one chunk in
/// memory at a time, never the whole archive.
const IMPORT_CHUNK_BYTES: usize = 256 * 1024;

/// Outcome of [`Engine::ensure_image`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageStatus {
    /// The tag already existed, so nothing was imported.
    Present,
    /// The archive was imported under the tag.
    Imported,
}

impl Engine {
    /// Returns whether the daemon has an image tagged `tag`.
    pub async fn image_exists(&self, tag: &str) -> Result<bool, ContainerError> {
        let inspected = self
            .call(
                format!("inspect image {tag}"),
                self.docker().inspect_image(tag),
            )
            .await;
        match inspected {
            Ok(_) => Ok(true),
            Err(error) if error.status_code() == Some(404) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Returns an error naming the build command unless the daemon has an image tagged `tag`.
    pub async fn require_image(&self, tag: &str) -> Result<(), ContainerError> {
        if self.image_exists(tag).await? {
            Ok(())
        } else {
            Err(ContainerError::ImageMissing {
                tag: tag.to_string(),
            })
        }
    }

    /// Imports the root filesystem archive `rootfs_tar` as image `tag` (`REPOSITORY:TAG`),
    /// with [`GUEST_ENTRYPOINT`] as its entrypoint, unless the tag already exists.
    ///
    /// The archive is streamed to the daemon in chunks, so the caller's memory stays far below
    /// the archive's size. The daemon sets the tag only when the import completes, so a failed
    /// or interrupted import leaves no tag behind.
    pub async fn ensure_image(
        &self,
        rootfs_tar: &Path,
        tag: &str,
    ) -> Result<ImageStatus, ContainerError> {
        let (repository, tag_part) = split_tag(tag)?;
        if self.image_exists(tag).await? {
            return Ok(ImageStatus::Present);
        }

        let tar_error = |source| ContainerError::RootfsTar {
            path: rootfs_tar.to_path_buf(),
            source,
        };
        let file = tokio::fs::File::open(rootfs_tar).await.map_err(tar_error)?;
        let size_bytes = file.metadata().await.map_err(tar_error)?.len();

        let options = CreateImageOptionsBuilder::new()
            .from_src("-")
            .repo(repository)
            .tag(tag_part)
            .message("isobench guest image")
            .changes(vec![format!("ENTRYPOINT [\"{GUEST_ENTRYPOINT}\"]")])
            .build();
        // A read error of the archive reaches bollard only as a broken request body; keep it so
        // the error names the archive, not the daemon.
        let read_error: Arc<Mutex<Option<std::io::Error>>> = Arc::default();
        let chunks = ReaderStream::with_capacity(file, IMPORT_CHUNK_BYTES).map({
            let read_error = Arc::clone(&read_error);
            move |chunk| {
                chunk.inspect_err(|error| {
                    let copy = std::io::Error::new(error.kind(), error.to_string());
                    *read_error.lock().unwrap_or_else(PoisonError::into_inner) = Some(copy);
                })
            }
        });
        let body = bollard::body_try_stream(chunks);

        let started = Instant::now();
        let import = async {
            let mut progress = self.docker().create_image(Some(options), Some(body), None);
            while let Some(message) = progress.next().await {
                message?;
            }
            Ok(())
        };
        let operation = format!("import {} as {tag}", rootfs_tar.display());
        let imported = tokio::time::timeout(self.import_timeout(), import).await;
        match imported {
            Ok(Ok(())) => {}
            Ok(Err(source)) => {
                if let Some(error) = read_error
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take()
                {
                    return Err(tar_error(error));
                }
                return Err(
                    match self.classify(operation, source, self.import_timeout()) {
                        ContainerError::Api { source, .. } => ContainerError::Import {
                            path: rootfs_tar.to_path_buf(),
                            tag: tag.to_string(),
                            source,
                        },
                        other => other,
                    },
                );
            }
            Err(_elapsed) => return Err(self.timeout_error(operation, self.import_timeout())),
        }

        // The import stream ends without an error also when the daemon dropped the request
        // half-way; only the tag's presence proves the import.
        self.require_image(tag).await?;
        info!(
            tag,
            size_bytes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "imported the guest image"
        );
        Ok(ImageStatus::Imported)
    }
}

/// Splits `REPOSITORY:TAG` at the tag's colon; a colon before the last `/` belongs to a
/// registry host and port, not the tag.
fn split_tag(tag: &str) -> Result<(&str, &str), ContainerError> {
    let invalid = || ContainerError::InvalidTag {
        tag: tag.to_string(),
    };
    let name_start = tag.rfind('/').map_or(0, |slash| slash + 1);
    let colon = tag[name_start..].rfind(':').ok_or_else(invalid)? + name_start;
    let (repository, tag_part) = (&tag[..colon], &tag[colon + 1..]);
    let tag_is_valid = !tag_part.is_empty()
        && tag_part.len() <= 128
        && tag_part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if repository.is_empty() || !tag_is_valid {
        return Err(invalid());
    }
    Ok((repository, tag_part))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_tag_separates_repository_and_tag() {
        assert_eq!(
            split_tag("isobench-guest:0a1b").unwrap(),
            ("isobench-guest", "0a1b")
        );
    }

    #[test]
    fn split_tag_keeps_registry_port_in_repository() {
        assert_eq!(
            split_tag("localhost:5000/guest:v1").unwrap(),
            ("localhost:5000/guest", "v1")
        );
    }

    #[test]
    fn split_tag_rejects_missing_tag() {
        assert!(matches!(
            split_tag("isobench-guest"),
            Err(ContainerError::InvalidTag { .. })
        ));
        assert!(matches!(
            split_tag("isobench-guest:"),
            Err(ContainerError::InvalidTag { .. })
        ));
        assert!(matches!(
            split_tag(":abc"),
            Err(ContainerError::InvalidTag { .. })
        ));
        assert!(matches!(
            split_tag("guest:a/b"),
            Err(ContainerError::InvalidTag { .. })
        ));
    }
}
