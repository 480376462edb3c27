//! Memory of a running container under three definitions, each kept under its own name: the
//! cgroup's working set, the PSS of the container's processes and its shim, and the engine's
//! own stats for comparison.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bollard::query_parameters::StatsOptionsBuilder;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tracing::debug;

use crate::container::Container;
use crate::error::ContainerError;

/// cgroup hierarchy the figures came from, which decides the working-set formula.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupVersion {
    /// cgroup v1: `memory.usage_in_bytes` minus `total_inactive_file` of `memory.stat`.
    V1,
    /// cgroup v2: `memory.current` minus `inactive_file` of `memory.stat`.
    V2,
}

/// One reading of a cgroup's memory figures, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupMemory {
    /// Hierarchy and so formula used.
    pub version: CgroupVersion,
    /// Raw usage: `memory.usage_in_bytes` (v1) or `memory.current` (v2).
    pub usage_bytes: u64,
    /// Usage minus inactive file cache, the memory the container cannot give back without
    /// swap or reclaim of active pages.
    pub working_set_bytes: u64,
    /// Inactive file cache, the part of usage the working set leaves out.
    pub inactive_file_bytes: u64,
    /// Page cache of files on disk-backed file systems (cache minus shmem).
    pub file_cache_bytes: u64,
    /// Shared memory, which includes every file on a tmpfs such as the container's `/tmp`.
    /// It is swap-backed, so with swap disabled it stays in the working set.
    pub shmem_bytes: u64,
    /// Anonymous memory of the container's processes (v1 `total_rss`, v2 `anon`).
    pub anon_bytes: u64,
}

impl CgroupMemory {
    /// Computes the figures from a `memory.stat` table and the raw usage, choosing the v1 or
    /// v2 formula by the keys the table has. Returns `None` if it has neither set.
    pub fn from_stat(stat: &HashMap<String, u64>, usage_bytes: u64) -> Option<CgroupMemory> {
        let value = |key: &str| stat.get(key).copied();
        let (version, inactive_file) = inactive_file(stat)?;
        let (cache, shmem, anon) = match version {
            CgroupVersion::V1 => (
                value("total_cache")?,
                value("total_shmem")?,
                value("total_rss")?,
            ),
            CgroupVersion::V2 => (value("file")?, value("shmem")?, value("anon")?),
        };
        Some(CgroupMemory {
            version,
            usage_bytes,
            working_set_bytes: usage_bytes.saturating_sub(inactive_file),
            inactive_file_bytes: inactive_file,
            file_cache_bytes: cache.saturating_sub(shmem),
            shmem_bytes: shmem,
            anon_bytes: anon,
        })
    }
}

/// The engine's own memory figures for a container, from its stats endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineMemory {
    /// The engine's `memory_stats.usage`, in bytes.
    pub usage_bytes: u64,
    /// The same working-set formula applied to the engine's `memory_stats.stats`, in bytes.
    pub working_set_bytes: Option<u64>,
    /// The engine's `memory_stats.limit`, in bytes.
    pub limit_bytes: Option<u64>,
}

/// One memory sample of a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryReading {
    /// Figures read from the container's memory cgroup files.
    pub cgroup: CgroupMemory,
    /// Sum of PSS over the container's processes, from `/proc/PID/smaps_rollup`, in bytes.
    pub container_pss_bytes: u64,
    /// Host PIDs of the container's processes, from the cgroup's `cgroup.procs`.
    pub container_pids: Vec<u32>,
    /// Host PID of the containerd shim that is the parent of the container's first process.
    pub shim_pid: Option<u32>,
    /// PSS of the shim, in bytes.
    pub shim_pss_bytes: Option<u64>,
    /// The engine's own figures, for comparison.
    pub engine: Option<EngineMemory>,
}

impl MemoryReading {
    /// PSS of every host process the container costs: its own processes and its shim.
    pub fn host_pss_bytes(&self) -> u64 {
        self.container_pss_bytes + self.shim_pss_bytes.unwrap_or(0)
    }
}

impl Container {
    /// Samples the container's memory from its cgroup, `/proc` and the engine's stats.
    pub async fn memory(&self) -> Result<MemoryReading, ContainerError> {
        let pid = self.init_pid().ok_or_else(|| ContainerError::NoInitPid {
            container: self.name().to_string(),
        })?;
        let cgroup_dir = memory_cgroup_dir(pid)?;
        let cgroup = read_cgroup_memory(&cgroup_dir)?;

        let procs_path = cgroup_dir.join("cgroup.procs");
        let procs = read_file(&procs_path)?;
        let container_pids: Vec<u32> = procs
            .lines()
            .filter_map(|line| line.trim().parse().ok())
            .collect();
        let container_pss_bytes = container_pids
            .iter()
            .filter_map(|pid| pss_bytes(*pid))
            .sum();

        let shim_pid = parent_pid(pid).filter(|parent| is_containerd_shim(*parent));
        if shim_pid.is_none() {
            debug!(
                container = self.name(),
                pid, "parent of the container's init is no containerd shim"
            );
        }
        let shim_pss_bytes = shim_pid.and_then(pss_bytes);

        let engine = self.engine_memory().await?;
        Ok(MemoryReading {
            cgroup,
            container_pss_bytes,
            container_pids,
            shim_pid,
            shim_pss_bytes,
            engine,
        })
    }

    /// Reads one sample from the engine's stats endpoint without waiting for a second
    /// sample (`one-shot`, API 1.41 and later).
    async fn engine_memory(&self) -> Result<Option<EngineMemory>, ContainerError> {
        let options = StatsOptionsBuilder::new()
            .stream(false)
            .one_shot(true)
            .build();
        let engine = self.engine();
        let request = async {
            let mut stats = engine.docker().stats(self.id(), Some(options));
            stats.next().await.transpose()
        };
        let stats = engine
            .call(format!("stats of container {}", self.name()), request)
            .await?;
        let Some(memory) = stats.and_then(|stats| stats.memory_stats) else {
            return Ok(None);
        };
        let Some(usage_bytes) = memory.usage else {
            return Ok(None);
        };
        // The engine's table leaves out some keys of memory.stat (shmem on v1), so only the
        // working set is computed from it.
        let working_set_bytes = memory
            .stats
            .as_ref()
            .and_then(inactive_file)
            .map(|(_, inactive_file)| usage_bytes.saturating_sub(inactive_file));
        Ok(Some(EngineMemory {
            usage_bytes,
            working_set_bytes,
            limit_bytes: memory.limit,
        }))
    }
}

/// Returns the cgroup version a `memory.stat` table comes from and its inactive file cache:
/// `total_inactive_file` (v1, hierarchical) or `inactive_file` (v2).
fn inactive_file(stat: &HashMap<String, u64>) -> Option<(CgroupVersion, u64)> {
    if let Some(bytes) = stat.get("total_inactive_file") {
        Some((CgroupVersion::V1, *bytes))
    } else if stat.contains_key("total_cache") || stat.contains_key("cache") {
        // A v1 table without hierarchical totals is not one the v1 formula covers.
        None
    } else {
        stat.get("inactive_file")
            .map(|bytes| (CgroupVersion::V2, *bytes))
    }
}

/// Finds the memory cgroup directory of process `pid`: the v1 `memory` hierarchy where it is
/// mounted (cgroup v1 or hybrid hosts), else the v2 unified hierarchy.
pub(crate) fn memory_cgroup_dir(pid: u32) -> Result<PathBuf, ContainerError> {
    let membership = read_file(Path::new(&format!("/proc/{pid}/cgroup")))?;
    let mountinfo = read_file(Path::new("/proc/self/mountinfo"))?;
    find_memory_cgroup_dir(&membership, &mountinfo)
        .ok_or_else(|| ContainerError::CgroupNotFound { pid })
}

/// Resolves a `/proc/PID/cgroup` listing against `/proc/self/mountinfo`.
fn find_memory_cgroup_dir(membership: &str, mountinfo: &str) -> Option<PathBuf> {
    let mut v1_path = None;
    let mut v2_path = None;
    for line in membership.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_id), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if controllers
            .split(',')
            .any(|controller| controller == "memory")
        {
            v1_path = Some(path);
        } else if controllers.is_empty() {
            v2_path = Some(path);
        }
    }

    for line in mountinfo.lines() {
        // Fields: id parent major:minor root mount-point options [optional...] - type source
        // super-options.
        let Some((before, after)) = line.split_once(" - ") else {
            continue;
        };
        let before: Vec<&str> = before.split(' ').collect();
        let after: Vec<&str> = after.split(' ').collect();
        let (Some(root), Some(mount_point), Some(fs_type)) =
            (before.get(3), before.get(4), after.first())
        else {
            continue;
        };
        let super_options = after.get(2).copied().unwrap_or("");
        let path = match *fs_type {
            "cgroup" if super_options.split(',').any(|option| option == "memory") => v1_path,
            "cgroup2" if v1_path.is_none() => v2_path,
            _ => None,
        };
        let Some(path) = path else {
            continue;
        };
        // A mount of a sub-tree shows that sub-tree at its mount point.
        let relative = if *root == "/" {
            path
        } else {
            path.strip_prefix(root)?
        };
        let mut dir = PathBuf::from(unescape_mountinfo(mount_point));
        dir.push(relative.trim_start_matches('/'));
        return Some(dir);
    }
    None
}

/// Decodes the octal escapes (`\040` for a space) mountinfo uses in paths.
fn unescape_mountinfo(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let escape = bytes.get(index + 1..index + 4);
        match escape
            .and_then(|digits| u8::from_str_radix(std::str::from_utf8(digits).ok()?, 8).ok())
        {
            Some(byte) if bytes[index] == b'\\' => {
                out.push(byte);
                index += 4;
            }
            _ => {
                out.push(bytes[index]);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads a memory cgroup directory's figures; the files present decide between v1 and v2.
pub(crate) fn read_cgroup_memory(dir: &Path) -> Result<CgroupMemory, ContainerError> {
    let stat_path = dir.join("memory.stat");
    let stat = parse_stat(&read_file(&stat_path)?);
    let usage_path = if dir.join("memory.usage_in_bytes").exists() {
        dir.join("memory.usage_in_bytes")
    } else {
        dir.join("memory.current")
    };
    let usage_text = read_file(&usage_path)?;
    let usage_bytes = usage_text
        .trim()
        .parse()
        .map_err(|_| ContainerError::CgroupFormat {
            path: usage_path.clone(),
        })?;
    CgroupMemory::from_stat(&stat, usage_bytes)
        .ok_or(ContainerError::CgroupFormat { path: stat_path })
}

/// Parses `memory.stat`: one `key value` pair a line.
fn parse_stat(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(' ')?;
            Some((key.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// Returns a process's PSS in bytes from `/proc/PID/smaps_rollup`, or `None` if it exited.
pub(crate) fn pss_bytes(pid: u32) -> Option<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    parse_pss_kib(&rollup).map(|kib| kib * 1024)
}

fn parse_pss_kib(rollup: &str) -> Option<u64> {
    let line = rollup.lines().find(|line| line.starts_with("Pss:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Returns the parent PID from `/proc/PID/status`.
fn parent_pid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("PPid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Returns whether a process is a containerd shim (`containerd-shim`, or
/// `containerd-shim-runc-v2` which the kernel shortens to 15 bytes in `comm`).
fn is_containerd_shim(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .is_ok_and(|comm| comm.trim_end().starts_with("containerd-shim"))
}

fn read_file(path: &Path) -> Result<String, ContainerError> {
    std::fs::read_to_string(path).map_err(|source| ContainerError::Proc {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(pairs: &[(&str, u64)]) -> HashMap<String, u64> {
        pairs
            .iter()
            .map(|(key, value)| (key.to_string(), *value))
            .collect()
    }

    #[test]
    fn cgroup_v1_working_set_subtracts_inactive_file() {
        let table = stat(&[
            ("cache", 1),
            ("total_cache", 300),
            ("total_rss", 500),
            ("total_shmem", 100),
            ("total_inactive_file", 150),
        ]);
        let figures = CgroupMemory::from_stat(&table, 900).unwrap();
        assert_eq!(figures.version, CgroupVersion::V1);
        assert_eq!(figures.working_set_bytes, 750);
        assert_eq!(figures.file_cache_bytes, 200);
        assert_eq!(figures.shmem_bytes, 100);
        assert_eq!(figures.anon_bytes, 500);
        assert_eq!(figures.usage_bytes, 900);
    }

    #[test]
    fn cgroup_v2_working_set_subtracts_inactive_file() {
        let table = stat(&[
            ("anon", 500),
            ("file", 300),
            ("shmem", 100),
            ("inactive_file", 150),
        ]);
        let figures = CgroupMemory::from_stat(&table, 900).unwrap();
        assert_eq!(figures.version, CgroupVersion::V2);
        assert_eq!(figures.working_set_bytes, 750);
        assert_eq!(figures.file_cache_bytes, 200);
    }

    #[test]
    fn cgroup_working_set_never_below_zero() {
        let table = stat(&[
            ("anon", 0),
            ("file", 300),
            ("shmem", 0),
            ("inactive_file", 300),
        ]);
        let figures = CgroupMemory::from_stat(&table, 200).unwrap();
        assert_eq!(figures.working_set_bytes, 0);
    }

    #[test]
    fn cgroup_stat_without_known_keys_is_rejected() {
        assert!(CgroupMemory::from_stat(&stat(&[("cache", 1)]), 1).is_none());
        assert!(CgroupMemory::from_stat(&stat(&[("inactive_file", 1), ("cache", 1)]), 1).is_none());
    }

    #[test]
    fn memory_cgroup_dir_prefers_v1_memory_hierarchy() {
        let membership = "12:memory:/docker/abc\n5:cpu,cpuacct:/docker/abc\n0::/docker/abc\n";
        let mountinfo = "30 25 0:26 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n\
                         35 25 0:31 / /sys/fs/cgroup/memory rw,nosuid shared:16 - cgroup cgroup rw,memory\n";
        let dir = find_memory_cgroup_dir(membership, mountinfo).unwrap();
        assert_eq!(dir, PathBuf::from("/sys/fs/cgroup/memory/docker/abc"));
    }

    #[test]
    fn memory_cgroup_dir_uses_unified_hierarchy_on_v2() {
        let membership = "0::/system.slice/docker-abc.scope\n";
        let mountinfo = "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        let dir = find_memory_cgroup_dir(membership, mountinfo).unwrap();
        assert_eq!(
            dir,
            PathBuf::from("/sys/fs/cgroup/system.slice/docker-abc.scope")
        );
    }

    #[test]
    fn memory_cgroup_dir_strips_mount_root() {
        let membership = "4:memory:/outer/docker/abc\n";
        let mountinfo = "35 25 0:31 /outer /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        let dir = find_memory_cgroup_dir(membership, mountinfo).unwrap();
        assert_eq!(dir, PathBuf::from("/sys/fs/cgroup/memory/docker/abc"));
    }

    #[test]
    fn mountinfo_unescape_decodes_octal() {
        assert_eq!(unescape_mountinfo("/mnt/a\\040b"), "/mnt/a b");
    }

    #[test]
    fn pss_parse_reads_kib() {
        let rollup = "00400000-7ffc [rollup]\nRss:     2048 kB\nPss:     1024 kB\n";
        assert_eq!(parse_pss_kib(rollup), Some(1024));
    }

    #[test]
    fn pss_of_this_process_is_positive() {
        assert!(pss_bytes(std::process::id()).unwrap() > 0);
    }
}
