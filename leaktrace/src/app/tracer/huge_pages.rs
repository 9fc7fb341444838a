//! Growth mode's huge-page check: a fault that the kernel answered with a
//! transparent huge page made 2 MiB resident, not the 4 KiB recorded.
//!
//! The fault's tracepoint runs before the kernel chooses the page size, so
//! the faults kept are noted (one per process and 2 MiB region: a region
//! of base pages faults up to 512 times, a huge page once) and checked
//! before each report, when the kernel has long finished: a page found in a
//! huge page gets the rest of it, at the same site (see
//! `HeapTable::fill_huge_page`).
use std::collections::BTreeMap;

use crate::{
    daemon::heap::HeapTable,
    target::huge_pages::{self, HUGE_PAGE},
};

/// Most regions noted between two checks (each is 2 MiB grown: 128 GiB).
const MOST_PENDING: usize = 65_536;

/// The faults waiting for the check, and what the checks found.
#[derive(Default)]
pub(super) struct HugePageCheck {
    /// Whether the kernel makes transparent huge pages at all.
    enabled: bool,
    /// A faulting page per (pid, 2 MiB region), since the last check.
    pending: BTreeMap<(u32, u64), u64>,
    /// Faults not noted because `pending` was full.
    pub skipped: u64,
    /// Bytes added for huge pages, in total.
    pub added_bytes: u64,
}

impl HugePageCheck {
    /// A check that runs when the kernel makes huge pages.
    pub(super) fn new(growth: bool) -> HugePageCheck {
        HugePageCheck {
            enabled: growth && huge_pages::possible(),
            ..HugePageCheck::default()
        }
    }

    /// Notes a fault kept at `addr` in process `pid`.
    pub(super) fn note_fault(&mut self, pid: u32, addr: u64) {
        if !self.enabled {
            return;
        }
        let region = (pid, addr & !(HUGE_PAGE - 1));
        if self.pending.len() >= MOST_PENDING && !self.pending.contains_key(&region) {
            if self.skipped == 0 {
                eprintln!(
                    "leaktrace: warning: more than {MOST_PENDING} regions faulted between two reports: some are not checked for huge pages (their growth may be undercounted; counted as huge_page_checks_skipped)"
                );
            }
            self.skipped += 1;
            return;
        }
        self.pending.entry(region).or_insert(addr & !4095);
    }

    /// Checks the faults noted, filling the huge pages found in `table`.
    /// A page no longer present (given back, or its process gone) is left
    /// as the table has it.
    pub(super) fn check(&mut self, table: &mut HeapTable) {
        for ((pid, _), page) in std::mem::take(&mut self.pending) {
            if huge_pages::in_huge_page(pid, page) == Some(true) {
                self.added_bytes += table.fill_huge_page(pid, page, HUGE_PAGE);
            }
        }
    }
}
