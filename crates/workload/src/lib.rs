//! Jupyter client side shared by every backend: connection info, ready detection, cells.
#![deny(missing_docs)]
