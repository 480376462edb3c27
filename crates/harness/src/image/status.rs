//! State of the cache for the guest image this binary's recipes describe.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::image::cache::Cache;
use crate::image::check::{SetDamage, SetState};
use crate::image::docker::DockerImageState;
use crate::image::recipe::{ArtifactSet, RecipeHashes};

/// State of the guest image in the cache and in the Docker engine.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageStatus {
    /// The cache folder.
    pub cache_dir: PathBuf,
    /// Image id, the hash over both recipes.
    pub image_id: String,
    /// Whether both artifact sets are complete.
    pub complete: bool,
    /// The guest kernel and root filesystem sets, in that order.
    pub sets: Vec<SetStatus>,
    /// Folders of builds that did not finish; the next build removes those whose process is
    /// gone. None of them counts as complete.
    pub unfinished_builds: Vec<PathBuf>,
    /// Docker image tag, `isobench-guest:<image id>`.
    pub docker_tag: String,
    /// Whether the Docker engine has the tag; `None` when not checked.
    pub docker_image: Option<DockerImageState>,
}

/// State of one artifact set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetStatus {
    /// `kernel` or `rootfs`.
    pub set: String,
    /// Recipe hash.
    pub hash: String,
    /// Folder the complete set has.
    pub dir: PathBuf,
    /// Whether the set is complete: its folder passes the check against its manifest.
    pub complete: bool,
    /// The first file that failed the check, when the folder exists but is not complete.
    pub damage: Option<SetDamage>,
    /// Wall time of its build, in seconds, from its manifest.
    pub build_seconds: Option<f64>,
    /// Seconds since the Unix epoch when its build finished, from its manifest.
    pub built_at_unix: Option<u64>,
    /// Its artifacts; sizes for those present in the set's folder.
    pub artifacts: Vec<ArtifactStatus>,
}

/// One artifact of a set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArtifactStatus {
    /// File or folder name, such as `rootfs.ext4` or `tree`.
    pub name: String,
    /// Its path.
    pub path: PathBuf,
    /// Its size in bytes (apparent size, summed over a folder), if present.
    pub size_bytes: Option<u64>,
}

/// Reports the cache's state for the guest image with `hashes`. The Docker engine is not
/// asked; the caller fills [`ImageStatus::docker_image`].
pub fn status(cache: &Cache, hashes: &RecipeHashes) -> ImageStatus {
    let sets: Vec<SetStatus> = ArtifactSet::ALL
        .into_iter()
        .map(|set| set_status(cache, set, hashes.of_set(set)))
        .collect();
    ImageStatus {
        cache_dir: cache.root().to_path_buf(),
        image_id: hashes.image_id.clone(),
        complete: sets.iter().all(|set| set.complete),
        sets,
        unfinished_builds: cache.unfinished_builds(),
        docker_tag: hashes.docker_tag(),
        docker_image: None,
    }
}

fn set_status(cache: &Cache, set: ArtifactSet, hash: &str) -> SetStatus {
    let dir = cache.set_dir(set, hash);
    let state = cache.check(set, hash);
    let artifacts = set
        .artifacts()
        .iter()
        .map(|name| {
            let path = dir.join(name);
            let size_bytes = match state {
                SetState::Missing => None,
                SetState::Complete(_) | SetState::Damaged(_) => size_of(&path),
            };
            ArtifactStatus {
                name: name.to_string(),
                path,
                size_bytes,
            }
        })
        .collect();
    let (manifest, damage) = match state {
        SetState::Missing => (None, None),
        SetState::Complete(manifest) => (Some(manifest), None),
        SetState::Damaged(damage) => (None, Some(damage)),
    };
    SetStatus {
        set: set.name().to_string(),
        hash: hash.to_string(),
        dir,
        complete: manifest.is_some(),
        damage,
        build_seconds: manifest.as_ref().map(|manifest| manifest.build_seconds),
        built_at_unix: manifest.as_ref().map(|manifest| manifest.built_at_unix),
        artifacts,
    }
}

/// Apparent size of a file, or of every file under a folder; symbolic links count as their
/// own size and are never followed.
fn size_of(path: &Path) -> Option<u64> {
    let metadata = std::fs::symlink_metadata(path).ok()?;
    if !metadata.is_dir() {
        return Some(metadata.len());
    }
    let mut total = 0;
    let mut pending = vec![path.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let Ok(metadata) = entry.metadata() else {
                continue;
            };
            if metadata.is_dir() {
                pending.push(entry.path());
            } else {
                total += metadata.len();
            }
        }
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::cache::MANIFEST_FILE;
    use crate::image::check::write_test_set;

    #[test]
    fn status_of_empty_cache() {
        let temporary = tempfile::tempdir().unwrap();
        let cache = Cache::at(temporary.path());
        let hashes = RecipeHashes::embedded();
        let status = status(&cache, &hashes);
        assert!(!status.complete);
        assert_eq!(status.sets.len(), 2);
        assert!(status.sets.iter().all(|set| !set.complete));
        assert!(status.sets[0]
            .artifacts
            .iter()
            .all(|a| a.size_bytes.is_none()));
    }

    #[test]
    fn status_ignores_unfinished_build() {
        let temporary = tempfile::tempdir().unwrap();
        let cache = Cache::at(temporary.path());
        let hashes = RecipeHashes::embedded();
        let unfinished = temporary
            .path()
            .join(format!(".tmp-rootfs-{}-1", hashes.rootfs));
        std::fs::create_dir_all(unfinished.join("tree")).unwrap();
        for name in ["rootfs.tar", "rootfs.ext4", "packages.txt", MANIFEST_FILE] {
            std::fs::write(unfinished.join(name), b"x").unwrap();
        }
        let status = status(&cache, &hashes);
        assert!(!status.sets[1].complete);
        assert_eq!(status.unfinished_builds, vec![unfinished]);
    }

    #[test]
    fn status_names_damaged_file() {
        let temporary = tempfile::tempdir().unwrap();
        let cache = Cache::at(temporary.path());
        let hashes = RecipeHashes::embedded();
        let kernel = cache.set_dir(ArtifactSet::Kernel, &hashes.kernel);
        write_test_set(&kernel, ArtifactSet::Kernel, &hashes.kernel);
        let rootfs = cache.set_dir(ArtifactSet::Rootfs, &hashes.rootfs);
        write_test_set(&rootfs, ArtifactSet::Rootfs, &hashes.rootfs);
        assert!(status(&cache, &hashes).complete);

        std::fs::write(kernel.join("vmlinux"), b"").unwrap();
        std::fs::write(rootfs.join(MANIFEST_FILE), b"{").unwrap();
        let status = status(&cache, &hashes);
        assert!(!status.complete);
        let kernel_damage = status.sets[0].damage.as_ref().expect("kernel is damaged");
        assert_eq!(kernel_damage.path, kernel.join("vmlinux"));
        assert_eq!(status.sets[0].artifacts[0].size_bytes, Some(0));
        let rootfs_damage = status.sets[1].damage.as_ref().expect("rootfs is damaged");
        assert_eq!(rootfs_damage.path, rootfs.join(MANIFEST_FILE));
        assert!(!status.sets[1].complete);
    }

    #[test]
    fn status_sums_folder_sizes() {
        let temporary = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(temporary.path().join("a/b")).unwrap();
        std::fs::write(temporary.path().join("a/one"), [0u8; 10]).unwrap();
        std::fs::write(temporary.path().join("a/b/two"), [0u8; 5]).unwrap();
        assert_eq!(size_of(&temporary.path().join("a")), Some(15));
        assert_eq!(size_of(&temporary.path().join("a/one")), Some(10));
        assert_eq!(size_of(&temporary.path().join("missing")), None);
    }
}
