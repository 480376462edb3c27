//! Labels that mark what isobench created, and the owner identity that distinguishes a leftover of a
//! dead run from a resource of a run that is still going.

use std::collections::HashMap;

/// Label carrying the run id on every container and network isobench creates.
pub const RUN_ID_LABEL: &str = "isobench.run-id";

/// Label carrying the creating process as `PID:START_TICKS`, where `START_TICKS` is field 22
/// of `/proc/PID/stat` (start time since boot in clock ticks), so a reused PID is not mistaken
/// for the creator.
pub const OWNER_LABEL: &str = "isobench.owner";

/// Returns the labels for a resource of run `run_id` created by this process.
pub(crate) fn labels(run_id: &str) -> HashMap<String, String> {
    let mut labels = HashMap::new();
    labels.insert(RUN_ID_LABEL.to_string(), run_id.to_string());
    if let Some(owner) = current_owner() {
        labels.insert(OWNER_LABEL.to_string(), owner);
    }
    labels
}

/// Returns this process's owner identity, `PID:START_TICKS`.
pub(crate) fn current_owner() -> Option<String> {
    let pid = std::process::id();
    start_ticks(pid).map(|ticks| format!("{pid}:{ticks}"))
}

/// Returns whether the process named by an owner label value still runs. A value that does
/// not parse counts as dead, so the sweep removes what it labels.
pub(crate) fn owner_is_alive(owner: &str) -> bool {
    let Some((pid, ticks)) = owner.split_once(':') else {
        return false;
    };
    let (Ok(pid), Ok(ticks)) = (pid.parse::<u32>(), ticks.parse::<u64>()) else {
        return false;
    };
    start_ticks(pid) == Some(ticks)
}

/// Reads a process's start time since boot, in clock ticks, from `/proc/PID/stat`.
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_ticks(&stat)
}

/// Returns field 22 of a `/proc/PID/stat` line. The command name (field 2) is in parentheses
/// and may contain spaces and parentheses, so counting starts after its last `)`.
fn parse_start_ticks(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // Field 3 (state) is the first after the command name, so field 22 is the 20th.
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_ticks_parse_skips_command_with_spaces() {
        let stat = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 \
                    1000 200 18446744073709551615";
        assert_eq!(parse_start_ticks(stat), Some(987654));
    }

    #[test]
    fn owner_of_this_process_is_alive() {
        let owner = current_owner().unwrap();
        assert!(owner_is_alive(&owner));
    }

    #[test]
    fn owner_with_other_start_time_is_dead() {
        let pid = std::process::id();
        let ticks = start_ticks(pid).unwrap();
        assert!(!owner_is_alive(&format!("{pid}:{}", ticks + 1)));
    }

    #[test]
    fn owner_that_does_not_parse_is_dead() {
        assert!(!owner_is_alive("not-an-owner"));
        assert!(!owner_is_alive("12:x"));
    }
}
