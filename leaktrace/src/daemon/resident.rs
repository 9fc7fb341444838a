//! Growth mode's pages in the heap table: runs of resident pages per site.
//!
//! A page fault makes one page resident; a program that fills a buffer
//! faults its pages in order, from one call site. Kept as one region per
//! page, a GiB of growth would be 262,144 entries; merged into runs (a page
//! that touches the run before or after it, from the same site), it is a
//! handful. munmap and madvise cut runs as they cut mapped regions (the
//! table's `unmap`), and mremap moves the pages of a range with their sites.
use super::heap::{Block, ProcessHeap, Region};

/// The page size growth mode counts in.
pub const PAGE_SIZE: u64 = 4096;

impl ProcessHeap {
    /// Adds resident pages `[addr, addr + block.size)`, merged with the run
    /// that ends at `addr` and the one that starts where they end, when
    /// those come from the same site. The run keeps its oldest time.
    pub(super) fn add_resident(&mut self, addr: u64, block: Block) {
        let mut start = addr;
        let mut block = block;
        if let Some((&before, region)) = self.regions.range(..addr).next_back()
            && region.resident
            && region.block.site == block.site
            && before + region.block.size == addr
        {
            start = before;
            block.size += region.block.size;
            block.time_ms = block.time_ms.min(region.block.time_ms);
        }
        let end = addr + block.size - (addr - start);
        if let Some(after) = self.regions.get(&end).copied()
            && after.resident
            && after.block.site == block.site
        {
            self.regions.remove(&end);
            block.size += after.block.size;
            block.time_ms = block.time_ms.min(after.block.time_ms);
        }
        self.regions.insert(
            start,
            Region {
                block,
                origin: start,
                resident: true,
            },
        );
    }

    /// Whether any resident page lies in `[addr, addr + len)`.
    pub(super) fn has_resident(&self, addr: u64, len: u64) -> bool {
        let end = addr.saturating_add(len);
        self.regions
            .range(..end)
            .rev()
            .take_while(|(start, region)| **start + region.block.size > addr)
            .any(|(_, region)| region.resident)
    }

    /// The resident page at `page` turned out to be part of a transparent
    /// huge page of `huge` bytes: the kernel made the whole aligned huge
    /// page resident on the one fault recorded. Its other base pages go to
    /// the same site, except those recorded already. Returns the bytes
    /// added (0 when `page` holds no resident run).
    pub(super) fn fill_huge_page(&mut self, page: u64, huge: u64) -> u64 {
        let Some((_, run)) = self
            .regions
            .range(..=page)
            .next_back()
            .filter(|(start, run)| run.resident && page < **start + run.block.size)
        else {
            return 0;
        };
        let block = run.block;
        let base = page & !(huge - 1);
        let end = base.saturating_add(huge);
        // The gaps between what is recorded in [base, end).
        let mut gaps = Vec::new();
        let mut at = base;
        for (&start, region) in self
            .regions
            .range(..end)
            .skip_while(|(start, region)| **start + region.block.size <= base)
        {
            if start > at {
                gaps.push((at, start - at));
            }
            at = at.max(start + region.block.size);
        }
        if at < end {
            gaps.push((at, end - at));
        }
        let mut added = 0;
        for (start, size) in gaps {
            self.add_resident(start, Block { size, ..block });
            added += size;
        }
        added
    }

    /// mremap moved `[old, old + old_len)` to `new` (now `new_len` long):
    /// the pages that moved keep their sites at their new addresses; pages
    /// past `new_len` were given back; growth past `old_len` is not
    /// resident until it is touched.
    pub(super) fn move_resident(&mut self, old: u64, old_len: u64, new: u64, new_len: u64) {
        let kept = old_len.min(new_len);
        let end = old.saturating_add(kept);
        let moved: Vec<(u64, Region)> = self
            .regions
            .range(..end)
            .rev()
            .take_while(|(start, region)| **start + region.block.size > old)
            .map(|(&start, region)| {
                let from = start.max(old);
                let to = (start + region.block.size).min(end);
                (
                    from,
                    Region {
                        block: Block {
                            size: to - from,
                            ..region.block
                        },
                        ..*region
                    },
                )
            })
            .collect();
        self.unmap(old, old_len);
        self.unmap(new, new_len);
        for (from, region) in moved.into_iter().rev() {
            let at = from - old + new;
            if region.resident {
                self.add_resident(at, region.block);
            } else {
                self.regions.insert(
                    at,
                    Region {
                        origin: at,
                        ..region
                    },
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::{contracts::HeapOp, heap::HeapTable};

    fn fault(table: &mut HeapTable, addr: u64, site: u32) {
        table.apply(
            1,
            HeapOp::Resident {
                addr,
                size: PAGE_SIZE,
            },
            site,
            0,
        );
    }

    #[test]
    fn a_huge_page_fills_with_its_faults_site_around_what_is_recorded() {
        const HUGE: u64 = 2 << 20;
        let base = 0x4000_0000;
        let mut table = HeapTable::default();
        // Another site's page recorded inside the huge page already.
        fault(&mut table, base + 10 * PAGE_SIZE, 2);
        fault(&mut table, base + 3 * PAGE_SIZE, 1);
        assert_eq!(
            table.fill_huge_page(1, base + 3 * PAGE_SIZE, HUGE),
            HUGE - 2 * PAGE_SIZE
        );
        assert_eq!(
            by_site(&table),
            [(1, HUGE - PAGE_SIZE, 511), (2, PAGE_SIZE, 1)]
        );
        // Once filled, nothing is left to add; nor for a page not recorded,
        // nor another process.
        assert_eq!(table.fill_huge_page(1, base + 3 * PAGE_SIZE, HUGE), 0);
        assert_eq!(table.fill_huge_page(1, base + HUGE, HUGE), 0);
        assert_eq!(table.fill_huge_page(7, base, HUGE), 0);
        // The pages given back later are cut as any others.
        table.apply(
            1,
            HeapOp::Unmap {
                addr: base,
                len: HUGE / 2,
            },
            0,
            0,
        );
        assert_eq!(
            by_site(&table),
            [(1, HUGE / 2, 256)],
            "the other site's page was in the half given back"
        );
    }

    /// (bytes, pages) per site.
    fn by_site(table: &HeapTable) -> Vec<(u32, u64, u64)> {
        let mut sites = std::collections::BTreeMap::<u32, (u64, u64)>::default();
        for (_, block, count, _) in table.outstanding() {
            let entry = sites.entry(block.site).or_default();
            entry.0 += block.size;
            entry.1 += count;
        }
        sites.into_iter().map(|(s, (b, c))| (s, b, c)).collect()
    }

    #[test]
    fn pages_of_one_site_in_order_are_one_run_and_count_as_pages() {
        let mut table = HeapTable::default();
        for page in 0..100 {
            fault(&mut table, 0x10_0000 + page * PAGE_SIZE, 7);
        }
        // Another site's pages in the middle of nowhere, and one between
        // two runs of site 7 that then join.
        fault(&mut table, 0x90_0000, 8);
        fault(&mut table, 0x20_0000, 7);
        fault(&mut table, 0x20_2000, 7);
        fault(&mut table, 0x20_1000, 7);
        assert_eq!(table.len(), 3, "three runs");
        assert_eq!(
            by_site(&table),
            [(7, 103 * PAGE_SIZE, 103), (8, PAGE_SIZE, 1)]
        );
    }

    #[test]
    fn munmap_and_madvise_cut_runs_and_count_what_stays() {
        let mut table = HeapTable::default();
        for page in 0..10 {
            fault(&mut table, 0x10_0000 + page * PAGE_SIZE, 7);
        }
        // madvise(DONTNEED) of pages 3..5, munmap of the last page.
        table.apply(
            1,
            HeapOp::Unmap {
                addr: 0x10_3000,
                len: 2 * PAGE_SIZE,
            },
            0,
            0,
        );
        table.apply(
            1,
            HeapOp::Unmap {
                addr: 0x10_9000,
                len: PAGE_SIZE,
            },
            0,
            0,
        );
        assert_eq!(by_site(&table), [(7, 7 * PAGE_SIZE, 7)]);
        // Touched again: the page counts again.
        fault(&mut table, 0x10_3000, 7);
        assert_eq!(by_site(&table), [(7, 8 * PAGE_SIZE, 8)]);
    }

    #[test]
    fn mremap_moves_pages_with_their_sites() {
        let mut table = HeapTable::default();
        for page in 0..4 {
            fault(&mut table, 0x10_0000 + page * PAGE_SIZE, 7);
        }
        for page in 4..6 {
            fault(&mut table, 0x10_0000 + page * PAGE_SIZE, 8);
        }
        // The six pages move to 0x50_0000, growing to eight (the two new
        // ones are not resident), then shrink to three at 0x70_0000.
        table.apply(
            1,
            HeapOp::Remap {
                old: 0x10_0000,
                old_len: 6 * PAGE_SIZE,
                new: 0x50_0000,
                new_len: 8 * PAGE_SIZE,
            },
            0,
            0,
        );
        assert_eq!(
            by_site(&table),
            [(7, 4 * PAGE_SIZE, 4), (8, 2 * PAGE_SIZE, 2)]
        );
        assert!(!table.outstanding().any(|(_, b, _, _)| b.size == 0));
        table.apply(
            1,
            HeapOp::Remap {
                old: 0x50_0000,
                old_len: 8 * PAGE_SIZE,
                new: 0x70_0000,
                new_len: 3 * PAGE_SIZE,
            },
            0,
            0,
        );
        assert_eq!(by_site(&table), [(7, 3 * PAGE_SIZE, 3)]);
    }
}
