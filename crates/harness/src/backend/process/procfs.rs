//! Facts from `/proc` about the `process` baseline's Jupyter kernel: the ports it listens on,
//! its process tree and that tree's PSS.

use std::collections::HashSet;
use std::path::Path;

/// TCP state `LISTEN` in `/proc/net/tcp`.
const TCP_LISTEN: &str = "0A";

/// Returns whether process `pid` owns a listening TCP socket on `127.0.0.1` for every port.
pub fn listens_on_all(pid: u32, ports: &[u16]) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let owned = socket_inodes(pid);
    ports.iter().all(|port| {
        listening_inodes(&table, *port)
            .iter()
            .any(|inode| owned.contains(inode))
    })
}

/// Inodes of `LISTEN` sockets bound to `127.0.0.1:port` (or `0.0.0.0:port`) in the text of
/// `/proc/net/tcp`.
pub fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    let loopback = format!("0100007F:{port:04X}");
    let any = format!("00000000:{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
            let bound_here = *local == loopback || *local == any;
            (bound_here && *state == TCP_LISTEN)
                .then(|| inode.parse().ok())
                .flatten()
        })
        .collect()
}

/// Inodes of the sockets among process `pid`'s open files.
fn socket_inodes(pid: u32) -> HashSet<u64> {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return HashSet::new();
    };
    entries
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter_map(|target| {
            let text = target.to_str()?;
            text.strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// Returns `pid` and all its descendants, found through `/proc/PID/task/TID/children`.
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut tree = vec![pid];
    let mut index = 0;
    while index < tree.len() {
        let parent = tree[index];
        index += 1;
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{parent}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let Ok(children) = std::fs::read_to_string(task.path().join("children")) else {
                continue;
            };
            for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
                if !tree.contains(&child) {
                    tree.push(child);
                }
            }
        }
    }
    tree
}

/// Sums the `Pss:` line of `smaps_rollup` over `pids`, in bytes. A process that exited
/// meanwhile counts as zero; `None` when no process could be read at all.
pub fn pss_bytes(pids: &[u32]) -> Option<u64> {
    let mut total = None;
    for pid in pids {
        let path = format!("/proc/{pid}/smaps_rollup");
        if let Some(kib) = read_kib_field(Path::new(&path), "Pss:") {
            total = Some(total.unwrap_or(0) + kib * 1024);
        }
    }
    total
}

/// Reads a `Name:   N kB` field of a `/proc` file.
pub fn read_kib_field(path: &Path, name: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    parse_kib_field(&text, name)
}

/// Parses a `Name:   N kB` field out of `/proc` file text.
pub fn parse_kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:A029 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5551 1 0000000000000000 100 0 0 10 0
   1: 0100007F:A02A 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 5552 1 0000000000000000 20 4 30 10 -1
   2: 00000000:A02B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5553 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn listening_inodes_match_loopback_port() {
        // 0xA029 is port 41001.
        assert_eq!(listening_inodes(TABLE, 41001), vec![5551]);
    }

    #[test]
    fn listening_inodes_skip_established() {
        // 0xA02A (41002) appears only as an established connection.
        assert!(listening_inodes(TABLE, 41002).is_empty());
    }

    #[test]
    fn listening_inodes_match_any_address() {
        assert_eq!(listening_inodes(TABLE, 41003), vec![5553]);
    }

    #[test]
    fn kib_field_parses() {
        let text = "Rss:   100 kB\nPss:    42 kB\n";
        assert_eq!(parse_kib_field(text, "Pss:"), Some(42));
        assert_eq!(parse_kib_field(text, "Swap:"), None);
    }

    #[test]
    fn own_process_tree_contains_self() {
        let me = std::process::id();
        assert_eq!(process_tree(me)[0], me);
        assert!(pss_bytes(&[me]).is_some_and(|bytes| bytes > 0));
    }
}
