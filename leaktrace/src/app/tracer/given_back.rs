//! Growth mode's releases: pages a process gave back (munmap, madvise,
//! brk, the old range of an mremap) are found absent from its page map
//! before each report and at every growth sample, and leave the sites that
//! grew them (see `target::page_map` for why the syscalls are not watched).
//!
//! A page counts from its fault until the look after it is given back: a
//! site that maps, writes and unmaps over and over holds, between two
//! looks, what it touched since the last. The fault's record can also come
//! before the kernel has finished mapping its page: a look at that moment
//! (at most one page per CPU) drops it, and /proc's RSS then shows a page
//! the sites do not.
use super::{Tracer, monotonic_ns};
use crate::target::page_map::PageMap;

impl Tracer {
    /// Checks the settled faults for huge pages, then takes the pages each
    /// live traced process gave back off its sites (except in regions whose
    /// faults have not settled: see `huge_pages`).
    pub(super) fn find_given_back(&mut self) {
        if !self.options.growth() {
            return;
        }
        self.huge_pages
            .check(&mut self.pipeline.table, monotonic_ns());
        let live: Vec<u32> = self
            .processes
            .iter()
            .filter(|(_, process)| !process.exited)
            .map(|(&pid, _)| pid)
            .collect();
        let table = &mut self.pipeline.table;
        for pid in live {
            let ranges = table.resident_ranges(pid);
            if ranges.is_empty() {
                continue;
            }
            // Gone: its exit drops its table.
            let Some(map) = PageMap::open(pid) else {
                continue;
            };
            let settling: Vec<(u64, u64)> = self.huge_pages.settling(pid).collect();
            let mut absent = Vec::new();
            for (start, len) in ranges {
                match map.absent(start, len) {
                    Ok(runs) => absent.extend(runs),
                    // The process exited or exec'd under us.
                    Err(_) => break,
                }
            }
            table.give_back(pid, &outside(&absent, &settling));
        }
    }
}

/// The parts of `runs` outside every range of `skip` (both sorted by
/// address, neither overlapping itself).
fn outside(runs: &[(u64, u64)], skip: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut kept = Vec::new();
    for &(start, len) in runs {
        let mut at = start;
        let end = start + len;
        for &(skip_start, skip_len) in skip {
            let skip_end = skip_start + skip_len;
            if skip_end <= at || skip_start >= end {
                continue;
            }
            if skip_start > at {
                kept.push((at, skip_start - at));
            }
            at = at.max(skip_end);
        }
        if at < end {
            kept.push((at, end - at));
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    #[test]
    fn settling_regions_are_cut_out_of_what_was_given_back() {
        let runs = [(0x1000, 0x5000), (0x9000, 0x1000), (0x20000, 0x3000)];
        let skip = [(0x2000, 0x1000), (0x4000, 0x6000)];
        assert_eq!(
            super::outside(&runs, &skip),
            [(0x1000, 0x1000), (0x3000, 0x1000), (0x20000, 0x3000)]
        );
        assert_eq!(super::outside(&runs, &[]), runs);
    }
}
