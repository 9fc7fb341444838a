//! Aggregate: outstanding blocks summed per call site.
use std::collections::HashMap;

use crate::{heap::HeapTable, sites::SiteId};

/// What one call site still holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SiteTotal {
    pub site: SiteId,
    pub bytes: u64,
    pub count: u64,
    /// Age of its oldest outstanding block.
    pub oldest_age_ms: u64,
}

/// Sums the blocks that are at least `min_age_ns` old at `now_ns`
/// (CLOCK_MONOTONIC), per site, largest first (ties broken by count, then
/// site id, so the order is stable from one report to the next).
pub fn outstanding_by_site(table: &HeapTable, now_ns: u64, min_age_ns: u64) -> Vec<SiteTotal> {
    let now_ms = u64::from(table.ms_since_epoch(now_ns));
    let min_age_ms = min_age_ns / 1_000_000;
    let mut by_site: HashMap<SiteId, SiteTotal> = HashMap::new();
    for (_pid, block, counts) in table.outstanding() {
        let age_ms = now_ms.saturating_sub(u64::from(block.time_ms));
        if age_ms < min_age_ms {
            continue;
        }
        let total = by_site.entry(block.site).or_insert(SiteTotal {
            site: block.site,
            bytes: 0,
            count: 0,
            oldest_age_ms: 0,
        });
        total.bytes += block.size;
        total.count += u64::from(counts);
        total.oldest_age_ms = total.oldest_age_ms.max(age_ms);
    }
    let mut totals: Vec<SiteTotal> = by_site.into_values().collect();
    totals.sort_by(|a, b| {
        b.bytes
            .cmp(&a.bytes)
            .then(b.count.cmp(&a.count))
            .then(a.site.cmp(&b.site))
    });
    totals
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::HeapOp;

    const MS: u64 = 1_000_000;

    #[test]
    fn sums_per_site_filters_young_blocks_and_sorts() {
        // Epoch at 5 ms; times below are ns.
        let mut t = HeapTable::with_epoch(5 * MS);
        let alloc = |addr, size| HeapOp::Alloc {
            addr,
            size,
            mapped: false,
        };
        t.apply(1, alloc(0x10, 100), 1, 6 * MS);
        t.apply(1, alloc(0x20, 100), 1, 7 * MS);
        t.apply(1, alloc(0x30, 500), 2, 8 * MS);
        t.apply(1, alloc(0x40, 7), 3, 14 * MS + MS / 2);
        let map = HeapOp::Alloc {
            addr: 0x10000,
            size: 4096,
            mapped: true,
        };
        t.apply(1, map, 4, 6 * MS);
        // At 15 ms, blocks at least 1 ms old.
        let totals = outstanding_by_site(&t, 15 * MS, MS);
        let site = |site, bytes, count, oldest_age_ms| SiteTotal {
            site,
            bytes,
            count,
            oldest_age_ms,
        };
        assert_eq!(
            totals,
            [site(4, 4096, 1, 9), site(2, 500, 1, 7), site(1, 200, 2, 9)]
        );
        assert_eq!(outstanding_by_site(&t, 15 * MS, 0).len(), 4);
    }

    #[test]
    fn times_before_the_epoch_count_as_the_epoch() {
        let mut t = HeapTable::with_epoch(10 * MS);
        let alloc = HeapOp::Alloc {
            addr: 0x10,
            size: 1,
            mapped: false,
        };
        t.apply(1, alloc, 1, 3 * MS);
        assert_eq!(outstanding_by_site(&t, 12 * MS, 0)[0].oldest_age_ms, 2);
    }
}
