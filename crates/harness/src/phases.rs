//! Startup phases: the consecutive intervals between `t0`, the backend's phase marks and ready.
//!
//! A phase is named after the event that ends it, using the names of the measurement
//! definitions where the event is known (`vmm_spawn`, `vmm_setup`, `guest_kernel`, `guest_init`,
//! `create`, `start`, `entrypoint`, `spawn`, `kernel_ready`); an unknown event names its phase
//! itself.

use crate::backend::BackendKind;
use crate::results::{EventRecord, PhaseRecord};

/// Event at which the Jupyter kernel is ready; the last phase ends here.
pub const READY_EVENT: &str = "ready";

/// Events recorded on the way to ready that split no phase: they are parts of `kernel_ready`,
/// which runs from the Jupyter kernel's exec to ready on every backend. `kernel_listening` is
/// the `process` backend's observation that the kernel's ports accept connections.
const READY_DETAIL_EVENTS: [&str; 3] = ["kernel_info_reply", "first_status", "kernel_listening"];

/// Name of the phase that ends at `event` for a backend of `kind`.
pub fn phase_name(kind: BackendKind, event: &str) -> String {
    let name = match (kind, event) {
        (_, READY_EVENT) => "kernel_ready",
        (BackendKind::Microvm, "vmm_started") => "vmm_spawn",
        (BackendKind::Microvm, "vcpus_running" | "vcpu_started" | "first_vcpu_run") => "vmm_setup",
        (BackendKind::Microvm, "init_started") => "guest_kernel",
        (BackendKind::Microvm, "mounts_done") => "guest_mounts",
        (BackendKind::Microvm, "exec_kernel") => "guest_init",
        (BackendKind::Docker, "container_created" | "created") => "create",
        (BackendKind::Docker, "container_started" | "started") => "start",
        (BackendKind::Docker, "init_started") => "start_to_entrypoint",
        (BackendKind::Docker, "exec_kernel") => "entrypoint",
        (BackendKind::Process, "mounts_done") => "chroot_setup",
        (BackendKind::Process, "spawned" | "process_spawned") => "spawn",
        (BackendKind::Process, "init_started") => "spawn",
        (BackendKind::Process, "exec_kernel") => "entrypoint",
        (_, other) => other,
    };
    name.to_owned()
}

/// Splits `t0 ..= ready` at every phase mark, in time order. Events after ready, and the
/// detail events of the ready handshake, split nothing. Returns no phases without a ready
/// event.
pub fn derive_phases(kind: BackendKind, events: &[EventRecord]) -> Vec<PhaseRecord> {
    let Some(ready_at) = events
        .iter()
        .find(|event| event.name == READY_EVENT)
        .map(|e| e.at_s)
    else {
        return Vec::new();
    };
    let mut boundaries: Vec<&EventRecord> = events
        .iter()
        .filter(|event| !READY_DETAIL_EVENTS.contains(&event.name.as_str()))
        .filter(|event| event.name != READY_EVENT && event.at_s <= ready_at)
        .collect();
    boundaries.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));

    let mut phases: Vec<PhaseRecord> = Vec::new();
    let mut start_s = 0.0;
    let ends = boundaries
        .iter()
        .map(|event| (event.name.as_str(), event.at_s));
    for (event, end_s) in ends.chain([(READY_EVENT, ready_at)]) {
        let name = phase_name(kind, event);
        // Two events that map to one phase name (such as `spawned` and `init_started` of the
        // baseline) extend a single phase.
        match phases.last_mut() {
            Some(last) if last.name == name => last.end_s = end_s,
            _ => phases.push(PhaseRecord {
                name,
                start_s,
                end_s: end_s.max(start_s),
            }),
        }
        start_s = end_s.max(start_s);
    }
    phases
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(list: &[(&str, f64)]) -> Vec<EventRecord> {
        list.iter()
            .map(|(name, at_s)| EventRecord {
                name: (*name).into(),
                at_s: *at_s,
            })
            .collect()
    }

    #[test]
    fn microvm_phases_follow_marks() {
        let events = events(&[
            ("vcpus_running", 0.01),
            ("init_started", 0.2),
            ("mounts_done", 0.21),
            ("exec_kernel", 0.25),
            ("kernel_info_reply", 0.9),
            ("ready", 1.0),
        ]);
        let phases = derive_phases(BackendKind::Microvm, &events);
        let names: Vec<&str> = phases.iter().map(|phase| phase.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "vmm_setup",
                "guest_kernel",
                "guest_mounts",
                "guest_init",
                "kernel_ready"
            ]
        );
        assert_eq!(phases[0].start_s, 0.0);
        assert_eq!(phases[4].start_s, 0.25);
        assert_eq!(phases[4].end_s, 1.0);
    }

    #[test]
    fn phases_cover_t0_to_ready_without_gaps() {
        let events = events(&[
            ("container_created", 0.1),
            ("container_started", 0.3),
            ("ready", 0.8),
        ]);
        let phases = derive_phases(BackendKind::Docker, &events);
        for pair in phases.windows(2) {
            assert_eq!(pair[0].end_s, pair[1].start_s);
        }
        let total: f64 = phases.iter().map(PhaseRecord::duration_s).sum();
        assert!((total - 0.8).abs() < 1e-12);
    }

    #[test]
    fn same_named_phases_merge() {
        let events = events(&[("spawned", 0.01), ("init_started", 0.02), ("ready", 0.5)]);
        let phases = derive_phases(BackendKind::Process, &events);
        assert_eq!(phases.len(), 2);
        assert_eq!(phases[0].name, "spawn");
        assert_eq!(phases[0].end_s, 0.02);
    }

    #[test]
    fn kernel_listening_splits_no_phase() {
        let events = events(&[
            ("exec_kernel", 0.1),
            ("kernel_listening", 0.6),
            ("ready", 0.62),
        ]);
        let phases = derive_phases(BackendKind::Process, &events);
        assert_eq!(phases.last().unwrap().name, "kernel_ready");
        assert_eq!(phases.last().unwrap().start_s, 0.1);
    }

    #[test]
    fn no_ready_gives_no_phases() {
        assert!(derive_phases(BackendKind::Process, &events(&[("spawned", 0.01)])).is_empty());
    }

    #[test]
    fn unknown_event_names_its_phase() {
        assert_eq!(
            phase_name(BackendKind::Docker, "image_checked"),
            "image_checked"
        );
    }
}
