//! Growth mode's recent faults: each 2 MiB region of a process that faulted
//! since the last look, with when its fault was noted. They serve two
//! checks made before each report and at every growth sample:
//!
//! - huge pages: a fault the kernel answered with a transparent huge page
//!   made 2 MiB resident, not the 4 KiB recorded. The fault's tracepoint
//!   runs before the kernel chooses the page size, so the region's page is
//!   looked up afterwards (see `target::huge_pages`), and a page found in a
//!   huge page gets the rest of it, at the same site
//!   (`HeapTable::fill_huge_page`);
//! - settling: the record of a fault can reach the daemon before the
//!   kernel has finished mapping its page (zeroing a huge page takes a
//!   while). A region that faulted less than `SETTLING` ago is neither
//!   checked for a huge page nor searched for pages given back; it waits
//!   for the next look.
use std::collections::BTreeMap;

use crate::{
    daemon::heap::HeapTable,
    target::huge_pages::{self, HUGE_PAGE},
};

/// Most regions noted between two looks (each is 2 MiB grown: 128 GiB).
const MOST_PENDING: usize = 65_536;
/// How long after its fault was noted a page is surely mapped.
const SETTLING_NS: u64 = 200_000_000;

/// The faults noted since the last look, and what the looks found.
#[derive(Default)]
pub(super) struct HugePageCheck {
    /// Whether the kernel makes transparent huge pages at all.
    enabled: bool,
    /// A faulting page per (pid, 2 MiB region), and when the region's last
    /// fault was noted (`CLOCK_MONOTONIC` ns).
    pending: BTreeMap<(u32, u64), (u64, u64)>,
    /// Faults not noted because `pending` was full.
    pub skipped: u64,
    /// Bytes added for huge pages, in total.
    pub added_bytes: u64,
}

impl HugePageCheck {
    /// A check that looks for huge pages when the kernel makes them.
    pub(super) fn new(growth: bool) -> HugePageCheck {
        HugePageCheck {
            enabled: growth && huge_pages::possible(),
            ..HugePageCheck::default()
        }
    }

    /// Notes a fault kept at `addr` in process `pid`, at `now_ns`.
    pub(super) fn note_fault(&mut self, pid: u32, addr: u64, now_ns: u64) {
        let region = (pid, addr & !(HUGE_PAGE - 1));
        if self.pending.len() >= MOST_PENDING && !self.pending.contains_key(&region) {
            if self.skipped == 0 {
                eprintln!(
                    "leaktrace: warning: more than {MOST_PENDING} regions faulted between two looks: some are not checked for huge pages (their growth may be undercounted; counted as huge_page_checks_skipped)"
                );
            }
            self.skipped += 1;
            return;
        }
        self.pending
            .entry(region)
            .and_modify(|(_, noted)| *noted = now_ns)
            .or_insert((addr & !4095, now_ns));
    }

    /// Checks the regions whose faults have settled by `now_ns`, filling
    /// the huge pages found in `table`; the others wait for the next look.
    /// A page no longer present (given back, or its process gone) is left
    /// as the table has it.
    pub(super) fn check(&mut self, table: &mut HeapTable, now_ns: u64) {
        let settled: Vec<((u32, u64), u64)> = self
            .pending
            .iter()
            .filter(|(_, (_, noted))| now_ns.saturating_sub(*noted) >= SETTLING_NS)
            .map(|(&region, &(page, _))| (region, page))
            .collect();
        for (region, page) in settled {
            self.pending.remove(&region);
            if self.enabled && huge_pages::in_huge_page(region.0, page) == Some(true) {
                self.added_bytes += table.fill_huge_page(region.0, page, HUGE_PAGE);
            }
        }
    }

    /// The regions of `pid` whose faults have not settled yet (all of them
    /// were left pending by [`HugePageCheck::check`]).
    pub(super) fn settling(&self, pid: u32) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.pending
            .range((pid, 0)..=(pid, u64::MAX))
            .map(|(&(_, region), _)| (region, HUGE_PAGE))
    }
}
