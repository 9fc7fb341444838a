//! Goroutines grouped by creation site, and how each group moves across
//! reads: the view that finds a goroutine leak (a `go` statement whose
//! goroutines block forever, so their count only grows).
//!
//! Pure: a `g` is decoded from bytes read elsewhere (`goroutines_live`),
//! grouped by its `gopc` (the `go` statement) and `startpc` (the function
//! it runs), and each group's count is compared with the reads before.
//! The process runs while it is read, so a torn `g` (a status no release
//! writes) is counted and left out, never trusted.
use std::collections::{BTreeMap, HashMap};

use super::{g_layout::GLayout, wait_reasons};

/// `runtime.g.atomicstatus` values (runtime2.go); `_Gscan` is a bit set
/// in while the collector scans a stack.
const G_IDLE: u32 = 0;
const G_RUNNABLE: u32 = 1;
const G_RUNNING: u32 = 2;
const G_SYSCALL: u32 = 3;
const G_WAITING: u32 = 4;
const G_DEAD: u32 = 6;
const G_COPYSTACK: u32 = 8;
const G_PREEMPTED: u32 = 9;
const G_SCAN: u32 = 0x1000;

/// Sites whose history is kept at most (a program that makes goroutines
/// from ever new closures cannot grow the daemon without bound).
const MAX_SITES: usize = 10_000;

/// One goroutine's fields, as read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Goroutine {
    pub goid: u64,
    pub status: u32,
    pub waitreason: u8,
    pub gopc: u64,
    pub startpc: u64,
    pub stack_lo: u64,
    pub stack_hi: u64,
}

fn u64_at(bytes: &[u8], offset: u64) -> Option<u64> {
    let start = usize::try_from(offset).ok()?;
    Some(u64::from_le_bytes(
        bytes.get(start..start.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// Decodes a `g` from its first `layout.span()` bytes (None: too short).
pub(crate) fn decode(bytes: &[u8], layout: &GLayout) -> Option<Goroutine> {
    let status_at = usize::try_from(layout.atomicstatus).ok()?;
    let status = u32::from_le_bytes(
        bytes
            .get(status_at..status_at.checked_add(4)?)?
            .try_into()
            .ok()?,
    );
    Some(Goroutine {
        goid: u64_at(bytes, layout.goid)?,
        status,
        waitreason: *bytes.get(usize::try_from(layout.waitreason).ok()?)?,
        gopc: u64_at(bytes, layout.gopc)?,
        startpc: u64_at(bytes, layout.startpc)?,
        stack_lo: u64_at(bytes, layout.stack_lo)?,
        stack_hi: u64_at(bytes, layout.stack_hi)?,
    })
}

/// What a goroutine is doing, as the runtime's traceback names it: its
/// wait reason when waiting, else its state. `Ok(None)`: dead (a `g` kept
/// for reuse); `Err(())`: a status no release writes (a torn read).
pub(crate) fn state(status: u32, waitreason: u8, reasons: &[String]) -> Result<Option<String>, ()> {
    let name = match status & !G_SCAN {
        G_DEAD => return Ok(None),
        G_IDLE => "idle",
        G_RUNNABLE => "runnable",
        G_RUNNING => "running",
        G_SYSCALL => "syscall",
        G_WAITING => return Ok(Some(wait_reasons::name(reasons, waitreason))),
        G_COPYSTACK => "copystack",
        G_PREEMPTED => "preempted",
        _ => return Err(()),
    };
    Ok(Some(name.to_owned()))
}

/// A creation site: the `go` statement's PC and the started function's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct SiteKey {
    pub gopc: u64,
    pub startpc: u64,
}

/// The live goroutines of one creation site.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Group {
    pub count: u64,
    /// Goroutines by what they do ("chan send", "running"...).
    pub wait_reasons: BTreeMap<String, u64>,
    /// Their stacks' sizes (hi - lo), summed.
    pub stack_bytes: u64,
}

/// How one read went: never silently partial.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ReadStats {
    /// `runtime.allglen` when read.
    pub listed: u64,
    /// Goroutines read and alive, and dead ones skipped.
    pub live: u64,
    pub dead: u64,
    /// Reads that failed (an unmapped page, the process gone).
    pub failed_reads: u64,
    /// `g`s left out as torn (a status no release writes, a nil entry,
    /// a length that disagreed with the slice's).
    pub torn: u64,
    /// Stopped at the cap of goroutines, bytes or time: the counts are
    /// partial.
    pub truncated: bool,
}

/// One read of a process: its groups, and how the read went.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub groups: BTreeMap<SiteKey, Group>,
    pub stats: ReadStats,
}

impl Snapshot {
    /// Adds one goroutine read (dead and torn ones are counted apart).
    pub(crate) fn add(&mut self, g: &Goroutine, reasons: &[String]) {
        match state(g.status, g.waitreason, reasons) {
            Ok(None) => self.stats.dead += 1,
            Err(()) => self.stats.torn += 1,
            Ok(Some(state)) => {
                self.stats.live += 1;
                let group = self
                    .groups
                    .entry(SiteKey {
                        gopc: g.gopc,
                        startpc: g.startpc,
                    })
                    .or_default();
                group.count += 1;
                *group.wait_reasons.entry(state).or_default() += 1;
                group.stack_bytes = group
                    .stack_bytes
                    .saturating_add(g.stack_hi.saturating_sub(g.stack_lo));
            }
        }
    }
}

/// A site's count over the reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct History {
    /// Its count at the first read (0 if it had none then).
    at_attach: u64,
    /// Its count at the read before the last, and at the last.
    previous: u64,
    last: u64,
    /// Reads that found it higher, or lower, than the read before.
    rises: u32,
    falls: u32,
}

/// How a site's count moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GroupGrowth {
    pub since_previous: i64,
    pub since_attach: i64,
    /// It rose at two reads at least and never fell: a leak.
    pub only_grows: bool,
}

impl History {
    fn growth(&self) -> GroupGrowth {
        GroupGrowth {
            since_previous: self.last.cast_signed() - self.previous.cast_signed(),
            since_attach: self.last.cast_signed() - self.at_attach.cast_signed(),
            only_grows: self.falls == 0 && self.rises >= 2,
        }
    }
}

/// One process's goroutines, as read last, and each site's history.
#[derive(Clone, Debug, Default)]
pub(crate) struct ProcessGoroutines {
    pub last: Snapshot,
    history: HashMap<SiteKey, History>,
    pub reads: u64,
}

impl ProcessGoroutines {
    /// Takes a new read.
    pub(crate) fn record(&mut self, snapshot: Snapshot) {
        let first = self.reads == 0;
        self.reads += 1;
        for history in self.history.values_mut() {
            history.previous = history.last;
            history.last = 0;
        }
        for (key, group) in &snapshot.groups {
            let history = self.history.entry(*key).or_default();
            history.last = group.count;
            if first {
                history.at_attach = group.count;
                history.previous = group.count;
            }
        }
        for history in self.history.values_mut() {
            if history.last > history.previous {
                history.rises += 1;
            } else if history.last < history.previous {
                history.falls += 1;
            }
        }
        if self.history.len() > MAX_SITES {
            self.history.retain(|_, h| h.last > 0);
        }
        self.last = snapshot;
    }

    /// The groups read last with their growth, most goroutines first.
    pub(crate) fn rows(&self) -> Vec<(SiteKey, &Group, GroupGrowth)> {
        let mut rows: Vec<(SiteKey, &Group, GroupGrowth)> = self
            .last
            .groups
            .iter()
            .map(|(key, group)| {
                let growth = self.history.get(key).copied().unwrap_or_default().growth();
                (*key, group, growth)
            })
            .collect();
        rows.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(&b.0)));
        rows
    }
}

/// A goroutine the runtime runs for itself (the collector's workers, the
/// scavenger, the finalizer loop): its start function is in package
/// `runtime` and is not `runtime.main` (the runtime's own rule,
/// `isSystemGoroutine`, less its finalizer special case).
pub(crate) fn is_runtime_internal(start_function: &str) -> bool {
    start_function.starts_with("runtime.") && start_function != "runtime.main"
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAYOUT: GLayout = GLayout {
        stack_lo: 0,
        stack_hi: 8,
        atomicstatus: 144,
        goid: 152,
        waitreason: 176,
        gopc: 280,
        startpc: 288,
    };

    fn reasons() -> Vec<String> {
        ["", "GC assist marking", "IO wait"]
            .iter()
            .map(|s| (*s).to_owned())
            .chain((3..15).map(|i| format!("r{i}")))
            .chain(["chan send".to_owned()])
            .collect()
    }

    fn g(status: u32, waitreason: u8, gopc: u64, stack: u64) -> Goroutine {
        Goroutine {
            goid: 1,
            status,
            waitreason,
            gopc,
            startpc: 0x4000,
            stack_lo: 0xc000_0000,
            stack_hi: 0xc000_0000 + stack,
        }
    }

    #[test]
    fn a_g_decodes_at_its_layouts_offsets() {
        let mut bytes = vec![0u8; LAYOUT.span() as usize];
        bytes[0..8].copy_from_slice(&0xc000_1000u64.to_le_bytes());
        bytes[8..16].copy_from_slice(&0xc000_3000u64.to_le_bytes());
        bytes[144..148].copy_from_slice(&(G_WAITING | G_SCAN).to_le_bytes());
        bytes[152..160].copy_from_slice(&77u64.to_le_bytes());
        bytes[176] = 15;
        bytes[280..288].copy_from_slice(&0x49_1234u64.to_le_bytes());
        bytes[288..296].copy_from_slice(&0x49_0000u64.to_le_bytes());
        let g = decode(&bytes, &LAYOUT).expect("decodes");
        assert_eq!(
            g,
            Goroutine {
                goid: 77,
                status: G_WAITING | G_SCAN,
                waitreason: 15,
                gopc: 0x49_1234,
                startpc: 0x49_0000,
                stack_lo: 0xc000_1000,
                stack_hi: 0xc000_3000,
            }
        );
        assert_eq!(decode(&bytes[..295], &LAYOUT), None);
    }

    #[test]
    fn states_are_named_as_the_traceback_names_them() {
        let r = reasons();
        assert_eq!(state(G_WAITING, 15, &r), Ok(Some("chan send".into())));
        // The scan bit is masked.
        assert_eq!(state(G_WAITING | G_SCAN, 2, &r), Ok(Some("IO wait".into())));
        assert_eq!(state(G_WAITING, 0, &r), Ok(Some("waiting".into())));
        assert_eq!(state(G_RUNNABLE, 0, &r), Ok(Some("runnable".into())));
        assert_eq!(state(G_RUNNING | G_SCAN, 0, &r), Ok(Some("running".into())));
        assert_eq!(state(G_SYSCALL, 0, &r), Ok(Some("syscall".into())));
        assert_eq!(state(G_DEAD, 0, &r), Ok(None));
        assert_eq!(state(G_DEAD | G_SCAN, 0, &r), Ok(None));
        assert_eq!(state(0xdead, 0, &r), Err(()));
    }

    #[test]
    fn goroutines_group_by_site_with_reasons_and_stacks() {
        let r = reasons();
        let mut snapshot = Snapshot::default();
        for _ in 0..3 {
            snapshot.add(&g(G_WAITING, 15, 0x100, 8192), &r);
        }
        snapshot.add(&g(G_RUNNABLE, 0, 0x100, 2048), &r);
        snapshot.add(&g(G_WAITING, 2, 0x200, 2048), &r);
        snapshot.add(&g(G_DEAD, 0, 0x100, 2048), &r);
        snapshot.add(&g(77, 0, 0x100, 2048), &r);
        let leak = &snapshot.groups[&SiteKey {
            gopc: 0x100,
            startpc: 0x4000,
        }];
        assert_eq!(leak.count, 4);
        assert_eq!(leak.stack_bytes, 3 * 8192 + 2048);
        assert_eq!(
            leak.wait_reasons,
            BTreeMap::from([("chan send".into(), 3), ("runnable".into(), 1)])
        );
        assert_eq!(snapshot.groups.len(), 2);
        assert_eq!(
            (
                snapshot.stats.live,
                snapshot.stats.dead,
                snapshot.stats.torn
            ),
            (5, 1, 1)
        );
    }

    fn read(counts: &[(u64, u64)]) -> Snapshot {
        let r = reasons();
        let mut snapshot = Snapshot::default();
        for &(gopc, count) in counts {
            for _ in 0..count {
                snapshot.add(&g(G_WAITING, 15, gopc, 1), &r);
            }
        }
        snapshot
    }

    fn growth_of(p: &ProcessGoroutines, gopc: u64) -> Option<(u64, GroupGrowth)> {
        p.rows()
            .into_iter()
            .find(|(k, _, _)| k.gopc == gopc)
            .map(|(_, g, growth)| (g.count, growth))
    }

    #[test]
    fn a_site_that_only_grows_is_flagged_and_a_flat_or_falling_one_is_not() {
        let mut p = ProcessGoroutines::default();
        p.record(read(&[(1, 2), (2, 4), (3, 5)]));
        let first = growth_of(&p, 2).unwrap();
        assert_eq!(
            first,
            (
                4,
                GroupGrowth {
                    since_previous: 0,
                    since_attach: 0,
                    only_grows: false
                }
            )
        );
        // 1 leaks; 2 stays flat; 3 comes and goes; 4 appears.
        p.record(read(&[(1, 10), (2, 4), (4, 1)]));
        p.record(read(&[(1, 18), (2, 4), (3, 5), (4, 3)]));
        p.record(read(&[(1, 18), (2, 4), (3, 2), (4, 3)]));
        assert_eq!(
            growth_of(&p, 1),
            Some((
                18,
                GroupGrowth {
                    since_previous: 0,
                    since_attach: 16,
                    only_grows: true
                }
            ))
        );
        assert_eq!(
            growth_of(&p, 2),
            Some((
                4,
                GroupGrowth {
                    since_previous: 0,
                    since_attach: 0,
                    only_grows: false
                }
            ))
        );
        assert_eq!(
            growth_of(&p, 3),
            Some((
                2,
                GroupGrowth {
                    since_previous: -3,
                    since_attach: -3,
                    only_grows: false
                }
            ))
        );
        // Absent at attach: its whole count is growth, and it rose twice.
        assert_eq!(
            growth_of(&p, 4),
            Some((
                3,
                GroupGrowth {
                    since_previous: 0,
                    since_attach: 3,
                    only_grows: true
                }
            ))
        );
        // Most goroutines first.
        let order: Vec<u64> = p.rows().iter().map(|(k, _, _)| k.gopc).collect();
        assert_eq!(order, [1, 2, 4, 3]);
    }

    #[test]
    fn runtime_goroutines_are_told_apart_from_the_programs() {
        assert!(is_runtime_internal("runtime.bgsweep"));
        assert!(is_runtime_internal("runtime.gcBgMarkWorker"));
        assert!(!is_runtime_internal("runtime.main"));
        assert!(!is_runtime_internal("main.check"));
        assert!(!is_runtime_internal("runtime/pprof.profileWriter"));
    }
}
