//! leaktrace: find the call sites that hold memory a process never frees.
//!
//! The data path, one folder per stage, each stage handing its output to the
//! next:
//!
//! ```text
//! target  ->  kernel  ->  [eBPF programs]  ->  daemon  ->  symbolize  ->  report
//! (which      (load,       (leaktrace-ebpf:      (decode records,  (addresses   (text, folded,
//!  objects,    attach,      probes, stacks,       call sites, heap  to frames)   json, pprof,
//!  where to    unwind       ring buffer)          table, totals,                 svg, html,
//!  probe)      tables)                            growth)                        metrics)
//! ```
//!
//! - [`target`]: what is in the traced process: ELF symbols, the allocator
//!   to probe, probe placement on decoded instructions, `/proc`, launching a
//!   command held at its entry point.
//! - [`kernel`]: loads the eBPF object, attaches the plan of probes, and
//!   fills the unwind tables the kernel walks stacks with.
//! - [`unwind`]: compiles an object's `.eh_frame` into those compact tables.
//! - [`daemon`]: decodes ring-buffer records, applies each call's contract
//!   to the heap table, interns call sites, totals them and ranks growth.
//! - [`symbolize`]: turns stack addresses into functions, files and lines,
//!   from the mappings a process had.
//! - [`report`]: the report model and one file per output format.
//! - [`diff`]: the `diff` subcommand: load two saved reports, compare, render.
//! - [`runtime`]: what runs on top of native code (the Python interpreter a
//!   process holds and its version), read from the target's own objects.
//! - [`app`]: the command line, the tracer that ties the stages together,
//!   the event loop, output files and the HTTP side of `serve`.
//!
//! Lower stages never import higher ones: `target`, `unwind`, `daemon` and
//! `report` are pure logic tested on made-up input or real object files;
//! `kernel`, `target::launch` and `app` talk to the kernel and are tested by
//! the integration suite on real processes. Runtime-specific code (Python,
//! Go) gets a `runtime/` folder of its own.
pub mod app;
pub mod daemon;
pub mod diff;
#[doc(hidden)]
pub mod fuzz;
pub(crate) mod kernel;
pub mod report;
pub(crate) mod runtime;
pub(crate) mod symbolize;
pub(crate) mod target;
#[cfg(test)]
mod test_support;
pub(crate) mod unwind;
