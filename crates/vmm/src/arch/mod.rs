//! x86_64 specifics: the guest physical memory layout, the MP table, CPUID and register setup.

pub mod cpuid;
pub mod layout;
pub mod mptable;
pub mod regs;
