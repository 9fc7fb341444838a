//! The daemon's side of the data path: from ring-buffer bytes to call-site
//! totals, with no kernel and no I/O, so every step is tested on made-up
//! records.
//!
//! - [`decode`]: bytes to records;
//! - [`contracts`]: each call's arguments and return value to what it did
//!   to the heap;
//! - [`sites`]: stacks interned as call sites;
//! - [`heap`]: the outstanding blocks by (pid, address);
//! - [`resident`]: growth mode's resident pages, in runs per site;
//! - [`pipeline`]: the three above applied to one record at a time;
//! - [`python_walks`]: per process, what the kernel's Python walk found;
//! - [`aggregate`]: outstanding bytes and counts per call site;
//! - [`growth`]: each site's totals over time, and which only grow;
//! - [`history`]: bounded series of each process's and top site's bytes
//!   since attach, for the page.
pub mod aggregate;
pub mod contracts;
pub mod decode;
pub mod growth;
pub mod heap;
pub mod history;
pub mod pipeline;
pub mod python_walks;
#[cfg(any(test, feature = "bench"))]
pub mod records;
pub mod resident;
pub mod sites;
