//! Backends, trials, metric sampling, statistics and the results schema.
#![deny(missing_docs)]

pub mod backend;
pub mod image;
