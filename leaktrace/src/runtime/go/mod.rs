//! Go: programs with no malloc/free to trace. The runtime maps its heap with
//! raw syscalls and frees by garbage collection, and a uretprobe on Go code
//! crashes it (goroutine stacks move). What is read instead, from outside:
//! which Go release built a binary, its functions and lines from
//! `.gopclntab` (kept even in stripped binaries), its goroutines from the
//! runtime's own tables, and its heap through the runtime's profile buckets
//! or growth mode's page faults.
//!
//! - [`buildinfo`]: whether an object is a Go binary, and its release;
//! - [`detect`]: which object of a process is one, each file read once;
//! - [`pclntab`]: the function table: frames at a PC (inlined calls
//!   expanded), a function's entry by name;
//! - [`binary`]: one binary's table, located and kept for lookups;
//! - [`moduledata`]: `gofunc`, the base of funcdata offsets, found in
//!   stripped binaries too;
//! - [`image`]: the object file read by address, bounds-checked;
//! - [`heap_profile`]: the runtime's heap profile buckets, read from the
//!   live process and scaled as pprof does;
//! - [`heap_symbols`]: where a binary keeps them (`.symtab`, or its code
//!   when stripped).
pub(crate) mod binary;
pub(crate) mod buildinfo;
pub(crate) mod detect;
pub(crate) mod heap_profile;
pub(crate) mod heap_symbols;
pub(crate) mod image;
pub(crate) mod moduledata;
pub(crate) mod pclntab;

#[cfg(test)]
mod heap_profile_tests;
#[cfg(test)]
mod oracle_tests;
#[cfg(test)]
mod pclntab_tests;
