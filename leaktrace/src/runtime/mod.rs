//! Runtime: what a process runs on top of its native code, and how to read
//! it from outside. Python now (which object holds the interpreter, which
//! version it is); Go later. Each runtime gets a folder: finding it in a
//! process here, walking its frames on the kernel side, naming them here.
//!
//! Nothing in this folder changes what is traced: it tells the report what
//! was found, so a user sees which interpreter a process runs, and later
//! stages know whether its frames can be read at all.
pub(crate) mod go;
pub(crate) mod python;
