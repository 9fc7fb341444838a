//! Benchmarks (filled in below).
use anyhow::Result;

pub fn run(_pairs: u64, _runs: usize) -> Result<()> {
    anyhow::bail!("not yet")
}
