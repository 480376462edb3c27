//! The API a parent process uses to run `isobench-vmm` as a child, as Firecracker runs as its
//! own process: build its command line, read its events, map their timestamps onto the
//! parent's `Instant` timeline and measure its memory overhead.
