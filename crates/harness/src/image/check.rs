//! Whether a cached artifact set is complete, checked against its manifest instead of assumed
//! from its folder name.
//!
//! A set is complete when three checks pass. Its folder contains a manifest that parses and
//! names this set and hash. Every artifact of the set is present, and a file artifact is not
//! empty. Every file the manifest lists has the recorded size and, where one is recorded, the
//! recorded SHA-256. Manifests written before sizes were recorded list no files, so only the
//! first two checks apply to them.

use std::fmt;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::image::cache::{Manifest, ManifestFile, MANIFEST_FILE};
use crate::image::recipe::ArtifactSet;
use crate::image::ImageError;

/// Largest file whose SHA-256 a manifest records, in bytes. Hashing `bzImage`, `config`,
/// `packages.txt` and the guest entrypoint, about 2.7 MB, keeps a cached `isobench image build`
/// at 9 ms (release build, 2-core host). The larger artifacts (`vmlinux`, `rootfs.tar`,
/// `rootfs.ext4`) are checked by size only.
pub const HASHED_MAX_BYTES: u64 = 4 << 20;

/// State of one artifact set in the cache.
#[derive(Debug, Clone, PartialEq)]
pub enum SetState {
    /// Nothing has the set's final name.
    Missing,
    /// The folder passed every check.
    Complete(Manifest),
    /// Something has the set's final name but failed a check; a build replaces it.
    Damaged(SetDamage),
}

impl SetState {
    /// Returns whether the set passed every check.
    pub fn is_complete(&self) -> bool {
        matches!(self, SetState::Complete(_))
    }
}

/// The first check that a cached artifact set failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetDamage {
    /// The file or folder that is wrong.
    pub path: PathBuf,
    /// The problem, worded to follow the path, such as `is empty (0 bytes)`.
    pub problem: String,
}

impl fmt::Display for SetDamage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.path.display(), self.problem)
    }
}

/// Files whose size (and SHA-256 up to [`HASHED_MAX_BYTES`]) a set's manifest records,
/// relative to the set's folder. The root filesystem tree is recorded by its guest entrypoint,
/// the one file in it that isobench builds.
pub(crate) fn recorded_files(set: ArtifactSet) -> &'static [&'static str] {
    match set {
        ArtifactSet::Kernel => &["vmlinux", "bzImage", "config"],
        ArtifactSet::Rootfs => &[
            "rootfs.tar",
            "rootfs.ext4",
            "packages.txt",
            "tree/sbin/isobench-init",
        ],
    }
}

/// Lists the recorded files of the set built in `dir`, with their sizes and small files'
/// SHA-256, for its manifest.
pub(crate) fn manifest_files(
    dir: &Path,
    set: ArtifactSet,
) -> Result<Vec<ManifestFile>, ImageError> {
    let mut files = Vec::new();
    for name in recorded_files(set) {
        let path = dir.join(name);
        let metadata = std::fs::metadata(&path).map_err(ImageError::io("reading", &path))?;
        let sha256 = if metadata.len() <= HASHED_MAX_BYTES {
            Some(sha256_hex(&path).map_err(ImageError::io("hashing", &path))?)
        } else {
            None
        };
        files.push(ManifestFile {
            path: name.to_string(),
            size_bytes: metadata.len(),
            sha256,
        });
    }
    Ok(files)
}

/// Checks the artifact set `set` with hash `hash` in its folder `dir`.
pub(crate) fn check_set(dir: &Path, set: ArtifactSet, hash: &str) -> SetState {
    match std::fs::symlink_metadata(dir) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return SetState::Missing,
        Err(error) => return damaged(dir, format!("cannot be read ({error})")),
        Ok(_) => {}
    }
    if !dir.is_dir() {
        return damaged(dir, "is not a folder".to_string());
    }

    let manifest = match read_manifest(dir) {
        Ok(manifest) => manifest,
        Err(damage) => return SetState::Damaged(damage),
    };
    let manifest_path = dir.join(MANIFEST_FILE);
    if manifest.set != set.name() || manifest.hash != hash {
        return damaged(
            &manifest_path,
            format!(
                "names set {} with hash {}, but the folder is set {} with hash {hash}",
                manifest.set,
                manifest.hash,
                set.name()
            ),
        );
    }

    for artifact in set.artifacts() {
        let is_folder = FOLDER_ARTIFACTS.contains(artifact);
        if let Err(damage) = check_artifact(&dir.join(artifact), is_folder) {
            return SetState::Damaged(damage);
        }
    }
    for file in &manifest.files {
        if let Err(damage) = check_recorded_file(dir, file) {
            return SetState::Damaged(damage);
        }
    }
    SetState::Complete(manifest)
}

fn damaged(path: &Path, problem: String) -> SetState {
    SetState::Damaged(SetDamage {
        path: path.to_path_buf(),
        problem,
    })
}

fn damage(path: &Path, problem: String) -> SetDamage {
    SetDamage {
        path: path.to_path_buf(),
        problem,
    }
}

fn read_manifest(dir: &Path) -> Result<Manifest, SetDamage> {
    let path = dir.join(MANIFEST_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(damage(&path, "is missing".to_string()))
        }
        Err(error) => return Err(damage(&path, format!("cannot be read ({error})"))),
    };
    serde_json::from_str(&text)
        .map_err(|error| damage(&path, format!("is not a valid manifest ({error})")))
}

/// Artifacts that are folders; every other artifact is a file.
const FOLDER_ARTIFACTS: &[&str] = &["tree"];

/// Checks that an artifact exists: a folder artifact is a folder, any other is a file that is
/// not empty.
fn check_artifact(path: &Path, is_folder: bool) -> Result<(), SetDamage> {
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(damage(path, "is missing".to_string()))
        }
        Err(error) => return Err(damage(path, format!("cannot be read ({error})"))),
    };
    if is_folder {
        if !metadata.is_dir() {
            return Err(damage(path, "is not a folder".to_string()));
        }
        return Ok(());
    }
    if !metadata.is_file() {
        return Err(damage(path, "is not a regular file".to_string()));
    }
    if metadata.len() == 0 {
        return Err(damage(path, "is empty (0 bytes)".to_string()));
    }
    Ok(())
}

fn check_recorded_file(dir: &Path, file: &ManifestFile) -> Result<(), SetDamage> {
    let relative = Path::new(&file.path);
    let inside = relative
        .components()
        .all(|component| matches!(component, Component::Normal(_)));
    if !inside || file.path.is_empty() {
        return Err(damage(
            &dir.join(MANIFEST_FILE),
            format!("lists {:?}, a path outside the set's folder", file.path),
        ));
    }
    let path = dir.join(relative);
    let metadata = match std::fs::metadata(&path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(damage(&path, "is missing".to_string()))
        }
        Err(error) => return Err(damage(&path, format!("cannot be read ({error})"))),
    };
    if metadata.len() != file.size_bytes {
        return Err(damage(
            &path,
            format!(
                "is {} bytes, but the manifest records {}",
                metadata.len(),
                file.size_bytes
            ),
        ));
    }
    let Some(expected) = &file.sha256 else {
        return Ok(());
    };
    if metadata.len() > HASHED_MAX_BYTES {
        // A manifest from another build may hash larger files; checking them here would make
        // every check slow, so their size has to do.
        return Ok(());
    }
    let actual =
        sha256_hex(&path).map_err(|error| damage(&path, format!("cannot be read ({error})")))?;
    if !actual.eq_ignore_ascii_case(expected) {
        return Err(damage(
            &path,
            "has other contents than the manifest records (SHA-256 differs)".to_string(),
        ));
    }
    Ok(())
}

/// SHA-256 of a file's contents, as 64 lower-case hex digits.
fn sha256_hex(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    let mut hex = String::with_capacity(64);
    for byte in hasher.finalize() {
        hex.push_str(&format!("{byte:02x}"));
    }
    Ok(hex)
}

/// Writes a complete artifact set of small placeholder files into `dir`, with a manifest that
/// records them, for tests of code that reads the cache.
#[cfg(test)]
pub(crate) fn write_test_set(dir: &Path, set: ArtifactSet, hash: &str) {
    std::fs::create_dir_all(dir).unwrap();
    for artifact in set.artifacts() {
        if FOLDER_ARTIFACTS.contains(artifact) {
            std::fs::create_dir_all(dir.join(artifact)).unwrap();
        } else {
            std::fs::write(dir.join(artifact), format!("{artifact} contents\n")).unwrap();
        }
    }
    if set == ArtifactSet::Rootfs {
        std::fs::create_dir_all(dir.join("tree/sbin")).unwrap();
        std::fs::write(dir.join("tree/sbin/isobench-init"), b"\x7fELF init").unwrap();
    }
    let manifest = Manifest {
        set: set.name().to_string(),
        hash: hash.to_string(),
        recipe_files: set
            .recipe()
            .iter()
            .map(|file| file.path.to_string())
            .collect(),
        built_at_unix: 0,
        build_seconds: 1.0,
        files: manifest_files(dir, set).unwrap(),
    };
    let text = serde_json::to_string(&manifest).unwrap();
    std::fs::write(dir.join(MANIFEST_FILE), text).unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a complete kernel set with hash `h1`.
    fn kernel_set(dir: &Path) {
        write_test_set(dir, ArtifactSet::Kernel, "h1");
    }

    fn write_manifest(dir: &Path, manifest: &Manifest) {
        let text = serde_json::to_string(manifest).unwrap();
        std::fs::write(dir.join(MANIFEST_FILE), text).unwrap();
    }

    fn damage_of(dir: &Path) -> SetDamage {
        match check_set(dir, ArtifactSet::Kernel, "h1") {
            SetState::Damaged(damage) => damage,
            other => panic!("expected a damaged set, got {other:?}"),
        }
    }

    #[test]
    fn recorded_set_is_complete() {
        let temporary = tempfile::tempdir().unwrap();
        let dir = temporary.path().join("kernel-h1");
        kernel_set(&dir);
        let state = check_set(&dir, ArtifactSet::Kernel, "h1");
        let SetState::Complete(manifest) = state else {
            panic!("expected a complete set, got {state:?}");
        };
        assert_eq!(manifest.files.len(), 3);
        assert_eq!(manifest.files[0].path, "vmlinux");
        assert_eq!(
            manifest.files[0].size_bytes,
            "vmlinux contents\n".len() as u64
        );
        assert_eq!(manifest.files[0].sha256.as_ref().map(String::len), Some(64));
    }

    #[test]
    fn absent_folder_is_missing() {
        let temporary = tempfile::tempdir().unwrap();
        let dir = temporary.path().join("kernel-h1");
        assert_eq!(
            check_set(&dir, ArtifactSet::Kernel, "h1"),
            SetState::Missing
        );
    }

    #[test]
    fn invalid_manifest_is_damaged() {
        let temporary = tempfile::tempdir().unwrap();
        let dir = temporary.path().join("kernel-h1");
        kernel_set(&dir);
        std::fs::write(dir.join(MANIFEST_FILE), b"{ not json").unwrap();
        let damage = damage_of(&dir);
        assert_eq!(damage.path, dir.join(MANIFEST_FILE));
        assert!(
            damage.problem.starts_with("is not a valid manifest"),
            "{damage}"
        );
    }

    #[test]
    fn missing_manifest_is_damaged() {
        let temporary = tempfile::tempdir().unwrap();
        let dir = temporary.path().join("kernel-h1");
        kernel_set(&dir);
        std::fs::remove_file(dir.join(MANIFEST_FILE)).unwrap();
        assert_eq!(damage_of(&dir).problem, "is missing");
    }

    #[test]
    fn empty_vmlinux_is_damaged() {
        let temporary = tempfile::tempdir().unwrap();
        let dir = temporary.path().join("kernel-h1");
        kernel_set(&dir);
        std::fs::write(dir.join("vmlinux"), b"").unwrap();
        let damage = damage_of(&dir);
        assert_eq!(damage.path, dir.join("vmlinux"));
        assert_eq!(damage.problem, "is empty (0 bytes)");
    }

    #[test]
    fn empty_vmlinux_damages_legacy_manifest() {
        // A manifest without a file list, as builds wrote before sizes were recorded.
        let temporary = tempfile::tempdir().unwrap();
        let dir = temporary.path().join("kernel-h1");
        kernel_set(&dir);
        let legacy = r#"{"set":"kernel","hash":"h1","recipe_files":[],"built_at_unix":0,
            "build_seconds":1.0}"#;
        std::fs::write(dir.join(MANIFEST_FILE), legacy).unwrap();
        assert!(check_set(&dir, ArtifactSet::Kernel, "h1").is_complete());

        std::fs::write(dir.join("vmlinux"), b"").unwrap();
        assert_eq!(damage_of(&dir).path, dir.join("vmlinux"));
    }

    #[test]
    fn truncated_file_is_damaged() {
        let temporary = tempfile::tempdir().unwrap();
        let dir = temporary.path().join("kernel-h1");
        kernel_set(&dir);
        std::fs::write(dir.join("bzImage"), b"bzImage").unwrap();
        let damage = damage_of(&dir);
        assert_eq!(damage.path, dir.join("bzImage"));
        assert_eq!(damage.problem, "is 7 bytes, but the manifest records 17");
    }

    #[test]
    fn changed_contents_are_damaged() {
        let temporary = tempfile::tempdir().unwrap();
        let dir = temporary.path().join("kernel-h1");
        kernel_set(&dir);
        // Same size, other bytes: only the hash differs.
        std::fs::write(dir.join("config"), b"config CONTENTS\n").unwrap();
        let damage = damage_of(&dir);
        assert_eq!(damage.path, dir.join("config"));
        assert!(damage.problem.contains("SHA-256 differs"), "{damage}");
    }

    #[test]
    fn deleted_artifact_is_damaged() {
        let temporary = tempfile::tempdir().unwrap();
        let dir = temporary.path().join("kernel-h1");
        kernel_set(&dir);
        std::fs::remove_file(dir.join("bzImage")).unwrap();
        let damage = damage_of(&dir);
        assert_eq!(damage.path, dir.join("bzImage"));
        assert_eq!(damage.problem, "is missing");
    }

    #[test]
    fn manifest_of_other_hash_is_damaged() {
        let temporary = tempfile::tempdir().unwrap();
        let dir = temporary.path().join("kernel-h1");
        kernel_set(&dir);
        let state = check_set(&dir, ArtifactSet::Kernel, "h2");
        let SetState::Damaged(damage) = state else {
            panic!("expected a damaged set, got {state:?}");
        };
        assert!(damage.problem.contains("with hash h1"), "{damage}");
    }

    #[test]
    fn manifest_path_outside_folder_is_damaged() {
        let temporary = tempfile::tempdir().unwrap();
        let dir = temporary.path().join("kernel-h1");
        kernel_set(&dir);
        let mut manifest: Manifest =
            serde_json::from_slice(&std::fs::read(dir.join(MANIFEST_FILE)).unwrap()).unwrap();
        manifest.files[0].path = "../outside".into();
        write_manifest(&dir, &manifest);
        assert!(damage_of(&dir).problem.contains("outside the set's folder"));
    }

    #[test]
    fn rootfs_tree_must_be_folder() {
        let temporary = tempfile::tempdir().unwrap();
        let dir = temporary.path().join("rootfs-h1");
        write_test_set(&dir, ArtifactSet::Rootfs, "h1");
        assert!(check_set(&dir, ArtifactSet::Rootfs, "h1").is_complete());

        std::fs::remove_file(dir.join("tree/sbin/isobench-init")).unwrap();
        let state = check_set(&dir, ArtifactSet::Rootfs, "h1");
        let SetState::Damaged(damage) = state else {
            panic!("expected a damaged set, got {state:?}");
        };
        assert_eq!(damage.path, dir.join("tree/sbin/isobench-init"));

        std::fs::remove_dir_all(dir.join("tree")).unwrap();
        std::fs::write(dir.join("tree"), b"a file").unwrap();
        let state = check_set(&dir, ArtifactSet::Rootfs, "h1");
        let SetState::Damaged(damage) = state else {
            panic!("expected a damaged set, got {state:?}");
        };
        assert_eq!(damage.path, dir.join("tree"));
        assert_eq!(damage.problem, "is not a folder");
    }

    #[test]
    fn file_with_final_name_is_damaged() {
        let temporary = tempfile::tempdir().unwrap();
        let dir = temporary.path().join("kernel-h1");
        std::fs::write(&dir, b"not a folder").unwrap();
        assert_eq!(damage_of(&dir).problem, "is not a folder");
    }

    #[test]
    fn sha256_matches_known_digest() {
        let temporary = tempfile::tempdir().unwrap();
        let path = temporary.path().join("abc");
        std::fs::write(&path, b"abc").unwrap();
        assert_eq!(
            sha256_hex(&path).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
