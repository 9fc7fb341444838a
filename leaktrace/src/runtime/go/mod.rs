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
//! - [`data_refs`]: the data a function's code refers to (how a stripped
//!   binary's runtime variables are found).
//!
//! Goroutines by creation site:
//!
//! - [`g_layout`]: where `runtime.g`'s fields sit (DWARF, or per release);
//! - [`wait_reasons`]: what each `waitReason` value means, per binary;
//! - [`allgs_code`]: where `runtime.allgs` is in a stripped binary, from
//!   the code of the runtime functions that use it;
//! - [`goroutine_source`]: what a binary tells about reading its
//!   goroutines (where `runtime.allgs` is, which layout), or why not;
//! - [`go_wrapper`]: the function a `go` statement's wrapper calls;
//! - [`goroutines`]: goroutines grouped by creation site, and their growth
//!   across reads (pure);
//! - [`goroutines_live`]: reading them from a running process, capped.
pub(crate) mod binary;
pub(crate) mod buildinfo;
pub(crate) mod data_refs;
pub(crate) mod detect;
pub(crate) mod heap_profile;
pub(crate) mod heap_sampling;
pub(crate) mod heap_symbols;
pub(crate) mod image;
pub(crate) mod moduledata;
pub(crate) mod pclntab;

pub(crate) mod allgs_code;
pub(crate) mod g_layout;
pub(crate) mod go_wrapper;
pub(crate) mod goroutine_source;
pub(crate) mod goroutines;
pub(crate) mod goroutines_live;
pub(crate) mod wait_reasons;

#[cfg(test)]
mod fixture_tests;
#[cfg(test)]
mod heap_profile_tests;
#[cfg(test)]
mod oracle_tests;
#[cfg(test)]
mod pclntab_tests;
