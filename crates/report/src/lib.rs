//! Plots and the HTML report rendered from `results.json` files.
#![deny(missing_docs)]
