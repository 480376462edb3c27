//! A synthetic run with every kind of figure, used by the report's tests.

use isobench_harness::backend::{BackendKind, GuestMeminfo, MemorySample};
use isobench_harness::host::{DockerInfo, HostInfo, KvmFlavour, KvmInfo};
use isobench_harness::results::{
    CellMetric, CellRecord, EventRecord, ExecutionHost, MemoryRecord, PhaseRecord, Results,
    RunConfig, RunInfo, SkippedBackend, TrialOutcome, TrialRecord, TrialStage, SCHEMA_VERSION,
};

const MIB: u64 = 1 << 20;

/// Backend name, kind, execution host, startup scale and memory scale of each backend.
const BACKENDS: [(&str, BackendKind, ExecutionHost, f64, f64); 3] = [
    (
        "process",
        BackendKind::Process,
        ExecutionHost::Direct,
        1.0,
        1.0,
    ),
    (
        "docker",
        BackendKind::Docker,
        ExecutionHost::Direct,
        1.6,
        1.3,
    ),
    (
        "microvm",
        BackendKind::Microvm,
        ExecutionHost::Emulated,
        30.0,
        4.0,
    ),
];

fn phases(kind: BackendKind, ready: f64) -> (Vec<EventRecord>, Vec<PhaseRecord>) {
    let marks: &[(&str, &str, f64)] = match kind {
        BackendKind::Process => &[("init_started", "spawn", 0.05)],
        BackendKind::Docker => &[
            ("container_created", "create", 0.15),
            ("init_started", "start", 0.35),
            ("exec_kernel", "entrypoint", 0.4),
        ],
        BackendKind::Microvm => &[
            ("vcpus_running", "vmm_setup", 0.02),
            ("init_started", "guest_kernel", 0.3),
            ("exec_kernel", "guest_init", 0.35),
        ],
    };
    let mut events = Vec::new();
    let mut phases = Vec::new();
    let mut start = 0.0;
    for (event, phase, fraction) in marks {
        let at = ready * fraction;
        events.push(EventRecord {
            name: (*event).into(),
            at_s: at,
        });
        phases.push(PhaseRecord {
            name: (*phase).into(),
            start_s: start,
            end_s: at,
            concurrent: false,
        });
        start = at;
    }
    events.push(EventRecord {
        name: "ready".into(),
        at_s: ready,
    });
    phases.push(PhaseRecord {
        name: "kernel_ready".into(),
        start_s: start,
        end_s: ready,
        concurrent: false,
    });
    if kind == BackendKind::Docker {
        // The start call returns after the entrypoint has begun, as with engine 20.10.
        let (created, returned) = (ready * 0.15, ready * 0.37);
        events.push(EventRecord {
            name: "container_started".into(),
            at_s: returned,
        });
        events.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
        phases.push(PhaseRecord {
            name: "start_call".into(),
            start_s: created,
            end_s: returned,
            concurrent: true,
        });
    }
    (events, phases)
}

fn trial(index: usize, round: u32, warmup: bool) -> TrialRecord {
    let (name, kind, execution_host, startup, memory) = BACKENDS[index];
    // A fixed wobble per round stands in for run-to-run noise.
    let wobble = 1.0 + 0.03 * f64::from((round * 7 + index as u32 * 3) % 5) - 0.06;
    let ready = 0.55 * startup * wobble;
    let (events, phases) = phases(kind, ready);
    let guest_total = if kind == BackendKind::Microvm {
        512 * MIB
    } else {
        24 * 1024 * MIB
    };
    let sample = MemorySample {
        host_pss_bytes: Some((48.0 * memory * wobble) as u64 * MIB),
        vmm_overhead_bytes: (kind == BackendKind::Microvm).then_some(5 * MIB),
        cgroup_working_set_bytes: (kind == BackendKind::Docker).then_some(40 * MIB),
        cgroup_usage_bytes: (kind == BackendKind::Docker).then_some(55 * MIB),
        guest_view: Some(GuestMeminfo {
            mem_total_bytes: guest_total,
            mem_available_bytes: guest_total - 300 * MIB,
        }),
    };
    let latencies = |base: f64, count: u32| -> Vec<f64> {
        (0..count)
            .map(|i| base * startup.sqrt() * (1.0 + 0.002 * f64::from(i % 50)))
            .collect()
    };
    TrialRecord {
        backend: name.into(),
        kind,
        execution_host,
        round,
        warmup,
        outcome: TrialOutcome::Completed,
        events,
        phases,
        launch_to_ready_s: Some(ready),
        ready_attempts: Some(4),
        memory_idle: Some(MemoryRecord {
            at_s: ready + 0.5,
            host_delta_bytes: Some((70.0 * memory * wobble) as i64 * MIB as i64),
            sample: sample.clone(),
        }),
        memory_after_suite: Some(MemoryRecord {
            at_s: ready + 3.0,
            host_delta_bytes: Some((90.0 * memory * wobble) as i64 * MIB as i64),
            sample,
        }),
        cells: vec![
            CellRecord {
                name: "trivial".into(),
                metric: CellMetric::Latency,
                latencies_s: latencies(0.0008, 200),
                bytes_per_repetition: None,
                answer: None,
            },
            CellRecord {
                name: "numpy_matmul".into(),
                metric: CellMetric::Latency,
                latencies_s: latencies(0.03, 10),
                bytes_per_repetition: None,
                answer: None,
            },
            CellRecord {
                name: "stream_output".into(),
                metric: CellMetric::Throughput,
                latencies_s: latencies(0.05, 5),
                bytes_per_repetition: Some(8 << 20),
                answer: None,
            },
            CellRecord {
                name: "uname_release".into(),
                metric: CellMetric::Observation,
                latencies_s: latencies(0.001, 1),
                bytes_per_repetition: None,
                answer: Some(
                    if kind == BackendKind::Microvm {
                        "6.1.192"
                    } else {
                        "6.1.0-host"
                    }
                    .into(),
                ),
            },
        ],
        suite_s: Some(3.0),
        shutdown_s: Some(0.2),
    }
}

/// A run of `rounds` rounds on `hostname`, with one warm-up round and one failed docker trial.
pub fn results(hostname: &str, rounds: u32) -> Results {
    let mut trials = Vec::new();
    for index in 0..BACKENDS.len() {
        trials.push(trial(index, 0, true));
    }
    for round in 0..rounds {
        for index in 0..BACKENDS.len() {
            trials.push(trial(index, round, false));
        }
    }
    let mut failed = trial(1, rounds, false);
    failed.outcome = TrialOutcome::Failed {
        stage: TrialStage::Ready,
        cause: "the Jupyter kernel exited with exit status 1".into(),
        exit: None,
    };
    trials.push(failed);
    Results {
        schema_version: SCHEMA_VERSION,
        run: RunInfo {
            run_id: format!("ib-{hostname}"),
            started_at: "2026-12-04T12:00:00Z".into(),
            finished_at: Some("2026-12-04T12:06:00Z".into()),
            interrupted: false,
            command_line: vec![
                "isobench".into(),
                "compare".into(),
                "--microvm-host".into(),
                "emulated".into(),
            ],
            isobench_version: "0.1.0".into(),
            isobench_revision: Some("0123456789ab".into()),
            image_id: "0f1e2d3c".into(),
            config: RunConfig {
                backends: BACKENDS
                    .iter()
                    .map(|backend| backend.0.to_owned())
                    .collect(),
                trials: rounds,
                warmup: 1,
                vcpus: 1,
                memory_mib: 512,
                suite: "default".into(),
                ready_deadline_s: 60.0,
                trial_deadline_s: 300.0,
                idle_settle_s: 0.5,
            },
            skipped_backends: vec![SkippedBackend {
                backend: "qemu".into(),
                reason: "not implemented on this build".into(),
            }],
        },
        host: HostInfo {
            hostname: hostname.into(),
            cpu_model: "Example CPU @ 2.0GHz".into(),
            logical_cores: 2,
            memory_total_bytes: 24 << 30,
            host_kernel: "6.1.0 #1 SMP".into(),
            host_is_vm: true,
            hypervisor_vendor: Some("Example Cloud VM".into()),
            kvm: KvmInfo {
                flavour: KvmFlavour::Paravirtual,
                module: Some("kvm_pvm".into()),
                api_version: Some(12),
            },
            docker: Some(DockerInfo {
                engine_version: "20.10.24".into(),
                api_version: "1.41".into(),
                cgroup_version: Some("1".into()),
            }),
        },
        trials,
    }
}
