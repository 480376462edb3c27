//! The guest image: one guest kernel and one root filesystem, built from the recipes in
//! `guest-images/` and cached by the hash of those recipes.
//!
//! Backends call [`locate`] for the paths of the built image, or [`locate_rootfs`] when they
//! use no guest kernel. Both accept a cached set only when [`Cache::check`] finds it complete.
//! `isobench image build` calls [`build`] or [`build_sets`], which run the `build.sh` of each
//! artifact set that is missing or damaged as a child process. [`ArtifactSet::required_by`]
//! names the sets that a run of given backends needs. Two sets build in parallel, because the
//! kernel is CPU-bound and the root filesystem mostly waits on the Debian archive. Then [`import_docker_image`] streams `rootfs.tar` into the
//! Docker engine under the tag derived from the image id.

mod build;
mod cache;
mod check;
mod cleanup;
mod docker;
mod recipe;
mod status;

use std::path::PathBuf;

pub use build::{
    build, build_sets, find_program, BuildProgress, BuildSummary, SetOutcome, BUILD_TOOLS,
};
pub use cache::{
    locate, locate_rootfs, Cache, Manifest, ManifestFile, CACHE_DIR_ENV, MANIFEST_FILE,
};
pub use check::{SetDamage, SetState, HASHED_MAX_BYTES};
pub use docker::{docker_image_state, import_docker_image, DockerImageState, ImportOutcome};
pub use recipe::{
    hash_recipe, image_id, ArtifactSet, RecipeFile, RecipeHashes, HASH_HEX_DIGITS, KERNEL_RECIPE,
    ROOTFS_RECIPE,
};
pub use status::{status, ArtifactStatus, ImageStatus, SetStatus};

/// Failure of a guest image operation; each message names the value involved and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// None of `ISOBENCH_CACHE_DIR`, `XDG_CACHE_HOME` and `HOME` is set.
    #[error("no cache folder: set ISOBENCH_CACHE_DIR (or HOME) to a writable folder")]
    NoCacheDir,

    /// The cache folder's path names a file or another non-folder.
    #[error(
        "the cache folder {} is not a folder: set ISOBENCH_CACHE_DIR to a writable folder",
        .0.display()
    )]
    CacheNotFolder(PathBuf),

    /// An artifact set of the guest image is not in the cache.
    #[error("guest image not built: {set} artifacts missing at {}; run `isobench image build`", dir.display())]
    NotBuilt {
        /// `kernel` or `rootfs`.
        set: &'static str,
        /// Folder the complete set would have.
        dir: PathBuf,
    },

    /// An artifact set of the guest image is in the cache but fails the check against its
    /// manifest.
    #[error(
        "the cached guest {set} is damaged: {damage}; run `isobench image build --only {set}` \
         to rebuild it"
    )]
    Damaged {
        /// `kernel` or `rootfs`.
        set: &'static str,
        /// The first file that is wrong.
        damage: SetDamage,
    },

    /// Building needs root: mmdebstrap, chroot and file ownership in the tree.
    #[error("building the guest image needs root (mmdebstrap, chroot, file owners): run as root")]
    NotRoot,

    /// A program a build step runs is not installed.
    #[error(
        "{program} not found on PATH, needed to build the guest {set}: run scripts/setup-host"
    )]
    ToolMissing {
        /// The missing program.
        program: &'static str,
        /// `kernel` or `rootfs`.
        set: &'static str,
    },

    /// The cache's file system has less free space than a build needs.
    #[error(
        "no space left for the guest {set}: {available_mib} MiB free in {}, about {required_mib} \
         MiB needed; free space or set ISOBENCH_CACHE_DIR to a larger disk",
        dir.display()
    )]
    NoSpace {
        /// `kernel` or `rootfs`.
        set: &'static str,
        /// The cache folder.
        dir: PathBuf,
        /// Free space, in MiB.
        available_mib: u64,
        /// Estimated space the build needs, in MiB.
        required_mib: u64,
    },

    /// A build script failed; `message` is its own one-line error.
    #[error("building the guest {set} failed: {message} (log: {})", log.display())]
    BuildFailed {
        /// `kernel` or `rootfs`.
        set: &'static str,
        /// The script's last `error:` line, or its exit status.
        message: String,
        /// The build log.
        log: PathBuf,
    },

    /// SIGINT or SIGTERM stopped the build; its folders were removed.
    #[error("guest image build interrupted; nothing half-built was kept")]
    Interrupted,

    /// A file operation in the cache failed.
    #[error(
        "{action} {} failed; check that the cache folder is writable, or set ISOBENCH_CACHE_DIR",
        path.display()
    )]
    Io {
        /// The operation, such as `creating` or `renaming`.
        action: &'static str,
        /// The file or folder involved.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// The Docker engine failed to import `rootfs.tar`, or was unreachable.
    #[error("importing the guest image into Docker as {tag} failed")]
    DockerImport {
        /// The image tag.
        tag: String,
        /// The engine driver's error, which includes what to do.
        #[source]
        source: Box<isobench_container::ContainerError>,
    },
}

impl ImageError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> ImageError {
        let path = path.into();
        move |source| ImageError::Io {
            action,
            path,
            source,
        }
    }
}
