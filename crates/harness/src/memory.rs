//! Host-side memory readings: `/proc/meminfo` totals, and PSS of process trees from
//! `smaps_rollup`.
//!
//! Backends use these helpers for their `host_pss` figure; the trial uses
//! [`read_host_meminfo`] for `host_delta`.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;

use crate::backend::GuestMeminfo;

/// Failure to read a memory figure.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// A `/proc` file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// Path of the file.
        path: String,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
    /// A `/proc` file lacks a field.
    #[error("{path} has no {field} field")]
    MissingField {
        /// Path of the file.
        path: String,
        /// Field name.
        field: &'static str,
    },
}

/// Reads the host's `MemTotal` and `MemAvailable`.
pub fn read_host_meminfo() -> Result<GuestMeminfo, MemoryError> {
    let path = "/proc/meminfo";
    let text = read(path)?;
    parse_meminfo(&text).ok_or(MemoryError::MissingField {
        path: path.into(),
        field: "MemAvailable",
    })
}

/// Returns `MemTotal - MemAvailable`, the host memory in use, in bytes.
pub fn used_bytes(meminfo: &GuestMeminfo) -> u64 {
    meminfo
        .mem_total_bytes
        .saturating_sub(meminfo.mem_available_bytes)
}

/// Returns the change of host memory in use between two readings, in bytes.
pub fn host_delta_bytes(before: &GuestMeminfo, after: &GuestMeminfo) -> i64 {
    used_bytes(after) as i64 - used_bytes(before) as i64
}

/// Parses `MemTotal` and `MemAvailable` from `/proc/meminfo` text, whose values are in KiB.
pub fn parse_meminfo(text: &str) -> Option<GuestMeminfo> {
    let field = |name: &str| {
        text.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix(':')?;
            let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
            Some(kib * 1024)
        })
    };
    Some(GuestMeminfo {
        mem_total_bytes: field("MemTotal")?,
        mem_available_bytes: field("MemAvailable")?,
    })
}

/// Reads the PSS of one process from `/proc/PID/smaps_rollup`, in bytes.
pub fn pss_bytes(pid: u32) -> Result<u64, MemoryError> {
    let path = format!("/proc/{pid}/smaps_rollup");
    let text = read(&path)?;
    parse_smaps_field(&text, "Pss").ok_or(MemoryError::MissingField { path, field: "Pss" })
}

/// Reads the RSS of one process from `/proc/PID/smaps_rollup`, in bytes.
pub fn rss_bytes(pid: u32) -> Result<u64, MemoryError> {
    let path = format!("/proc/{pid}/smaps_rollup");
    let text = read(&path)?;
    parse_smaps_field(&text, "Rss").ok_or(MemoryError::MissingField { path, field: "Rss" })
}

/// Sums the PSS of `roots` and all their descendants, each process counted once. Processes
/// that exit while they are read are left out.
pub fn tree_pss_bytes(roots: &[u32]) -> Result<u64, MemoryError> {
    let mut total = 0;
    for pid in process_tree(roots) {
        match pss_bytes(pid) {
            Ok(pss) => total += pss,
            Err(MemoryError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
    }
    Ok(total)
}

/// Returns `roots` and every descendant found in `/proc`, each once.
pub fn process_tree(roots: &[u32]) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(parent) = fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| parse_stat_ppid(&stat))
            {
                children.entry(parent).or_default().push(pid);
            }
        }
    }
    let mut seen = HashSet::new();
    let mut pending: Vec<u32> = roots.to_vec();
    let mut tree = Vec::new();
    while let Some(pid) = pending.pop() {
        if seen.insert(pid) {
            tree.push(pid);
            pending.extend(children.get(&pid).into_iter().flatten());
        }
    }
    tree
}

/// Returns the parent pid from `/proc/PID/stat`; the command name in brackets may contain
/// spaces and brackets, so fields are counted after its last `)`.
fn parse_stat_ppid(stat: &str) -> Option<u32> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(1)?.parse().ok()
}

fn parse_smaps_field(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix(':')?;
        let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib * 1024)
    })
}

fn read(path: &str) -> Result<String, MemoryError> {
    fs::read_to_string(path).map_err(|source| MemoryError::Read {
        path: path.into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_parses_kib_to_bytes() {
        let text = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   20000000 kB\n";
        let meminfo = parse_meminfo(text).unwrap();
        assert_eq!(meminfo.mem_total_bytes, 24_000_000 * 1024);
        assert_eq!(meminfo.mem_available_bytes, 20_000_000 * 1024);
        assert_eq!(used_bytes(&meminfo), 4_000_000 * 1024);
    }

    #[test]
    fn meminfo_without_available_is_none() {
        assert_eq!(parse_meminfo("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn host_delta_can_be_negative() {
        let before = GuestMeminfo {
            mem_total_bytes: 100,
            mem_available_bytes: 50,
        };
        let after = GuestMeminfo {
            mem_total_bytes: 100,
            mem_available_bytes: 60,
        };
        assert_eq!(host_delta_bytes(&before, &after), -10);
    }

    #[test]
    fn stat_ppid_skips_name_with_spaces() {
        assert_eq!(parse_stat_ppid("42 (a b) c) S 7 42 42 0"), Some(7));
    }

    #[test]
    fn own_process_has_pss() {
        let pss = pss_bytes(std::process::id()).unwrap();
        assert!(pss > 0);
        assert!(rss_bytes(std::process::id()).unwrap() >= pss);
    }

    #[test]
    fn tree_pss_includes_child() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let tree = process_tree(&[std::process::id()]);
        assert!(
            tree.contains(&child.id()),
            "tree {tree:?} lacks child {}",
            child.id()
        );
        let own = pss_bytes(std::process::id()).unwrap();
        assert!(tree_pss_bytes(&[std::process::id()]).unwrap() > own);
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn host_meminfo_reads() {
        let meminfo = read_host_meminfo().unwrap();
        assert!(meminfo.mem_total_bytes >= meminfo.mem_available_bytes);
    }
}
