//! Empty on purpose: aya-build needs a library target to depend on; the programs are in the binary.
#![no_std]
