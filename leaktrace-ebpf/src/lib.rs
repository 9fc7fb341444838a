//! Empty library target: it lets the userspace crate name this package as a
//! build dependency, so cargo rebuilds the embedded object when it changes.
#![no_std]
