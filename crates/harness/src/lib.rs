//! Backends, trials, metric sampling, statistics and the results schema.
#![deny(missing_docs)]

pub mod backend;
pub mod cancel;
pub mod defaults;
pub mod host;
pub mod image;
pub mod jupyter;
pub mod memory;
pub mod phases;
pub mod results;
pub mod run;
pub mod stats;
pub mod summary;
pub mod trial;
pub mod workload;

#[cfg(test)]
mod run_tests;
