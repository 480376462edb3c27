//! Startup phases: the consecutive intervals between `t0`, the backend's phase marks and ready,
//! plus the phases that run alongside them.
//!
//! A consecutive phase is named after the event that ends it. Known events give the names of
//! the measurement definitions (`vmm_spawn`, `vmm_setup`, `guest_kernel`, `guest_init`,
//! `create`, `start`, `entrypoint`, `spawn`, `kernel_ready`), and an unknown event names its
//! phase itself. The events that split consecutive phases follow one causal chain per
//! backend, each caused by the one before, so their time order is their logical order.
//!
//! The `docker` backend's start call is not on that chain: the Engine API returns from it while
//! the guest entrypoint already runs (with Debian's engine 20.10 the entrypoint's markers
//! usually arrive a few milliseconds before the call returns). Its interval, `start_call`, is a
//! concurrent phase: recorded with its own start and end, marked [`PhaseRecord::concurrent`],
//! and never stacked after the phase that logically follows it.

use crate::backend::BackendKind;
use crate::results::{EventRecord, PhaseRecord};

/// Event at which the Jupyter kernel is ready; the last phase ends here.
pub const READY_EVENT: &str = "ready";

/// Events recorded on the way to ready that split no phase: they are parts of `kernel_ready`,
/// which runs from the Jupyter kernel's exec to ready on every backend. `kernel_listening` is
/// the `process` backend's observation that the kernel's ports accept connections.
const READY_DETAIL_EVENTS: [&str; 3] = ["kernel_info_reply", "first_status", "kernel_listening"];

/// A phase that runs alongside the consecutive phases.
struct ConcurrentPhase {
    kind: BackendKind,
    name: &'static str,
    start_event: &'static str,
    end_events: &'static [&'static str],
}

/// Every concurrent phase. `start_call` runs from the return of the Engine API's create call to
/// the return of its start call.
const CONCURRENT_PHASES: [ConcurrentPhase; 1] = [ConcurrentPhase {
    kind: BackendKind::Docker,
    name: "start_call",
    start_event: "container_created",
    end_events: &["container_started", "started"],
}];

/// Name of the phase that ends at `event` for a backend of `kind`.
pub fn phase_name(kind: BackendKind, event: &str) -> String {
    if let Some(phase) = concurrent_phase_ending_at(kind, event) {
        return phase.name.to_owned();
    }
    let name = match (kind, event) {
        (_, READY_EVENT) => "kernel_ready",
        (BackendKind::Microvm, "vmm_started") => "vmm_spawn",
        (BackendKind::Microvm, "vcpus_running" | "vcpu_started" | "first_vcpu_run") => "vmm_setup",
        (BackendKind::Microvm, "init_started") => "guest_kernel",
        (BackendKind::Microvm, "mounts_done") => "guest_mounts",
        (BackendKind::Microvm, "exec_kernel") => "guest_init",
        (BackendKind::Docker, "container_created" | "created") => "create",
        // The container runs once its entrypoint reports; the start call's return is later.
        (BackendKind::Docker, "init_started") => "start",
        (BackendKind::Docker, "exec_kernel") => "entrypoint",
        (BackendKind::Process, "mounts_done") => "chroot_setup",
        (BackendKind::Process, "spawned" | "process_spawned") => "spawn",
        (BackendKind::Process, "init_started") => "spawn",
        (BackendKind::Process, "exec_kernel") => "entrypoint",
        (_, other) => other,
    };
    name.to_owned()
}

/// Returns whether a phase of this name runs alongside the consecutive phases of `kind`.
pub fn is_concurrent(kind: BackendKind, phase: &str) -> bool {
    CONCURRENT_PHASES
        .iter()
        .any(|concurrent| concurrent.kind == kind && concurrent.name == phase)
}

fn concurrent_phase_ending_at(kind: BackendKind, event: &str) -> Option<&'static ConcurrentPhase> {
    CONCURRENT_PHASES
        .iter()
        .find(|phase| phase.kind == kind && phase.end_events.contains(&event))
}

/// Position of `event` on the causal chain of `kind`, which orders events stamped at the same
/// instant, because the entrypoint's markers often arrive in one read. Unknown events go last.
fn chain_position(kind: BackendKind, event: &str) -> usize {
    let chain: &[&str] = match kind {
        BackendKind::Microvm => &[
            "vmm_started",
            "vcpus_running",
            "init_started",
            "mounts_done",
            "exec_kernel",
        ],
        BackendKind::Docker => &["container_created", "init_started", "exec_kernel"],
        BackendKind::Process => &[
            "mounts_done",
            "process_spawned",
            "init_started",
            "exec_kernel",
        ],
    };
    chain
        .iter()
        .position(|known| *known == event)
        .unwrap_or(chain.len())
}

/// Splits `t0 ..= ready` into consecutive phases at every phase mark, in time order, then adds
/// the concurrent phases whose start and end events both arrived. Events after ready, and the
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
        .filter(|event| concurrent_phase_ending_at(kind, &event.name).is_none())
        .filter(|event| event.name != READY_EVENT && event.at_s <= ready_at)
        .collect();
    boundaries.sort_by(|a, b| {
        a.at_s
            .total_cmp(&b.at_s)
            .then_with(|| chain_position(kind, &a.name).cmp(&chain_position(kind, &b.name)))
    });

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
                concurrent: false,
            }),
        }
        start_s = end_s.max(start_s);
    }

    for concurrent in CONCURRENT_PHASES.iter().filter(|phase| phase.kind == kind) {
        let first = |names: &[&str]| {
            events
                .iter()
                .find(|event| names.contains(&event.name.as_str()))
                .map(|event| event.at_s)
        };
        if let (Some(start_s), Some(end_s)) = (
            first(&[concurrent.start_event]),
            first(concurrent.end_events),
        ) {
            phases.push(PhaseRecord {
                name: concurrent.name.to_owned(),
                start_s,
                end_s: end_s.max(start_s),
                concurrent: true,
            });
        }
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
        let consecutive: Vec<&PhaseRecord> = phases.iter().filter(|p| !p.concurrent).collect();
        for pair in consecutive.windows(2) {
            assert_eq!(pair[0].end_s, pair[1].start_s);
        }
        let total: f64 = consecutive.iter().map(|phase| phase.duration_s()).sum();
        assert!((total - 0.8).abs() < 1e-12);
    }

    /// Phase names in order.
    fn names(phases: &[PhaseRecord]) -> Vec<&str> {
        phases.iter().map(|phase| phase.name.as_str()).collect()
    }

    #[test]
    fn docker_start_call_runs_alongside() {
        // Each case: events, then the ends of `start` and of `start_call`. In the first the
        // entrypoint's markers arrive in one read before the start call returns, as they do
        // with Debian's engine 20.10; in the second the call returns first.
        let cases = [
            (
                vec![
                    ("container_created", 0.015),
                    ("init_started", 0.283),
                    ("exec_kernel", 0.283),
                    ("container_started", 0.286),
                    ("first_status", 0.82),
                    ("ready", 0.821),
                ],
                0.283,
                0.286,
            ),
            (
                vec![
                    ("container_created", 0.23),
                    ("container_started", 0.67),
                    ("init_started", 0.68),
                    ("exec_kernel", 0.681),
                    ("ready", 1.07),
                ],
                0.68,
                0.67,
            ),
        ];
        for (list, start_end, call_end) in cases {
            let created = list[0].1;
            let phases = derive_phases(BackendKind::Docker, &events(&list));
            assert_eq!(
                names(&phases),
                [
                    "create",
                    "start",
                    "entrypoint",
                    "kernel_ready",
                    "start_call"
                ]
            );
            assert!(phases[..4].iter().all(|phase| !phase.concurrent));
            assert_eq!(phases[1].start_s, created);
            assert_eq!(phases[1].end_s, start_end);
            let start_call = &phases[4];
            assert!(start_call.concurrent);
            assert_eq!(start_call.start_s, created);
            assert_eq!(start_call.end_s, call_end);
        }
    }

    #[test]
    fn equal_stamps_follow_the_chain() {
        let events = events(&[
            ("exec_kernel", 0.2),
            ("init_started", 0.2),
            ("container_created", 0.01),
            ("ready", 0.5),
        ]);
        let phases = derive_phases(BackendKind::Docker, &events);
        assert_eq!(
            names(&phases),
            ["create", "start", "entrypoint", "kernel_ready"]
        );
    }

    #[test]
    fn start_call_without_create_is_left_out() {
        let events = events(&[("container_started", 0.3), ("ready", 0.8)]);
        let phases = derive_phases(BackendKind::Docker, &events);
        assert!(phases.iter().all(|phase| !phase.concurrent));
        assert!(is_concurrent(BackendKind::Docker, "start_call"));
        assert!(!is_concurrent(BackendKind::Process, "start_call"));
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
