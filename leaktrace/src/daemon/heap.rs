//! Heap table: the allocations that are still outstanding.
//!
//! One table per process, keyed by address: a block is outstanding from the
//! call that returned it until the call that releases that address. Mapped
//! regions are kept apart, ordered by start, because munmap may release any
//! page range, including the middle of a region (which splits it).
//!
//! Frees of addresses the table never saw (blocks allocated before attach)
//! and allocations at an address still recorded live (a lost free) are
//! counted, never silently absorbed.
//!
//! Memory: a block costs its 8-byte key and this 16-byte `Block` in the
//! hash table (measured by `cargo xtask bench`): times are kept as u32
//! milliseconds since the table's epoch (49 days of tracing; later times
//! saturate) rather than u64 nanoseconds.
use std::collections::BTreeMap;

// Fx hashing: keys are addresses and pids, not attacker-chosen strings, and
// SipHash was a third of the time per record (cargo xtask bench).
use rustc_hash::FxHashMap as HashMap;

use crate::daemon::{contracts::HeapOp, sites::SiteId};

/// One outstanding block or region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    pub size: u64,
    pub site: SiteId,
    /// When it was allocated, in ms since the table's epoch.
    pub time_ms: u32,
}

/// Counters of what the table saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    pub allocations: u64,
    pub releases: u64,
    pub failed_calls: u64,
    /// Releases of addresses not in the table (allocated before tracing began).
    pub unmatched_releases: u64,
    /// Allocations returned at an address the table still held: the free of
    /// the old block was lost or happened before tracing began.
    pub replaced_blocks: u64,
    /// Allocations not recorded because the table was at its cap.
    pub dropped_at_cap: u64,
}

/// A piece of a mapped region: what munmap left of one mmap call, or
/// (growth mode) a run of resident pages grown at one site.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Region {
    pub(super) block: Block,
    /// Start address the mmap call returned: pieces of one call count as
    /// one allocation.
    pub(super) origin: u64,
    /// Resident pages (growth mode): each page counts as one.
    pub(super) resident: bool,
}

/// What one process holds.
#[derive(Default)]
pub(super) struct ProcessHeap {
    blocks: HashMap<u64, Block>,
    pub(super) regions: BTreeMap<u64, Region>,
}

impl ProcessHeap {
    /// Removes [addr, addr+len) from the mapped regions, splitting regions
    /// that straddle its ends. Returns the bytes removed.
    pub(super) fn unmap(&mut self, addr: u64, len: u64) -> u64 {
        let end = addr.saturating_add(len);
        let overlapping: Vec<(u64, Region)> = self
            .regions
            .range(..end)
            .rev()
            .take_while(|(start, region)| *start + region.block.size > addr)
            .map(|(start, region)| (*start, *region))
            .collect();
        let mut removed = 0;
        for (start, region) in overlapping {
            let region_end = start + region.block.size;
            self.regions.remove(&start);
            let piece = |size| Region {
                block: Block {
                    size,
                    ..region.block
                },
                ..region
            };
            if start < addr {
                self.regions.insert(start, piece(addr - start));
            }
            if region_end > end {
                self.regions.insert(end, piece(region_end - end));
            }
            removed += region_end.min(end) - start.max(addr);
        }
        removed
    }
}

/// Outstanding blocks and regions of every traced process.
#[derive(Default)]
pub struct HeapTable {
    processes: HashMap<u32, ProcessHeap>,
    /// `CLOCK_MONOTONIC` ns that `Block::time_ms` counts from.
    epoch_ns: u64,
    /// Most blocks and regions the table holds; 0: no limit. Keeps the
    /// daemon's memory bounded on a process that allocates without end.
    pub cap: usize,
    /// Blocks and regions held, over all processes: kept as they change,
    /// so the cap check per record does not sum over every process.
    held: usize,
    pub stats: TableStats,
}

impl HeapTable {
    /// A table whose block times count from `epoch_ns` (`CLOCK_MONOTONIC`).
    pub fn with_epoch(epoch_ns: u64) -> HeapTable {
        HeapTable {
            epoch_ns,
            ..HeapTable::default()
        }
    }

    /// The same table holding at most `cap` blocks (0: no limit).
    pub fn with_cap(self, cap: usize) -> HeapTable {
        HeapTable { cap, ..self }
    }

    /// `timestamp_ns` as whole ms since the epoch, rounded down (0 before
    /// it, saturating after 49 days). Used for "now".
    pub fn ms_since_epoch(&self, timestamp_ns: u64) -> u32 {
        let ms = timestamp_ns.saturating_sub(self.epoch_ns) / 1_000_000;
        u32::try_from(ms).unwrap_or(u32::MAX)
    }

    /// A block's time, rounded up: with "now" rounded down, an age is never
    /// overestimated, so `--min-age` never counts a block too young.
    fn block_time_ms(&self, timestamp_ns: u64) -> u32 {
        let ms = timestamp_ns
            .saturating_sub(self.epoch_ns)
            .div_ceil(1_000_000);
        u32::try_from(ms).unwrap_or(u32::MAX)
    }

    /// Applies what one call of process `pid` did. `site` is where the
    /// call was made; `timestamp_ns` when.
    pub fn apply(&mut self, pid: u32, op: HeapOp, site: SiteId, timestamp_ns: u64) {
        let time_ms = self.block_time_ms(timestamp_ns);
        let full = self.cap != 0 && self.held >= self.cap;
        let stats = &mut self.stats;
        let heap = self.processes.entry(pid).or_default();
        let held_before = heap.blocks.len() + heap.regions.len();
        // `replacing`: the call released a block it held, so the table does
        // not grow (a realloc), and the cap does not apply.
        let mut insert_block = |heap: &mut ProcessHeap, addr: u64, size: u64, replacing: bool| {
            if full && !replacing && !heap.blocks.contains_key(&addr) {
                stats.dropped_at_cap += 1;
                return;
            }
            let block = Block {
                size,
                site,
                time_ms,
            };
            if heap.blocks.insert(addr, block).is_some() {
                stats.replaced_blocks += 1;
            }
        };
        match op {
            HeapOp::Alloc { addr, size, mapped } => {
                stats.allocations += 1;
                if mapped {
                    // A fresh mapping replaces whatever it overlaps
                    // (MAP_FIXED), recorded or not.
                    heap.unmap(addr, size);
                }
                if mapped && full {
                    stats.dropped_at_cap += 1;
                } else if mapped {
                    let block = Block {
                        size,
                        site,
                        time_ms,
                    };
                    heap.regions.insert(
                        addr,
                        Region {
                            block,
                            origin: addr,
                            resident: false,
                        },
                    );
                } else {
                    insert_block(heap, addr, size, false);
                }
            }
            HeapOp::Resident { addr, size } => {
                stats.allocations += 1;
                // A page counted already (its release was missed) is
                // counted again where it grew now.
                if heap.unmap(addr, size) > 0 {
                    stats.replaced_blocks += 1;
                }
                if full {
                    stats.dropped_at_cap += 1;
                } else {
                    heap.add_resident(
                        addr,
                        Block {
                            size,
                            site,
                            time_ms,
                        },
                    );
                }
            }
            HeapOp::Free { addr } => {
                stats.releases += 1;
                if heap.blocks.remove(&addr).is_none() {
                    stats.unmatched_releases += 1;
                }
            }
            HeapOp::Realloc { old, new, size } => {
                stats.allocations += 1;
                stats.releases += 1;
                let replacing = heap.blocks.remove(&old).is_some();
                if !replacing {
                    stats.unmatched_releases += 1;
                }
                insert_block(heap, new, size, replacing);
            }
            HeapOp::Resize { addr, size } => {
                if let Some(block) = heap.blocks.get_mut(&addr) {
                    block.size = size;
                }
            }
            HeapOp::Unmap { addr, len } => {
                stats.releases += 1;
                if heap.unmap(addr, len) == 0 {
                    stats.unmatched_releases += 1;
                }
            }
            HeapOp::Remap {
                old,
                old_len,
                new,
                new_len,
            } => {
                if heap.has_resident(old, old_len) {
                    heap.move_resident(old, old_len, new, new_len);
                } else {
                    // The memory keeps the site that first mapped it; an
                    // untracked range (mapped before attach) stays untracked.
                    let origin = heap.regions.get(&old).copied();
                    heap.unmap(old, old_len);
                    if let Some(origin) = origin {
                        heap.unmap(new, new_len);
                        let block = Block {
                            size: new_len,
                            ..origin.block
                        };
                        heap.regions.insert(
                            new,
                            Region {
                                block,
                                origin: new,
                                resident: false,
                            },
                        );
                    }
                }
            }
            HeapOp::Failed => stats.failed_calls += 1,
            HeapOp::Ignored => {}
        }
        self.held = self.held - held_before + heap.blocks.len() + heap.regions.len();
    }

    /// Growth mode: the resident page at `page` of `pid` is part of a
    /// transparent huge page of `huge` bytes (a power of two): see
    /// `ProcessHeap::fill_huge_page`. Returns the bytes added.
    pub fn fill_huge_page(&mut self, pid: u32, page: u64, huge: u64) -> u64 {
        let Some(heap) = self.processes.get_mut(&pid) else {
            return 0;
        };
        let before = heap.regions.len();
        let added = heap.fill_huge_page(page, huge);
        self.held = self.held - before + heap.regions.len();
        added
    }

    /// Growth mode: the ranges of `pid`'s resident pages, adjacent runs
    /// joined (whatever their sites), for a look at which are still there.
    pub fn resident_ranges(&self, pid: u32) -> Vec<(u64, u64)> {
        let Some(heap) = self.processes.get(&pid) else {
            return Vec::new();
        };
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for (&start, region) in heap.regions.iter().filter(|(_, r)| r.resident) {
            match ranges.last_mut() {
                Some((at, len)) if *at + *len == start => *len += region.block.size,
                _ => ranges.push((start, region.block.size)),
            }
        }
        ranges
    }

    /// Growth mode: `pid` gave back the pages of `ranges` (found absent from
    /// its page map): they leave the sites that grew them. Returns the
    /// bytes taken off.
    pub fn give_back(&mut self, pid: u32, ranges: &[(u64, u64)]) -> u64 {
        let Some(heap) = self.processes.get_mut(&pid) else {
            return 0;
        };
        let before = heap.regions.len();
        let mut bytes = 0;
        for &(addr, len) in ranges {
            let taken = heap.unmap(addr, len);
            if taken > 0 {
                self.stats.releases += 1;
                bytes += taken;
            }
        }
        self.held = self.held - before + heap.regions.len();
        bytes
    }

    /// Forgets everything about `pid` (it exited or exec'd). Returns the
    /// addresses of the heap blocks it held, for the kernel's set of
    /// sampled blocks.
    pub fn forget_process(&mut self, pid: u32) -> Vec<u64> {
        let Some(heap) = self.processes.remove(&pid) else {
            return Vec::new();
        };
        self.held -= heap.blocks.len() + heap.regions.len();
        heap.blocks.into_keys().collect()
    }

    /// Every outstanding heap block and mapped piece, with its pid, how many
    /// allocations it counts for (a block 1; a piece of a region that
    /// munmap split 1 for the first piece met, 0 for the others; a run of
    /// resident pages its pages), and whether it is a mapped region
    /// (recorded exactly even when sampling).
    pub fn outstanding(&self) -> impl Iterator<Item = (u32, &Block, u64, bool)> {
        self.processes.iter().flat_map(|(&pid, heap)| {
            let mut origins_seen = std::collections::HashSet::new();
            heap.blocks
                .values()
                .map(move |block| (pid, block, 1, false))
                .chain(heap.regions.values().map(move |region| {
                    let count = if region.resident {
                        region.block.size.div_ceil(super::resident::PAGE_SIZE)
                    } else {
                        u64::from(origins_seen.insert(region.origin))
                    };
                    (pid, &region.block, count, true)
                }))
        })
    }

    /// `pid`'s outstanding heap blocks (not mapped regions), by address.
    pub fn blocks_of(&self, pid: u32) -> impl Iterator<Item = (u64, &Block)> {
        self.processes
            .get(&pid)
            .into_iter()
            .flat_map(|heap| heap.blocks.iter().map(|(&addr, block)| (addr, block)))
    }

    /// Whether `pid` holds a heap block at `addr`.
    pub fn holds_block(&self, pid: u32, addr: u64) -> bool {
        self.processes
            .get(&pid)
            .is_some_and(|heap| heap.blocks.contains_key(&addr))
    }

    /// Blocks and regions held.
    pub fn len(&self) -> usize {
        self.held
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc(addr: u64, size: u64) -> HeapOp {
        HeapOp::Alloc {
            addr,
            size,
            mapped: false,
        }
    }

    fn map(addr: u64, size: u64) -> HeapOp {
        HeapOp::Alloc {
            addr,
            size,
            mapped: true,
        }
    }

    fn sizes(table: &HeapTable) -> Vec<(u32, u64)> {
        let mut v: Vec<_> = table
            .outstanding()
            .map(|(_, b, _, _)| (b.site, b.size))
            .collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn alloc_free_and_unmatched_free() {
        let mut t = HeapTable::default();
        t.apply(1, alloc(0x10, 100), 7, 0);
        t.apply(1, alloc(0x20, 50), 8, 0);
        t.apply(1, HeapOp::Free { addr: 0x10 }, 0, 0);
        t.apply(1, HeapOp::Free { addr: 0x999 }, 0, 0);
        assert_eq!(sizes(&t), [(8, 50)]);
        assert_eq!(t.stats.unmatched_releases, 1);
        assert_eq!(t.stats.allocations, 2);
        assert_eq!(t.stats.releases, 2);
    }

    #[test]
    fn same_address_in_two_processes_is_two_blocks() {
        let mut t = HeapTable::default();
        t.apply(1, alloc(0x10, 100), 1, 0);
        t.apply(2, alloc(0x10, 200), 2, 0);
        t.apply(1, HeapOp::Free { addr: 0x10 }, 0, 0);
        assert_eq!(sizes(&t), [(2, 200)]);
    }

    #[test]
    fn realloc_moves_the_block_to_the_new_site() {
        let mut t = HeapTable::default();
        t.apply(1, alloc(0x10, 100), 1, 0);
        t.apply(
            1,
            HeapOp::Realloc {
                old: 0x10,
                new: 0x80,
                size: 300,
            },
            2,
            5,
        );
        assert_eq!(sizes(&t), [(2, 300)]);
        t.apply(1, HeapOp::Failed, 3, 6);
        assert_eq!(t.stats.failed_calls, 1);
        assert_eq!(sizes(&t), [(2, 300)]);
    }

    #[test]
    fn lost_free_is_counted_when_the_address_comes_back() {
        let mut t = HeapTable::default();
        t.apply(1, alloc(0x10, 100), 1, 0);
        t.apply(1, alloc(0x10, 40), 2, 0);
        assert_eq!(t.stats.replaced_blocks, 1);
        assert_eq!(sizes(&t), [(2, 40)]);
    }

    #[test]
    fn partial_munmap_splits_regions() {
        let mut t = HeapTable::default();
        t.apply(1, map(0x10000, 16 * 4096), 1, 0);
        // Unmap pages 4..8: leaves [0,4) and [8,16).
        t.apply(
            1,
            HeapOp::Unmap {
                addr: 0x10000 + 4 * 4096,
                len: 4 * 4096,
            },
            0,
            0,
        );
        assert_eq!(sizes(&t), [(1, 4 * 4096), (1, 8 * 4096)]);
        // Two pieces, one allocation.
        assert_eq!(
            t.outstanding().map(|(_, _, count, _)| count).sum::<u64>() as usize,
            1
        );
        // Unmap across both remaining pieces' inner edges.
        t.apply(
            1,
            HeapOp::Unmap {
                addr: 0x10000 + 3 * 4096,
                len: 6 * 4096,
            },
            0,
            0,
        );
        assert_eq!(sizes(&t), [(1, 3 * 4096), (1, 7 * 4096)]);
        // A munmap that hits nothing tracked is unmatched.
        t.apply(
            1,
            HeapOp::Unmap {
                addr: 0x900000,
                len: 4096,
            },
            0,
            0,
        );
        assert_eq!(t.stats.unmatched_releases, 1);
        // Heap blocks are never touched by munmap.
        t.apply(1, alloc(0x10000 + 3 * 4096, 8), 2, 0);
        t.apply(
            1,
            HeapOp::Unmap {
                addr: 0x10000,
                len: 16 * 4096,
            },
            0,
            0,
        );
        assert_eq!(sizes(&t), [(2, 8)]);
    }

    #[test]
    fn mremap_keeps_the_origin_site() {
        let mut t = HeapTable::default();
        t.apply(1, map(0x10000, 4096), 1, 0);
        t.apply(
            1,
            HeapOp::Remap {
                old: 0x10000,
                old_len: 4096,
                new: 0x50000,
                new_len: 3 * 4096,
            },
            9,
            0,
        );
        assert_eq!(sizes(&t), [(1, 3 * 4096)]);
        // Untracked ranges stay untracked.
        t.apply(
            1,
            HeapOp::Remap {
                old: 0x90000,
                old_len: 4096,
                new: 0xa0000,
                new_len: 4096,
            },
            9,
            0,
        );
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn forget_process_drops_only_that_process() {
        let mut t = HeapTable::default();
        t.apply(1, alloc(0x10, 1), 1, 0);
        t.apply(2, map(0x10000, 4096), 2, 0);
        t.apply(2, alloc(0x10, 1), 2, 0);
        t.forget_process(2);
        assert_eq!(sizes(&t), [(1, 1)]);
    }

    #[test]
    fn the_cap_bounds_the_table_and_counts_what_it_drops() {
        let mut t = HeapTable {
            cap: 2,
            ..HeapTable::default()
        };
        t.apply(1, alloc(0x10, 1), 1, 0);
        t.apply(1, alloc(0x20, 1), 1, 0);
        t.apply(1, alloc(0x30, 1), 1, 0);
        t.apply(1, map(0x10000, 4096), 1, 0);
        assert_eq!(t.len(), 2);
        assert_eq!(t.stats.dropped_at_cap, 2);
        // Room again after a free; a realloc in place is not a new block.
        t.apply(1, HeapOp::Free { addr: 0x10 }, 0, 0);
        t.apply(1, alloc(0x30, 1), 1, 0);
        t.apply(
            1,
            HeapOp::Realloc {
                old: 0x30,
                new: 0x30,
                size: 9,
            },
            2,
            0,
        );
        assert_eq!(sizes(&t), [(1, 1), (2, 9)]);
        assert_eq!(t.stats.dropped_at_cap, 2);
    }
}
