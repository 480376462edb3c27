//! The one epoll loop on the main thread: queue notifications (ioeventfds), TAP readiness,
//! termination signals (signalfd) and the exit latch's eventfd.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use crate::devices::lock;
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::DeviceEvent;
use crate::events::ExitReason;
use crate::vcpu::ExitLatch;

/// Signals that stop the VM: they are blocked in every thread and read from a signalfd.
pub const TERMINATION_SIGNALS: [i32; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

const TOKEN_LATCH: u64 = 0;
const TOKEN_SIGNAL: u64 = 1;
const TOKEN_BACKEND: u64 = 0xffff;

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data for which all-zero bytes are a valid value.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: sigemptyset and sigaddset only write the set, a valid local value.
    unsafe { libc::sigemptyset(&mut set) };
    for signal in TERMINATION_SIGNALS {
        // SAFETY: as above.
        unsafe { libc::sigaddset(&mut set, signal) };
    }
    set
}

/// Blocks [`TERMINATION_SIGNALS`] in the calling thread and every thread it starts later; call
/// it first thing in `main`.
pub fn block_termination_signals() -> io::Result<()> {
    let set = signal_set();
    // SAFETY: pthread_sigmask reads `set` and writes no old set (null).
    let result = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if result != 0 {
        return Err(io::Error::from_raw_os_error(result));
    }
    Ok(())
}

fn check(result: libc::c_int) -> io::Result<libc::c_int> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

/// The epoll set and what its tokens stand for.
pub struct EventLoop {
    epoll: OwnedFd,
    signals: OwnedFd,
    latch: Arc<ExitLatch>,
    devices: Vec<Arc<Mutex<MmioTransport>>>,
    queue_fds: Vec<Vec<RawFd>>,
}

impl EventLoop {
    /// Watches `latch`, the termination signals and every queue and backend of `devices`.
    pub fn new(latch: Arc<ExitLatch>, devices: Vec<Arc<Mutex<MmioTransport>>>) -> io::Result<Self> {
        // SAFETY: epoll_create1 has no memory arguments; the result is checked.
        let epoll = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: `epoll` is a new descriptor owned from here on.
        let epoll = unsafe { OwnedFd::from_raw_fd(epoll) };
        let set = signal_set();
        // SAFETY: signalfd reads `set`, and -1 requests a new descriptor; the result is checked.
        let signals =
            check(unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) })?;
        // SAFETY: `signals` is a new descriptor owned from here on.
        let signals = unsafe { OwnedFd::from_raw_fd(signals) };

        let mut event_loop = EventLoop {
            epoll,
            signals,
            latch,
            devices,
            queue_fds: Vec::new(),
        };
        event_loop.add(
            event_loop.latch.event().as_raw_fd(),
            TOKEN_LATCH,
            libc::EPOLLIN as u32,
        )?;
        event_loop.add(
            event_loop.signals.as_raw_fd(),
            TOKEN_SIGNAL,
            libc::EPOLLIN as u32,
        )?;
        for index in 0..event_loop.devices.len() {
            let (queue_fds, backend) = {
                let device = lock(&event_loop.devices[index]);
                let fds: Vec<RawFd> = device
                    .queue_events()
                    .iter()
                    .map(|e| e.as_raw_fd())
                    .collect();
                (fds, device.backend_fd())
            };
            let base = (index as u64 + 1) << 16;
            for (queue, fd) in queue_fds.iter().enumerate() {
                event_loop.add(*fd, base | queue as u64, libc::EPOLLIN as u32)?;
            }
            if let Some(fd) = backend {
                let events = (libc::EPOLLIN | libc::EPOLLET) as u32;
                event_loop.add(fd, base | TOKEN_BACKEND, events)?;
            }
            event_loop.queue_fds.push(queue_fds);
        }
        Ok(event_loop)
    }

    fn add(&self, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
        let mut event = libc::epoll_event { events, u64: token };
        // SAFETY: epoll_ctl reads `event`; both descriptors are open.
        check(unsafe {
            libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event)
        })?;
        Ok(())
    }

    /// Serves events until the latch is set, then returns its reason.
    pub fn run(&mut self) -> ExitReason {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 32];
        loop {
            if self.latch.is_set() {
                return self.latch.reason().unwrap_or_else(|| {
                    ExitReason::EventLoopFailed("stopped without a reason".into())
                });
            }
            // SAFETY: epoll_wait writes at most `events.len()` entries into `events`.
            let count = unsafe {
                libc::epoll_wait(
                    self.epoll.as_raw_fd(),
                    events.as_mut_ptr(),
                    events.len() as i32,
                    -1,
                )
            };
            if count < 0 {
                let error = io::Error::last_os_error();
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                self.latch
                    .request(ExitReason::EventLoopFailed(format!("epoll_wait: {error}")));
                continue;
            }
            for event in &events[..count as usize] {
                self.dispatch(event.u64);
            }
        }
    }

    fn dispatch(&mut self, token: u64) {
        match token {
            TOKEN_LATCH => {
                let _ = self.latch.event().read();
            }
            TOKEN_SIGNAL => {
                if let Some(signal) = self.read_signal() {
                    tracing::info!(signal, "stopping on signal");
                    self.latch.request(ExitReason::Signal(signal));
                }
            }
            _ => {
                let index = (token >> 16) as usize - 1;
                let kind = token & 0xffff;
                let Some(device) = self.devices.get(index) else {
                    return;
                };
                let event = if kind == TOKEN_BACKEND {
                    DeviceEvent::Backend
                } else {
                    let fd = self.queue_fds[index][kind as usize];
                    drain_eventfd(fd);
                    DeviceEvent::Queue(kind as usize)
                };
                lock(device).process(event);
            }
        }
    }

    fn read_signal(&self) -> Option<i32> {
        // SAFETY: signalfd_siginfo is plain data; all-zero is a valid value.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: read() writes at most `size` bytes into `info`.
        let n = unsafe {
            libc::read(
                self.signals.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            )
        };
        (n == size as isize).then_some(info.ssi_signo as i32)
    }
}

fn drain_eventfd(fd: RawFd) {
    let mut value = 0u64;
    // SAFETY: read() writes at most 8 bytes into `value`; the eventfd is non-blocking.
    unsafe { libc::read(fd, (&mut value as *mut u64).cast(), 8) };
}
