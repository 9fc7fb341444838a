//! Aggregate: outstanding blocks summed per call site.
use std::collections::HashMap;

use crate::{heap::HeapTable, sites::SiteId};

/// What one call site still holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SiteTotal {
    pub site: SiteId,
    pub bytes: u64,
    pub count: u64,
    /// Allocation time of its oldest outstanding block (CLOCK_MONOTONIC ns).
    pub oldest_ns: u64,
}

/// Sums the blocks that are at least `min_age_ns` old at `now_ns`, per
/// site, largest first (ties broken by count, then site id, so the order is
/// stable from one report to the next).
pub fn outstanding_by_site(table: &HeapTable, now_ns: u64, min_age_ns: u64) -> Vec<SiteTotal> {
    let mut by_site: HashMap<SiteId, SiteTotal> = HashMap::new();
    for (_pid, block, counts) in table.outstanding() {
        if now_ns.saturating_sub(block.timestamp_ns) < min_age_ns {
            continue;
        }
        let total = by_site.entry(block.site).or_insert(SiteTotal {
            site: block.site,
            bytes: 0,
            count: 0,
            oldest_ns: u64::MAX,
        });
        total.bytes += block.size;
        total.count += u64::from(counts);
        total.oldest_ns = total.oldest_ns.min(block.timestamp_ns);
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

    #[test]
    fn sums_per_site_filters_young_blocks_and_sorts() {
        let mut t = HeapTable::default();
        let alloc = |addr, size| HeapOp::Alloc {
            addr,
            size,
            mapped: false,
        };
        t.apply(1, alloc(0x10, 100), 1, 1_000);
        t.apply(1, alloc(0x20, 100), 1, 2_000);
        t.apply(1, alloc(0x30, 500), 2, 3_000);
        t.apply(1, alloc(0x40, 7), 3, 9_500);
        t.apply(
            1,
            HeapOp::Alloc {
                addr: 0x10000,
                size: 4096,
                mapped: true,
            },
            4,
            1_000,
        );
        let totals = outstanding_by_site(&t, 10_000, 1_000);
        assert_eq!(
            totals,
            [
                SiteTotal {
                    site: 4,
                    bytes: 4096,
                    count: 1,
                    oldest_ns: 1_000
                },
                SiteTotal {
                    site: 2,
                    bytes: 500,
                    count: 1,
                    oldest_ns: 3_000
                },
                SiteTotal {
                    site: 1,
                    bytes: 200,
                    count: 2,
                    oldest_ns: 1_000
                },
            ]
        );
        assert_eq!(outstanding_by_site(&t, 10_000, 0).len(), 4);
    }
}
