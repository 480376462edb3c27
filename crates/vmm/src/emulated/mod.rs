//! Emulated hardware-KVM host: a QEMU TCG virtual machine with nested SVM in which the VMM runs
//! when the host's own KVM cannot boot a stock guest kernel in useful time.
