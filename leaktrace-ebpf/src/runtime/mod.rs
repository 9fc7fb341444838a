//! Frames of language runtimes, walked in the kernel from the runtime's own
//! data structures: each runtime in a file (or folder) of its own.
//!
//! - `python`: `CPython`'s frame chain (2.7, 3.6–3.13), per traced process.
pub(crate) mod python;
