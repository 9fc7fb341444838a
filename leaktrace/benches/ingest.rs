//! Daemon-side benchmark: synthetic ring-buffer records replayed through
//! the same pipeline the session uses (decode, interpret, intern, table),
//! without the kernel. Prints records per second on one core and the
//! daemon's bytes per outstanding allocation.
//!
//! Run: `cargo bench -p leaktrace --features bench --bench ingest` (or
//! `cargo xtask bench`).
use std::time::Instant;

use leaktrace::daemon::{
    pipeline::Pipeline,
    records::{as_bytes, free_record, malloc_record},
};

/// Stacks per synthetic process: real services have hundreds of sites.
const SITES: u64 = 512;

/// A malloc(64) at `addr` from one of `SITES` stacks of `depth` frames.
fn alloc(addr: u64, site: u64, depth: usize) -> Vec<u64> {
    let stack: Vec<u64> = (0..depth as u64)
        .map(|i| 0x40_0000 + site * 0x100 + i * 0x10)
        .collect();
    malloc_record(1, addr, 64, &stack, addr)
}

/// Resident set size of this process in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() {
    let depth = 16;
    // Throughput: alloc/free pairs over a working set of 4096 live blocks,
    // records pre-built so only the pipeline is timed.
    let pairs = 2_000_000u64;
    let records: Vec<Vec<u64>> = (0..4096u64)
        .flat_map(|i| {
            [
                alloc(0x1000_0000 + i * 64, i % SITES, depth),
                free_record(1, 0x1000_0000 + i * 64),
            ]
        })
        .collect();
    let mut pipeline = Pipeline::default();
    let start = Instant::now();
    for i in 0..pairs as usize * 2 {
        pipeline.ingest(as_bytes(&records[i % records.len()]));
    }
    let elapsed = start.elapsed().as_secs_f64();
    let per_second = (pairs * 2) as f64 / elapsed;
    println!(
        "ingest: {} records in {:.3} s = {:.2} M records/s on one core ({:.0} ns/record), stack depth {depth}",
        pairs * 2,
        elapsed,
        per_second / 1e6,
        elapsed * 1e9 / (pairs * 2) as f64
    );

    // Memory: one million outstanding allocations over SITES call sites.
    let outstanding = 1_000_000u64;
    let before = rss();
    let mut pipeline = Pipeline::default();
    for i in 0..outstanding {
        pipeline.ingest(as_bytes(&alloc(0x1_0000_0000 + i * 64, i % SITES, depth)));
    }
    let after = rss();
    assert_eq!(pipeline.table.len() as u64, outstanding);
    println!(
        "memory: {} outstanding allocations at {} sites: {:.1} bytes of daemon memory each (RSS growth)",
        outstanding,
        pipeline.sites.len(),
        after.saturating_sub(before) as f64 / outstanding as f64
    );
}
