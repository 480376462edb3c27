//! Docker Engine driver that runs the isobench guest image as a container.
#![deny(missing_docs)]
