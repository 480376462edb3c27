//! A small KVM virtual machine monitor that boots the isobench guest image.
#![deny(missing_docs)]

pub mod emulated;
