//! vCPU threads: one per vCPU, each running `KVM_RUN` and routing its exits to the buses.
//!
//! ```text
//!  vCPU thread                         main thread (event loop)
//!  ───────────                         ────────────────────────
//!  KVM_RUN ─► exit ─► bus ─► device    epoll: ioeventfds, TAP, signalfd, exit eventfd
//!     ▲                 │                 │
//!     └─── continue ◄───┘                 │
//!  fatal exit or i8042 reset:             │
//!     ExitLatch::request(reason) ───────► exit eventfd readable ─► stop every vCPU:
//!                                          set `stop`, send the kick signal until each
//!  KVM_RUN returns EINTR ◄──────────────── thread has left KVM_RUN and returned
//! ```

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::{lock, Bus};
use crate::events::{monotonic_us, Event, EventSink, ExitReason, RamMapping, ShutdownReason};

/// The first reason the VM should stop, and the flag and eventfd that announce it.
pub struct ExitLatch {
    reason: Mutex<Option<ExitReason>>,
    stop: AtomicBool,
    event: EventFd,
    events: Arc<EventSink>,
}

impl ExitLatch {
    /// A latch that announces on a new eventfd and reports guest shutdowns to `events`.
    pub fn new(events: Arc<EventSink>) -> io::Result<Self> {
        Ok(ExitLatch {
            reason: Mutex::new(None),
            stop: AtomicBool::new(false),
            event: EventFd::new(libc::EFD_NONBLOCK)?,
            events,
        })
    }

    /// Records `reason` unless an earlier one was recorded, and wakes the event loop.
    pub fn request(&self, reason: ExitReason) {
        let monotonic_us = monotonic_us();
        let mut slot = lock(&self.reason);
        if slot.is_none() {
            if let ExitReason::Guest(reason) = reason {
                self.events.emit(&Event::GuestShutdown {
                    monotonic_us,
                    reason,
                });
            }
            *slot = Some(reason);
        }
        drop(slot);
        self.stop.store(true, Ordering::Release);
        if let Err(error) = self.event.write(1) {
            tracing::error!(%error, "cannot wake the event loop");
        }
    }

    /// Whether a reason was recorded.
    pub fn is_set(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// The recorded reason.
    pub fn reason(&self) -> Option<ExitReason> {
        lock(&self.reason).clone()
    }

    /// The eventfd written by [`ExitLatch::request`].
    pub fn event(&self) -> &EventFd {
        &self.event
    }
}

/// Counters of exits the VMM did not route to a device.
#[derive(Default)]
pub struct ExitCounters {
    /// Port I/O accesses with no device.
    pub unhandled_pio: AtomicU64,
    /// MMIO accesses with no device.
    pub unhandled_mmio: AtomicU64,
}

/// State shared by the vCPU threads.
pub struct VcpuShared {
    /// Port I/O bus.
    pub pio: Bus,
    /// MMIO bus.
    pub mmio: Bus,
    /// Latch that records why the VM ends.
    pub latch: Arc<ExitLatch>,
    /// Event output.
    pub events: Arc<EventSink>,
    /// Unrouted exit counters.
    pub counters: ExitCounters,
    /// Guest RAM mappings, for the `vcpus_running` event.
    pub guest_ram: Vec<RamMapping>,
    /// Number of vCPUs.
    pub vcpu_count: u32,
}

/// Next step of the run loop after an exit.
#[derive(Debug, PartialEq, Eq)]
pub enum ExitAction {
    /// Enter the guest again.
    Continue,
    /// Stop this vCPU and end the VM for this reason.
    Stop(ExitReason),
}

/// Only the first unrouted accesses are logged; the counters keep the total.
const UNHANDLED_LOG_LIMIT: u64 = 16;

fn count_unhandled(counter: &AtomicU64, kind: &str, addr: u64, len: usize) {
    let seen = counter.fetch_add(1, Ordering::Relaxed);
    if seen < UNHANDLED_LOG_LIMIT {
        tracing::debug!(
            kind,
            addr = format_args!("{addr:#x}"),
            len,
            "access with no device"
        );
    }
}

/// Routes one exit; the seam between KVM_RUN and the devices, testable without a guest.
pub fn handle_exit(exit: VcpuExit<'_>, shared: &VcpuShared) -> ExitAction {
    match exit {
        VcpuExit::IoOut(port, data) => {
            if !shared.pio.write(port as u64, data) {
                count_unhandled(
                    &shared.counters.unhandled_pio,
                    "pio write",
                    port as u64,
                    data.len(),
                );
            }
            ExitAction::Continue
        }
        VcpuExit::IoIn(port, data) => {
            data.fill(0);
            if !shared.pio.read(port as u64, data) {
                data.fill(0xff);
                count_unhandled(
                    &shared.counters.unhandled_pio,
                    "pio read",
                    port as u64,
                    data.len(),
                );
            }
            ExitAction::Continue
        }
        VcpuExit::MmioWrite(addr, data) => {
            if !shared.mmio.write(addr, data) {
                count_unhandled(
                    &shared.counters.unhandled_mmio,
                    "mmio write",
                    addr,
                    data.len(),
                );
            }
            ExitAction::Continue
        }
        VcpuExit::MmioRead(addr, data) => {
            data.fill(0);
            if !shared.mmio.read(addr, data) {
                data.fill(0xff);
                count_unhandled(
                    &shared.counters.unhandled_mmio,
                    "mmio read",
                    addr,
                    data.len(),
                );
            }
            ExitAction::Continue
        }
        VcpuExit::Intr | VcpuExit::IrqWindowOpen => ExitAction::Continue,
        VcpuExit::Shutdown => ExitAction::Stop(ExitReason::Guest(ShutdownReason::TripleFault)),
        VcpuExit::SystemEvent(kind, _) => match kind {
            KVM_SYSTEM_EVENT_SHUTDOWN => {
                ExitAction::Stop(ExitReason::Guest(ShutdownReason::Poweroff))
            }
            KVM_SYSTEM_EVENT_RESET => ExitAction::Stop(ExitReason::Guest(ShutdownReason::Reset)),
            KVM_SYSTEM_EVENT_CRASH => {
                ExitAction::Stop(ExitReason::VcpuFailed("guest crash event".into()))
            }
            other => ExitAction::Stop(ExitReason::VcpuFailed(format!("system event {other}"))),
        },
        VcpuExit::Hlt => ExitAction::Stop(ExitReason::VcpuFailed(
            "vCPU halted outside the in-kernel LAPIC".into(),
        )),
        VcpuExit::FailEntry(reason, cpu) => ExitAction::Stop(ExitReason::VcpuFailed(format!(
            "VM entry failed on CPU {cpu} with hardware reason {reason:#x}"
        ))),
        VcpuExit::InternalError => ExitAction::Stop(ExitReason::VcpuFailed(
            "KVM internal error (see the host's dmesg)".into(),
        )),
        other => ExitAction::Stop(ExitReason::VcpuFailed(format!("unexpected exit {other:?}"))),
    }
}

fn run_loop(mut vcpu: VcpuFd, index: u32, shared: Arc<VcpuShared>, start: Arc<Barrier>) {
    start.wait();
    if index == 0 {
        shared.events.emit(&Event::VcpusRunning {
            monotonic_us: monotonic_us(),
            vcpus: shared.vcpu_count,
            guest_ram: shared.guest_ram.clone(),
        });
    }
    while !shared.latch.is_set() {
        match vcpu.run() {
            Ok(exit) => {
                if let ExitAction::Stop(reason) = handle_exit(exit, &shared) {
                    if reason == ExitReason::Guest(ShutdownReason::TripleFault) {
                        log_fault_state(&vcpu, index);
                    }
                    tracing::info!(vcpu = index, reason = %reason.describe(), "vCPU stopped");
                    shared.latch.request(reason);
                }
            }
            Err(error) if error.errno() == libc::EINTR || error.errno() == libc::EAGAIN => {}
            Err(error) => {
                shared
                    .latch
                    .request(ExitReason::VcpuFailed(format!("KVM_RUN failed: {error}")));
            }
        }
    }
}

/// Logs the registers a triple fault left on vCPU `index`: where the guest was and which
/// page tables and modes it ran with, the first clue to what faulted. KVM on AMD (SVM) resets
/// the vCPU before it reports the shutdown, so there only the fact is logged.
fn log_fault_state(vcpu: &VcpuFd, index: u32) {
    match (vcpu.get_regs(), vcpu.get_sregs()) {
        (Ok(regs), Ok(sregs)) if regs.rip == 0xfff0 && sregs.cs.selector == 0xf000 => {
            tracing::warn!(
                vcpu = index,
                "guest triple fault; KVM reset the vCPU, so its registers at the fault are lost"
            );
        }
        (Ok(regs), Ok(sregs)) => tracing::warn!(
            vcpu = index,
            rip = format_args!("{:#x}", regs.rip),
            rsp = format_args!("{:#x}", regs.rsp),
            rflags = format_args!("{:#x}", regs.rflags),
            cs = format_args!("{:#x}", sregs.cs.selector),
            cr0 = format_args!("{:#x}", sregs.cr0),
            cr2 = format_args!("{:#x}", sregs.cr2),
            cr3 = format_args!("{:#x}", sregs.cr3),
            cr4 = format_args!("{:#x}", sregs.cr4),
            efer = format_args!("{:#x}", sregs.efer),
            "guest triple fault"
        ),
        (Err(error), _) | (_, Err(error)) => tracing::warn!(
            vcpu = index,
            %error,
            "guest triple fault; its registers cannot be read"
        ),
    }
}

/// The signal that makes a vCPU thread leave `KVM_RUN`.
pub fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the no-op handler of [`kick_signal`], so that delivering it interrupts
/// `KVM_RUN` with EINTR instead of ending the process.
pub fn install_kick_handler() -> io::Result<()> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick)
        .map_err(|e| io::Error::from_raw_os_error(e.errno()))
}

/// Running vCPU threads.
pub struct VcpuThreads {
    handles: Vec<JoinHandle<()>>,
}

impl VcpuThreads {
    /// Starts one thread per vCPU; they enter the guest together, vCPU 0 first announcing
    /// `vcpus_running`.
    pub fn start(vcpus: Vec<VcpuFd>, shared: Arc<VcpuShared>) -> io::Result<Self> {
        let start = Arc::new(Barrier::new(vcpus.len()));
        let mut handles = Vec::with_capacity(vcpus.len());
        for (index, vcpu) in vcpus.into_iter().enumerate() {
            let shared = shared.clone();
            let start = start.clone();
            let handle = std::thread::Builder::new()
                .name(format!("vcpu{index}"))
                .stack_size(256 << 10)
                .spawn(move || run_loop(vcpu, index as u32, shared, start))?;
            handles.push(handle);
        }
        Ok(VcpuThreads { handles })
    }

    /// Stops every vCPU thread (the latch must be set) and waits for them up to `timeout`;
    /// returns false when a thread did not leave `KVM_RUN` in time.
    pub fn stop(self, timeout: Duration) -> bool {
        use std::os::unix::thread::JoinHandleExt;
        let deadline = Instant::now() + timeout;
        // A kick that arrives just before a thread enters KVM_RUN is lost, so kick again until
        // every thread is out.
        while self.handles.iter().any(|h| !h.is_finished()) {
            if Instant::now() > deadline {
                tracing::error!("a vCPU thread did not stop in time");
                return false;
            }
            for handle in self.handles.iter().filter(|h| !h.is_finished()) {
                // SAFETY: the thread is alive (not finished, and its JoinHandle is held), so
                // its pthread_t is valid; the kick signal has a no-op handler installed.
                unsafe { libc::pthread_kill(handle.as_pthread_t(), kick_signal()) };
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        for handle in self.handles {
            let _ = handle.join();
        }
        true
    }
}
