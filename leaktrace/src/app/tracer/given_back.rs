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
//!
//! A look reads the page map of every resident range, at a cost that grows
//! with the pages and the ranges: a process with millions of runs would
//! stall the event loop. So the looks made at each growth sample are
//! paced (see [`LOOK_PAGES`]): each reads a budget's worth and the next
//! resumes where it stopped, in (pid, address) order, round and round, so
//! every range is looked at over successive samples. The look before a
//! report (and at `run`'s exit stop) reads everything: a report shows
//! every page given back by then, whatever its cost.
use super::{Tracer, monotonic_ns};
use crate::target::page_map::PageMap;

/// Pages of page map a paced look reads at most, each range read costing
/// [`RANGE_PAGES`] more. Measured here, `/proc/PID/pagemap` reads at 90 to
/// 110 ns a page in large reads: 131,072 pages (512 MiB of memory, 1 MiB of
/// page map) take 12 to 15 ms, under the event loop's 20 ms drain period,
/// so a paced look holds draining up by about one period at most. A
/// process of 10 GiB is looked at whole every 20 samples.
pub(super) const LOOK_PAGES: u64 = 1 << 17;
/// What one read of the page map costs, in pages: about 3 µs a read
/// (measured here, one entry read at a time), some 30 pages' worth; it
/// bounds the reads of a look over many small ranges (fewer than 4,000).
const RANGE_PAGES: u64 = 32;
const PAGE: u64 = 4096;

/// Where the next paced look starts: a process, and an address in it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Resume {
    pid: u32,
    addr: u64,
}

/// What a look reads: ranges (start, length) by process.
type Plan = Vec<(u32, Vec<(u64, u64)>)>;

/// Whether a look reads every range or a budget's worth.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Look {
    /// Everything (before a report).
    Complete,
    /// [`LOOK_PAGES`] from where the last paced look stopped (each growth
    /// sample).
    Paced,
}

impl Tracer {
    /// Checks the settled faults for huge pages, then takes the pages each
    /// live traced process gave back off its sites (except in regions whose
    /// faults have not settled: see `huge_pages`), in all its ranges or in
    /// those a paced look reaches.
    pub(super) fn find_given_back(&mut self, look: Look) {
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
        let (resume, budget) = match look {
            Look::Complete => (Resume::default(), u64::MAX),
            Look::Paced => (self.given_back_resume, LOOK_PAGES),
        };
        let (plan, next) = plan(&live, |pid| table.resident_ranges(pid), resume, budget);
        if look == Look::Paced {
            self.given_back_resume = next;
        }
        for (pid, ranges) in plan {
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

/// Plans a look: the parts of the processes' resident ranges to read, by
/// process, in (pid, address) order from `resume` and round once at most,
/// until `budget` is spent (a range's pages, plus [`RANGE_PAGES`] a
/// range); and where the next look resumes (`resume` itself when the round
/// was done). `pids` is sorted; `ranges(pid)` gives a process's resident
/// ranges, sorted, page aligned. A process may appear twice (the look
/// starts inside it and comes round to its start).
fn plan(
    pids: &[u32],
    mut ranges: impl FnMut(u32) -> Vec<(u64, u64)>,
    resume: Resume,
    budget: u64,
) -> (Plan, Resume) {
    let first = pids.partition_point(|&pid| pid < resume.pid);
    let resumes_inside = pids.get(first) == Some(&resume.pid) && resume.addr > 0;
    // (pid, from, to): the addresses of each process this round visits.
    let visits = pids[first..]
        .iter()
        .map(|&pid| {
            (
                pid,
                if pid == resume.pid { resume.addr } else { 0 },
                u64::MAX,
            )
        })
        .chain(pids[..first].iter().map(|&pid| (pid, 0, u64::MAX)))
        .chain(resumes_inside.then_some((resume.pid, 0, resume.addr)));
    let mut left = budget;
    let mut planned = Vec::new();
    for (pid, from, to) in visits {
        let mut pieces = Vec::new();
        let mut stopped = None;
        for (start, len) in ranges(pid) {
            let (start, end) = (start.max(from), start.saturating_add(len).min(to));
            if start >= end {
                continue;
            }
            if left <= RANGE_PAGES {
                stopped = Some(start);
                break;
            }
            let pages = (end - start).div_ceil(PAGE);
            let taken = pages.min(left - RANGE_PAGES);
            left -= RANGE_PAGES + taken;
            if taken < pages {
                pieces.push((start, taken * PAGE));
                stopped = Some(start + taken * PAGE);
                break;
            }
            pieces.push((start, end - start));
        }
        if !pieces.is_empty() {
            planned.push((pid, pieces));
        }
        if let Some(addr) = stopped {
            return (planned, Resume { pid, addr });
        }
    }
    (planned, resume)
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
    use std::collections::BTreeMap;

    use super::{PAGE, Plan, RANGE_PAGES, Resume, plan};

    /// Three processes' resident ranges (in pages: start page, pages).
    fn processes() -> BTreeMap<u32, Vec<(u64, u64)>> {
        let pages = |ranges: &[(u64, u64)]| -> Vec<(u64, u64)> {
            ranges.iter().map(|&(s, n)| (s * PAGE, n * PAGE)).collect()
        };
        BTreeMap::from([
            (3, pages(&[(0x10, 3), (0x20, 4)])),
            (7, pages(&[(0x100, 12)])),
            (9, pages(&[(0x7, 1), (0x9, 1), (0x40, 2)])),
        ])
    }

    fn look(
        processes: &BTreeMap<u32, Vec<(u64, u64)>>,
        resume: Resume,
        budget: u64,
    ) -> (Plan, Resume) {
        let pids: Vec<u32> = processes.keys().copied().collect();
        plan(&pids, |pid| processes[&pid].clone(), resume, budget)
    }

    #[test]
    fn a_complete_look_reads_every_range() {
        let processes = processes();
        let (planned, next) = look(&processes, Resume::default(), u64::MAX);
        let expected: Vec<(u32, Vec<(u64, u64)>)> = processes.into_iter().collect();
        assert_eq!(planned, expected);
        assert_eq!(next, Resume::default());
    }

    #[test]
    fn paced_looks_resume_where_they_stopped_and_come_round() {
        let processes = processes();
        // Five pages a look, each range read costing RANGE_PAGES more.
        let budget = RANGE_PAGES + 5;
        let mut resume = Resume::default();
        let mut looks = Vec::new();
        for _ in 0..8 {
            let (planned, next) = look(&processes, resume, budget);
            looks.push(planned);
            resume = next;
        }
        let p = |page: u64, pages: u64| (page * PAGE, pages * PAGE);
        assert_eq!(
            looks,
            [
                // pid 3's first range leaves 2 pages of budget: not a read.
                vec![(3, vec![p(0x10, 3)])],
                vec![(3, vec![p(0x20, 4)])],
                // pid 7's 12 pages take three looks.
                vec![(7, vec![p(0x100, 5)])],
                vec![(7, vec![p(0x105, 5)])],
                vec![(7, vec![p(0x10a, 2)])],
                vec![(9, vec![p(0x7, 1)])],
                vec![(9, vec![p(0x9, 1)])],
                vec![(9, vec![p(0x40, 2)])],
            ]
        );
        // Round again from the first process.
        assert_eq!(look(&processes, resume, budget).0, [(3, vec![p(0x10, 3)])]);
    }

    #[test]
    fn every_page_is_read_once_a_round_whatever_the_budget_and_start() {
        let processes = processes();
        let all: Vec<(u32, u64)> = processes
            .iter()
            .flat_map(|(&pid, ranges)| {
                ranges.iter().flat_map(move |&(start, len)| {
                    (start..start + len)
                        .step_by(PAGE as usize)
                        .map(move |page| (pid, page))
                })
            })
            .collect();
        for budget in [RANGE_PAGES + 1, RANGE_PAGES + 3, RANGE_PAGES + 7, 100, 1000] {
            for start in [
                Resume::default(),
                Resume {
                    pid: 7,
                    addr: 0x104 * PAGE,
                },
                Resume {
                    pid: 5,
                    addr: 0x123 * PAGE,
                },
            ] {
                let mut resume = start;
                let mut read: Vec<(u32, u64)> = Vec::new();
                while read.len() < all.len() {
                    let (planned, next) = look(&processes, resume, budget);
                    assert!(!planned.is_empty(), "budget {budget}: a look read nothing");
                    let mut cost = 0;
                    for (pid, ranges) in planned {
                        for (range_start, len) in ranges {
                            cost += RANGE_PAGES + len / PAGE;
                            read.extend(
                                (range_start..range_start + len)
                                    .step_by(PAGE as usize)
                                    .map(|page| (pid, page)),
                            );
                        }
                    }
                    assert!(cost <= budget, "budget {budget}: a look cost {cost}");
                    resume = next;
                }
                // Looks go on round and round: the last may begin the next
                // round. The first round's pages are each page once.
                read.truncate(all.len());
                read.sort_unstable();
                assert_eq!(read, all, "budget {budget}, from {start:?}");
            }
        }
    }

    #[test]
    fn a_look_resuming_inside_a_process_ends_at_where_it_began() {
        let processes = processes();
        let resume = Resume {
            pid: 7,
            addr: 0x104 * PAGE,
        };
        let (planned, next) = look(&processes, resume, u64::MAX);
        let p = |page: u64, pages: u64| (page * PAGE, pages * PAGE);
        assert_eq!(
            planned,
            [
                (7, vec![p(0x104, 8)]),
                (9, vec![p(0x7, 1), p(0x9, 1), p(0x40, 2)]),
                (3, vec![p(0x10, 3), p(0x20, 4)]),
                (7, vec![p(0x100, 4)]),
            ]
        );
        assert_eq!(next, resume);
        // A process gone: the look starts at the next one.
        let gone = Resume {
            pid: 5,
            addr: 0x123 * PAGE,
        };
        assert_eq!(
            look(&processes, gone, RANGE_PAGES + 1).0,
            [(7, vec![p(0x100, 1)])]
        );
    }

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
