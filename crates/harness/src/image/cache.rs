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
//! Builds write under a temporary name and rename the folder only after every artifact and the
//! manifest are in it. Even so, a full disk, a file removed by hand or a copy that stopped
//! midway can leave a folder with its final name that is not whole. Such a folder counts as
//! complete only when it passes the checks against its manifest in [`Cache::check`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backend::GuestImagePaths;
use crate::image::check::{check_set, SetState};
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
    /// A relative path is made absolute against the working folder. Fails with
    /// [`ImageError::CacheNotFolder`] when the path exists but is not a folder.
    pub fn from_env() -> Result<Cache, ImageError> {
        let variable = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty());
        let cache = if let Some(dir) = variable(CACHE_DIR_ENV) {
            Cache::at(dir)
        } else if let Some(dir) = variable("XDG_CACHE_HOME") {
            Cache::at(PathBuf::from(dir).join("isobench"))
        } else if let Some(home) = variable("HOME") {
            Cache::at(PathBuf::from(home).join(".cache/isobench"))
        } else {
            return Err(ImageError::NoCacheDir);
        };
        if cache.root.exists() && !cache.root.is_dir() {
            return Err(ImageError::CacheNotFolder(cache.root));
        }
        // The build scripts change their working folder, so a relative path would name
        // another folder inside them.
        let root =
            std::path::absolute(&cache.root).map_err(ImageError::io("resolving", &cache.root))?;
        Ok(Cache::at(root))
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

    /// Checks the artifact set with hash `hash`: missing, complete, or damaged with the first
    /// file that is wrong. Reads the manifest, the size of every file it lists and the SHA-256
    /// of the small ones.
    pub fn check(&self, set: ArtifactSet, hash: &str) -> SetState {
        check_set(&self.set_dir(set, hash), set, hash)
    }

    /// Returns whether the artifact set with hash `hash` passes [`Cache::check`].
    pub fn is_complete(&self, set: ArtifactSet, hash: &str) -> bool {
        self.check(set, hash).is_complete()
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
            match self.check(set, hash) {
                SetState::Complete(_) => {}
                SetState::Missing => {
                    return Err(ImageError::NotBuilt {
                        set: set.name(),
                        dir: self.set_dir(set, hash),
                    })
                }
                SetState::Damaged(damage) => {
                    return Err(ImageError::Damaged {
                        set: set.name(),
                        damage,
                    })
                }
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
    /// Files whose size and hash a check compares. Empty in manifests written before sizes
    /// were recorded.
    #[serde(default)]
    pub files: Vec<ManifestFile>,
}

/// One file a manifest records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Path relative to the set's folder, with `/` separators.
    pub path: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// SHA-256 of the contents as hex, recorded for files up to
    /// [`HASHED_MAX_BYTES`](crate::image::HASHED_MAX_BYTES).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

impl Manifest {
    /// Reads the manifest of the artifact set in `dir`; `None` when it is missing or invalid.
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
        crate::image::check::write_test_set(&dir, set, hash);
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
    fn locate_names_damaged_file() {
        let temporary = tempfile::tempdir().unwrap();
        let cache = Cache::at(temporary.path());
        let hashes = RecipeHashes::embedded();
        let kernel = fill(&cache, ArtifactSet::Kernel, &hashes.kernel);
        fill(&cache, ArtifactSet::Rootfs, &hashes.rootfs);
        std::fs::write(kernel.join("vmlinux"), b"").unwrap();

        let error = cache.locate(&hashes).unwrap_err();
        let ImageError::Damaged { set, damage } = &error else {
            panic!("expected a damaged set, got {error}");
        };
        assert_eq!(*set, "kernel");
        assert_eq!(damage.path, kernel.join("vmlinux"));
        let message = error.to_string();
        assert!(message.contains("vmlinux is empty"), "{message}");
        assert!(message.contains("run `isobench image build"), "{message}");
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
