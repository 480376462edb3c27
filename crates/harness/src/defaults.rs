//! Default run settings of `isobench compare`, several of which `isobench run` shares, defined
//! once so that the command-line flags, the recorded run configuration and the benches agree.

use std::time::Duration;

/// Measured trials per backend (`--trials`).
pub const TRIALS: u32 = 10;

/// Warm-up trials per backend, run first and left out of every figure (`--warmup`).
pub const WARMUP_TRIALS: u32 = 1;

/// vCPUs of the microVM and CPU limit of the container (`--vcpus`).
pub const VCPUS: u32 = 1;

/// Guest RAM of the microVM and memory limit of the container, in MiB (`--memory-mib`).
pub const MEMORY_MIB: u32 = 1024;

/// Time allowed from launch to a ready Jupyter kernel (`--ready-deadline`).
pub const READY_DEADLINE: Duration = Duration::from_secs(60);

/// Time allowed for one whole trial, launch to end of the suite (`--trial-deadline`).
pub const TRIAL_DEADLINE: Duration = Duration::from_secs(300);

/// Pause between ready and the idle memory sample. It has no flag.
pub const IDLE_SETTLE: Duration = Duration::from_millis(500);
