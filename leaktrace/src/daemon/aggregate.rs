//! Aggregate: outstanding blocks summed per call site.
use std::collections::HashMap;

use crate::daemon::{heap::HeapTable, sites::SiteId};

/// What one call site still holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SiteTotal {
    pub site: SiteId,
    pub bytes: u64,
    pub count: u64,
    /// Age of its oldest outstanding block.
    pub oldest_age_ms: u64,
}

/// How many blocks of `size` bytes one sampled block stands for, when one
/// byte in `sample_mean` starts a sample: it was sampled with probability
/// 1 - exp(-size / mean), so weighting it by the inverse makes the sums
/// unbiased (Horvitz-Thompson). 1 when not sampling.
pub fn sample_weight(size: u64, sample_mean: u64) -> f64 {
    if sample_mean == 0 || size == 0 {
        return 1.0;
    }
    1.0 / -(-(size as f64) / sample_mean as f64).exp_m1()
}

/// Sums the blocks that are at least `min_age_ns` old at `now_ns`
/// (`CLOCK_MONOTONIC`), per site, largest first (ties broken by count, then
/// site id, so the order is stable from one report to the next). With
/// `sample_mean` > 0, heap blocks are sampled and their bytes and counts
/// are estimates (mapped regions are always recorded exactly). Growth mode
/// keeps one page in `page_sample` (by address): its runs of resident pages
/// (the only mapped pieces it has) count that many times.
pub fn outstanding_by_site(
    table: &HeapTable,
    now_ns: u64,
    min_age_ns: u64,
    sample_mean: u64,
    page_sample: u64,
) -> Vec<SiteTotal> {
    let now_ms = u64::from(table.ms_since_epoch(now_ns));
    let min_age_ms = min_age_ns / 1_000_000;
    // (bytes, count, oldest age) per site, estimated.
    let mut by_site: HashMap<SiteId, (f64, f64, u64)> = HashMap::new();
    for (_pid, block, count, mapped) in table.outstanding() {
        let age_ms = now_ms.saturating_sub(u64::from(block.time_ms));
        if age_ms < min_age_ms {
            continue;
        }
        let weight = if mapped {
            page_sample.max(1) as f64
        } else {
            sample_weight(block.size, sample_mean)
        };
        let total = by_site.entry(block.site).or_insert((0.0, 0.0, 0));
        total.0 += block.size as f64 * weight;
        total.1 += count as f64 * weight;
        total.2 = total.2.max(age_ms);
    }
    let mut totals: Vec<SiteTotal> = by_site
        .into_iter()
        .map(|(site, (bytes, count, oldest_age_ms))| SiteTotal {
            site,
            bytes: bytes.round() as u64,
            count: count.round() as u64,
            oldest_age_ms,
        })
        .collect();
    totals.sort_by(|a, b| {
        b.bytes
            .cmp(&a.bytes)
            .then(b.count.cmp(&a.count))
            .then(a.site.cmp(&b.site))
    });
    totals
}

/// The most bytes `releases_lost` lost releases can leave outstanding in
/// the report's figures: the sum of that many of the largest outstanding
/// blocks and pieces, weighted as `outstanding_by_site` weighs them. Which
/// blocks the lost records released is unknown, so this is a bound, not an
/// estimate.
pub fn overstated_bytes_max(
    table: &HeapTable,
    releases_lost: u64,
    sample_mean: u64,
    page_sample: u64,
) -> u64 {
    let keep = usize::try_from(releases_lost).unwrap_or(usize::MAX);
    if keep == 0 {
        return 0;
    }
    // A min-heap of the largest seen so far, at most `keep` of them.
    let mut largest = std::collections::BinaryHeap::new();
    for (_pid, block, _count, mapped) in table.outstanding() {
        let weight = if mapped {
            page_sample.max(1) as f64
        } else {
            sample_weight(block.size, sample_mean)
        };
        let bytes = (block.size as f64 * weight).ceil() as u64;
        largest.push(std::cmp::Reverse(bytes));
        if largest.len() > keep {
            largest.pop();
        }
    }
    largest.into_iter().map(|std::cmp::Reverse(b)| b).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::contracts::HeapOp;

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
        let totals = outstanding_by_site(&t, 15 * MS, MS, 0, 1);
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
        assert_eq!(outstanding_by_site(&t, 15 * MS, 0, 0, 1).len(), 4);
    }

    #[test]
    fn lost_releases_bound_the_overstatement_by_the_largest_blocks() {
        let mut t = HeapTable::with_epoch(0);
        for (addr, size) in [(0x10, 100), (0x20, 700), (0x30, 300), (0x40, 5)] {
            let op = HeapOp::Alloc {
                addr,
                size,
                mapped: false,
            };
            t.apply(1, op, 1, 0);
        }
        assert_eq!(overstated_bytes_max(&t, 0, 0, 1), 0);
        assert_eq!(overstated_bytes_max(&t, 1, 0, 1), 700);
        assert_eq!(overstated_bytes_max(&t, 2, 0, 1), 1000);
        assert_eq!(overstated_bytes_max(&t, 99, 0, 1), 1105);
        // Sampled: each block weighs as in the report.
        let weighted = (700.0 * sample_weight(700, 512)).ceil() as u64;
        assert_eq!(overstated_bytes_max(&t, 1, 512, 1), weighted);
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
        assert_eq!(
            outstanding_by_site(&t, 12 * MS, 0, 0, 1)[0].oldest_age_ms,
            2
        );
    }

    #[test]
    fn sampled_blocks_are_weighted_by_their_inverse_probability() {
        // One sampled 512 KiB block at mean 512 KiB stands for
        // 1 / (1 - 1/e) = 1.582 blocks.
        assert!((sample_weight(512 * 1024, 512 * 1024) - 1.581_976_7).abs() < 1e-6);
        // Huge blocks are sampled for sure; not sampling weighs 1.
        assert!((sample_weight(1 << 40, 512 * 1024) - 1.0).abs() < 1e-9);
        assert!((sample_weight(100, 0) - 1.0).abs() < f64::EPSILON);
        let mut t = HeapTable::with_epoch(0);
        let alloc = |addr, size, mapped| HeapOp::Alloc { addr, size, mapped };
        // 2 sampled 64 KiB blocks: p = 1 - exp(-1/8) = 0.1175.
        t.apply(1, alloc(0x10, 65536, false), 1, 0);
        t.apply(1, alloc(0x20, 65536, false), 1, 0);
        // A mapped region is exact whatever the sampling.
        t.apply(1, alloc(0x10000, 4096, true), 2, 0);
        let totals = outstanding_by_site(&t, 0, 0, 512 * 1024, 1);
        let p = 1.0 - (-0.125f64).exp();
        assert_eq!(totals[0].bytes, (2.0 * 65536.0 / p).round() as u64);
        assert_eq!(totals[0].count, (2.0 / p).round() as u64);
        assert_eq!((totals[1].bytes, totals[1].count), (4096, 1));
    }
}
