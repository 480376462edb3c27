//! The guest image recipes, embedded in the binary, and the content hashes that name their
//! artifacts in the cache.
//!
//! A hash covers every recipe file (path and bytes). The pinned versions (the Linux source
//! package, the Debian suite and package versions) live in the recipes' `recipe.env` files,
//! and the kernel config fragment is a recipe file too, so all of them enter the hash.

use sha2::{Digest, Sha256};

use crate::backend::BackendKind;

/// Number of hex digits kept from a SHA-256 digest in cache folder names and the image id.
pub const HASH_HEX_DIGITS: usize = 16;

/// One recipe file: its path relative to `guest-images/` and its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecipeFile {
    /// Path relative to `guest-images/`, with `/` separators.
    pub path: &'static str,
    /// File contents.
    pub contents: &'static [u8],
}

macro_rules! recipe_file {
    ($path:literal) => {
        RecipeFile {
            path: $path,
            contents: include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../guest-images/",
                $path
            )),
        }
    };
}

/// Files of the guest kernel recipe. A test checks this list against `guest-images/kernel/`.
pub const KERNEL_RECIPE: &[RecipeFile] = &[
    recipe_file!("kernel/build.sh"),
    recipe_file!("kernel/microvm.config"),
    recipe_file!("kernel/recipe.env"),
];

/// Files of the root filesystem recipe, the guest entrypoint included. A test checks this list
/// against `guest-images/rootfs/` and `guest-images/init/`.
pub const ROOTFS_RECIPE: &[RecipeFile] = &[
    recipe_file!("init/isobench-init.c"),
    recipe_file!("rootfs/build.sh"),
    recipe_file!("rootfs/recipe.env"),
];

/// The two artifact sets of a guest image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArtifactSet {
    /// `vmlinux`, `bzImage` and `config`.
    Kernel,
    /// `rootfs.tar`, `rootfs.ext4`, `tree/` and `packages.txt`.
    Rootfs,
}

impl ArtifactSet {
    /// Both sets, in build order.
    pub const ALL: [ArtifactSet; 2] = [ArtifactSet::Kernel, ArtifactSet::Rootfs];

    /// Name used as the cache folder prefix and in messages: `kernel` or `rootfs`.
    pub fn name(self) -> &'static str {
        match self {
            ArtifactSet::Kernel => "kernel",
            ArtifactSet::Rootfs => "rootfs",
        }
    }

    /// Embedded recipe files of this set.
    pub fn recipe(self) -> &'static [RecipeFile] {
        match self {
            ArtifactSet::Kernel => KERNEL_RECIPE,
            ArtifactSet::Rootfs => ROOTFS_RECIPE,
        }
    }

    /// Build script of this set, relative to `guest-images/`.
    pub fn build_script(self) -> &'static str {
        match self {
            ArtifactSet::Kernel => "kernel/build.sh",
            ArtifactSet::Rootfs => "rootfs/build.sh",
        }
    }

    /// Sets that a run of the given backends launches from, in build order. Every backend uses
    /// the root filesystem; only the microVM boots the guest kernel.
    pub fn required_by(backends: &[BackendKind]) -> Vec<ArtifactSet> {
        let mut sets = Vec::new();
        if backends.contains(&BackendKind::Microvm) {
            sets.push(ArtifactSet::Kernel);
        }
        if !backends.is_empty() {
            sets.push(ArtifactSet::Rootfs);
        }
        sets
    }

    /// Artifacts a complete set contains, relative to its cache folder.
    pub fn artifacts(self) -> &'static [&'static str] {
        match self {
            ArtifactSet::Kernel => &["vmlinux", "bzImage", "config"],
            ArtifactSet::Rootfs => &["rootfs.tar", "rootfs.ext4", "tree", "packages.txt"],
        }
    }
}

/// Content hashes of one guest image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipeHashes {
    /// Hash of the guest kernel recipe.
    pub kernel: String,
    /// Hash of the root filesystem recipe.
    pub rootfs: String,
    /// Image id: the hash over both.
    pub image_id: String,
}

impl RecipeHashes {
    /// Hashes the recipes embedded in this binary.
    pub fn embedded() -> RecipeHashes {
        RecipeHashes::of(KERNEL_RECIPE, ROOTFS_RECIPE)
    }

    /// Hashes the given kernel and root filesystem recipes.
    pub fn of(kernel: &[RecipeFile], rootfs: &[RecipeFile]) -> RecipeHashes {
        let kernel = hash_recipe(ArtifactSet::Kernel, kernel);
        let rootfs = hash_recipe(ArtifactSet::Rootfs, rootfs);
        let image_id = image_id(&kernel, &rootfs);
        RecipeHashes {
            kernel,
            rootfs,
            image_id,
        }
    }

    /// Hash of one artifact set.
    pub fn of_set(&self, set: ArtifactSet) -> &str {
        match set {
            ArtifactSet::Kernel => &self.kernel,
            ArtifactSet::Rootfs => &self.rootfs,
        }
    }

    /// Docker image tag of this guest image, `isobench-guest:<image id>`.
    pub fn docker_tag(&self) -> String {
        format!("isobench-guest:{}", self.image_id)
    }
}

/// Hashes one recipe: SHA-256 over the set's name, then each file sorted by path as
/// `path NUL length NUL bytes`, so that moving bytes between files changes the hash.
pub fn hash_recipe(set: ArtifactSet, files: &[RecipeFile]) -> String {
    let mut sorted: Vec<&RecipeFile> = files.iter().collect();
    sorted.sort_by_key(|file| file.path);

    let mut hasher = Sha256::new();
    hasher.update(b"isobench-recipe\0");
    hasher.update(set.name().as_bytes());
    hasher.update(b"\0");
    for file in sorted {
        hasher.update(file.path.as_bytes());
        hasher.update(b"\0");
        hasher.update(file.contents.len().to_string().as_bytes());
        hasher.update(b"\0");
        hasher.update(file.contents);
    }
    truncated_hex(&hasher.finalize())
}

/// Image id: SHA-256 over the kernel and root filesystem hashes.
pub fn image_id(kernel_hash: &str, rootfs_hash: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"isobench-image\0");
    hasher.update(kernel_hash.as_bytes());
    hasher.update(b"\0");
    hasher.update(rootfs_hash.as_bytes());
    truncated_hex(&hasher.finalize())
}

fn truncated_hex(digest: &[u8]) -> String {
    let mut hex = String::with_capacity(HASH_HEX_DIGITS);
    for byte in digest.iter().take(HASH_HEX_DIGITS / 2) {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::*;

    fn leak(bytes: Vec<u8>) -> &'static [u8] {
        Box::leak(bytes.into_boxed_slice())
    }

    fn with_changed_file(files: &[RecipeFile], index: usize, contents: &[u8]) -> Vec<RecipeFile> {
        let mut changed = files.to_vec();
        changed[index].contents = leak(contents.to_vec());
        changed
    }

    #[test]
    fn kernel_required_only_by_microvm() {
        let sets = |backends: &[BackendKind]| ArtifactSet::required_by(backends);
        assert_eq!(sets(&[]), Vec::<ArtifactSet>::new());
        assert_eq!(sets(&[BackendKind::Process]), [ArtifactSet::Rootfs]);
        assert_eq!(
            sets(&[BackendKind::Process, BackendKind::Docker]),
            [ArtifactSet::Rootfs]
        );
        assert_eq!(
            sets(&[BackendKind::Docker, BackendKind::Microvm]),
            ArtifactSet::ALL
        );
        assert_eq!(sets(&[BackendKind::Microvm]), ArtifactSet::ALL);
    }

    #[test]
    fn hash_is_stable() {
        assert_eq!(RecipeHashes::embedded(), RecipeHashes::embedded());
        let hashes = RecipeHashes::embedded();
        assert_eq!(hashes.kernel.len(), HASH_HEX_DIGITS);
        assert_eq!(hashes.rootfs.len(), HASH_HEX_DIGITS);
        assert_eq!(hashes.image_id.len(), HASH_HEX_DIGITS);
        assert_eq!(
            hashes.docker_tag(),
            format!("isobench-guest:{}", hashes.image_id)
        );
    }

    #[test]
    fn hash_ignores_file_order() {
        let mut reversed = KERNEL_RECIPE.to_vec();
        reversed.reverse();
        assert_eq!(
            hash_recipe(ArtifactSet::Kernel, &reversed),
            hash_recipe(ArtifactSet::Kernel, KERNEL_RECIPE)
        );
    }

    #[test]
    fn hash_changes_with_every_kernel_file() {
        let base = RecipeHashes::embedded();
        for (index, file) in KERNEL_RECIPE.iter().enumerate() {
            let mut contents = file.contents.to_vec();
            contents.push(b'\n');
            let changed = with_changed_file(KERNEL_RECIPE, index, &contents);
            let hashes = RecipeHashes::of(&changed, ROOTFS_RECIPE);
            assert_ne!(hashes.kernel, base.kernel, "{} changed", file.path);
            assert_eq!(hashes.rootfs, base.rootfs, "{} changed", file.path);
            assert_ne!(hashes.image_id, base.image_id, "{} changed", file.path);
        }
    }

    #[test]
    fn hash_changes_with_every_rootfs_file() {
        let base = RecipeHashes::embedded();
        for (index, file) in ROOTFS_RECIPE.iter().enumerate() {
            let mut contents = file.contents.to_vec();
            contents.push(b' ');
            let changed = with_changed_file(ROOTFS_RECIPE, index, &contents);
            let hashes = RecipeHashes::of(KERNEL_RECIPE, &changed);
            assert_eq!(hashes.kernel, base.kernel, "{} changed", file.path);
            assert_ne!(hashes.rootfs, base.rootfs, "{} changed", file.path);
            assert_ne!(hashes.image_id, base.image_id, "{} changed", file.path);
        }
    }

    #[test]
    fn hash_changes_with_pinned_version() {
        let index = KERNEL_RECIPE
            .iter()
            .position(|file| file.path == "kernel/recipe.env")
            .expect("kernel/recipe.env is embedded");
        let original = std::str::from_utf8(KERNEL_RECIPE[index].contents).unwrap();
        assert!(original.contains("LINUX_SOURCE_VERSION="));
        let bumped = original.replace("LINUX_SOURCE_VERSION=", "LINUX_SOURCE_VERSION=9");
        let changed = with_changed_file(KERNEL_RECIPE, index, bumped.as_bytes());
        assert_ne!(
            hash_recipe(ArtifactSet::Kernel, &changed),
            hash_recipe(ArtifactSet::Kernel, KERNEL_RECIPE)
        );
    }

    #[test]
    fn hash_changes_with_file_path() {
        let mut renamed = KERNEL_RECIPE.to_vec();
        renamed[0].path = "kernel/other.sh";
        assert_ne!(
            hash_recipe(ArtifactSet::Kernel, &renamed),
            hash_recipe(ArtifactSet::Kernel, KERNEL_RECIPE)
        );
    }

    #[test]
    fn hash_changes_when_bytes_move_between_files() {
        let first = RecipeFile {
            path: "kernel/a",
            contents: b"xy",
        };
        let second = RecipeFile {
            path: "kernel/b",
            contents: b"z",
        };
        let moved = [
            RecipeFile {
                contents: b"x",
                ..first
            },
            RecipeFile {
                contents: b"yz",
                ..second
            },
        ];
        assert_ne!(
            hash_recipe(ArtifactSet::Kernel, &[first, second]),
            hash_recipe(ArtifactSet::Kernel, &moved)
        );
    }

    #[test]
    fn hash_differs_between_sets() {
        assert_ne!(
            hash_recipe(ArtifactSet::Kernel, KERNEL_RECIPE),
            hash_recipe(ArtifactSet::Rootfs, KERNEL_RECIPE)
        );
    }

    fn files_on_disk(folders: &[&str]) -> BTreeSet<String> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guest-images");
        let mut found = BTreeSet::new();
        for folder in folders {
            for entry in std::fs::read_dir(root.join(folder)).unwrap() {
                let entry = entry.unwrap();
                let name = entry.file_name().into_string().unwrap();
                if entry.file_type().unwrap().is_file() && !name.starts_with('.') {
                    found.insert(format!("{folder}/{name}"));
                }
            }
        }
        found
    }

    #[test]
    fn embedded_recipes_match_disk() {
        let embedded = |files: &[RecipeFile]| -> BTreeSet<String> {
            files.iter().map(|file| file.path.to_string()).collect()
        };
        assert_eq!(embedded(KERNEL_RECIPE), files_on_disk(&["kernel"]));
        assert_eq!(embedded(ROOTFS_RECIPE), files_on_disk(&["init", "rootfs"]));
    }
}
