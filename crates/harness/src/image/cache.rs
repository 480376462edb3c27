//! The cache folder: where each artifact set lives, how a complete set differs from an
//! interrupted build, and the guest image paths every backend takes.
//!
//! ```text
//! <cache>/kernel-<hash>/       vmlinux, bzImage, config, manifest.json
//! <cache>/rootfs-<hash>/       rootfs.tar, rootfs.ext4, tree/, packages.txt, manifest.json
//! <cache>/.tmp-<set>-<hash>-<pid>/    a build in progress, renamed to the folder above
//! <cache>/.work-<set>-<hash>-<pid>/   scratch space of a build in progress
//! <cache>/logs/<set>-<hash>.log       the last build's log
//! ```
//!
//! A folder with its final name is complete: builds write under a temporary name and rename
//! the folder only after every artifact and the manifest are in it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backend::GuestImagePaths;
use crate::image::recipe::{ArtifactSet, RecipeHashes};
use crate::image::ImageError;

/// Environment variable that overrides the cache folder.
pub const CACHE_DIR_ENV: &str = "ISOBENCH_CACHE_DIR";

/// Name of the manifest a complete artifact set contains.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Prefix of the folders of builds in progress.
pub(crate) const TEMPORARY_PREFIX: &str = ".tmp-";

/// Prefix of the scratch folders of builds in progress.
pub(crate) const WORK_PREFIX: &str = ".work-";

/// The cache folder holding every built guest image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    /// Cache at `$ISOBENCH_CACHE_DIR`, else `$XDG_CACHE_HOME/isobench`, else
    /// `$HOME/.cache/isobench`.
    pub fn from_env() -> Result<Cache, ImageError> {
        let variable = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty());
        if let Some(dir) = variable(CACHE_DIR_ENV) {
            return Ok(Cache::at(dir));
        }
        if let Some(dir) = variable("XDG_CACHE_HOME") {
            return Ok(Cache::at(PathBuf::from(dir).join("isobench")));
        }
        if let Some(home) = variable("HOME") {
            return Ok(Cache::at(PathBuf::from(home).join(".cache/isobench")));
        }
        Err(ImageError::NoCacheDir)
    }

    /// Cache at `root`.
    pub fn at(root: impl Into<PathBuf>) -> Cache {
        Cache { root: root.into() }
    }

    /// The cache folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Folder of the complete artifact set `set` with hash `hash`.
    pub fn set_dir(&self, set: ArtifactSet, hash: &str) -> PathBuf {
        self.root.join(format!("{}-{hash}", set.name()))
    }

    /// Log of the last build of `set` with hash `hash`.
    pub fn log_path(&self, set: ArtifactSet, hash: &str) -> PathBuf {
        self.root
            .join("logs")
            .join(format!("{}-{hash}.log", set.name()))
    }

    /// Returns whether the artifact set with hash `hash` is complete: its folder has its final
    /// name and contains every artifact and the manifest.
    pub fn is_complete(&self, set: ArtifactSet, hash: &str) -> bool {
        let dir = self.set_dir(set, hash);
        dir.is_dir()
            && dir.join(MANIFEST_FILE).is_file()
            && set
                .artifacts()
                .iter()
                .all(|artifact| dir.join(artifact).exists())
    }

    /// Folders of builds that did not finish (interrupted or still running), for any hash.
    pub fn unfinished_builds(&self) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut found: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .filter(|entry| {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                name.starts_with(TEMPORARY_PREFIX) || name.starts_with(WORK_PREFIX)
            })
            .map(|entry| entry.path())
            .collect();
        found.sort();
        found
    }

    /// Paths of the guest image with the given hashes, if both artifact sets are complete.
    pub fn locate(&self, hashes: &RecipeHashes) -> Result<GuestImagePaths, ImageError> {
        self.locate_sets(hashes, &ArtifactSet::ALL)
    }

    /// Paths of the guest image with the given hashes, if the listed artifact sets are
    /// complete. Paths into a set that is not listed may not exist yet.
    pub fn locate_sets(
        &self,
        hashes: &RecipeHashes,
        required: &[ArtifactSet],
    ) -> Result<GuestImagePaths, ImageError> {
        for &set in required {
            let hash = hashes.of_set(set);
            if !self.is_complete(set, hash) {
                return Err(ImageError::NotBuilt {
                    set: set.name(),
                    dir: self.set_dir(set, hash),
                });
            }
        }
        let kernel = self.set_dir(ArtifactSet::Kernel, &hashes.kernel);
        let rootfs = self.set_dir(ArtifactSet::Rootfs, &hashes.rootfs);
        Ok(GuestImagePaths {
            id: hashes.image_id.clone(),
            vmlinux: kernel.join("vmlinux"),
            bzimage: kernel.join("bzImage"),
            rootfs_tar: rootfs.join("rootfs.tar"),
            rootfs_ext4: rootfs.join("rootfs.ext4"),
            rootfs_tree: rootfs.join("tree"),
            docker_tag: hashes.docker_tag(),
        })
    }
}

/// Paths of the guest image this binary's recipes describe, in the cache named by the
/// environment; fails with [`ImageError::NotBuilt`] until `isobench image build` has run.
pub fn locate() -> Result<GuestImagePaths, ImageError> {
    Cache::from_env()?.locate(&RecipeHashes::embedded())
}

/// Like [`locate`], but requires only the root filesystem, which is all that the `process`
/// and `docker` backends use; the guest kernel paths may not exist yet.
pub fn locate_rootfs() -> Result<GuestImagePaths, ImageError> {
    Cache::from_env()?.locate_sets(&RecipeHashes::embedded(), &[ArtifactSet::Rootfs])
}

/// Contents of a complete artifact set's `manifest.json`, written by its build.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// `kernel` or `rootfs`.
    pub set: String,
    /// Recipe hash, the folder's suffix.
    pub hash: String,
    /// Recipe files the hash covers, relative to `guest-images/`.
    pub recipe_files: Vec<String>,
    /// Seconds since the Unix epoch when the build finished.
    pub built_at_unix: u64,
    /// Wall time of the build, in seconds.
    pub build_seconds: f64,
}

impl Manifest {
    /// Reads the manifest of the artifact set in `dir`.
    pub fn read(dir: &Path) -> Option<Manifest> {
        let text = std::fs::read_to_string(dir.join(MANIFEST_FILE)).ok()?;
        serde_json::from_str(&text).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(cache: &Cache, set: ArtifactSet, hash: &str) -> PathBuf {
        let dir = cache.set_dir(set, hash);
        std::fs::create_dir_all(&dir).unwrap();
        for artifact in set.artifacts() {
            std::fs::write(dir.join(artifact), b"x").unwrap();
        }
        std::fs::write(dir.join(MANIFEST_FILE), b"{}").unwrap();
        dir
    }

    #[test]
    fn complete_needs_every_artifact() {
        let temporary = tempfile::tempdir().unwrap();
        let cache = Cache::at(temporary.path());
        assert!(!cache.is_complete(ArtifactSet::Kernel, "abc"));

        let dir = fill(&cache, ArtifactSet::Kernel, "abc");
        assert!(cache.is_complete(ArtifactSet::Kernel, "abc"));

        std::fs::remove_file(dir.join("bzImage")).unwrap();
        assert!(!cache.is_complete(ArtifactSet::Kernel, "abc"));
    }

    #[test]
    fn complete_needs_manifest() {
        let temporary = tempfile::tempdir().unwrap();
        let cache = Cache::at(temporary.path());
        let dir = fill(&cache, ArtifactSet::Rootfs, "abc");
        std::fs::remove_file(dir.join(MANIFEST_FILE)).unwrap();
        assert!(!cache.is_complete(ArtifactSet::Rootfs, "abc"));
    }

    #[test]
    fn temporary_folder_is_not_complete() {
        let temporary = tempfile::tempdir().unwrap();
        let cache = Cache::at(temporary.path());
        let dir = fill(&cache, ArtifactSet::Kernel, "abc");
        let unfinished = temporary.path().join(".tmp-kernel-abc-1");
        std::fs::rename(&dir, &unfinished).unwrap();
        assert!(!cache.is_complete(ArtifactSet::Kernel, "abc"));
        assert_eq!(cache.unfinished_builds(), vec![unfinished]);
    }

    #[test]
    fn locate_names_missing_set() {
        let temporary = tempfile::tempdir().unwrap();
        let cache = Cache::at(temporary.path());
        let hashes = RecipeHashes::embedded();
        fill(&cache, ArtifactSet::Kernel, &hashes.kernel);
        let error = cache.locate(&hashes).unwrap_err();
        assert!(
            matches!(error, ImageError::NotBuilt { set: "rootfs", .. }),
            "{error}"
        );

        fill(&cache, ArtifactSet::Rootfs, &hashes.rootfs);
        let paths = cache.locate(&hashes).unwrap();
        assert_eq!(paths.id, hashes.image_id);
        assert_eq!(paths.docker_tag, hashes.docker_tag());
        assert!(paths
            .vmlinux
            .ends_with(format!("kernel-{}/vmlinux", hashes.kernel)));
        assert!(paths
            .rootfs_tree
            .ends_with(format!("rootfs-{}/tree", hashes.rootfs)));
    }
}
