//! leaktrace: find the call sites that hold memory a process never frees.
//!
//! The data path, one module per stage, each knowing only the next:
//!
//! ```text
//! target -> probes -> kernel (eBPF, ring buffer) -> ingest -> heap -> aggregate -> symbolize -> report
//!           (placement)                             (pipeline: ingest + sites + heap, bytes in, table out)
//! ```
//!
//! `target`, `placement`, `probes`, `ingest`, `sites`, `heap`, `pipeline`,
//! `aggregate` and `report` are pure logic tested on made-up input or real
//! object files; `kernel`, `launch` and `session` talk to the kernel and are
//! tested by the integration suite on real processes.
pub mod aggregate;
pub mod cli;
pub mod engine;
pub mod growth;
pub mod heap;
pub mod ingest;
pub mod kernel;
pub mod launch;
pub mod pipeline;
pub mod placement;
pub mod probes;
pub mod report;
pub mod serve;
pub mod session;
pub mod sites;
pub mod symbolize;
pub mod system;
pub mod target;
#[cfg(test)]
mod test_support;
pub mod unwind;
pub mod unwind_maps;
