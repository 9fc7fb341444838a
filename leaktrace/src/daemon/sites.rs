//! Call sites: each distinct (process, stack, allocator function) gets a
//! small id, so the heap table stores 4 bytes per block instead of a stack.
//!
//! Stacks are compared in full, never by a hash alone: two different stacks
//! never share an id (the "stack id collision" bug of stack-map based tools).
//!
//! A process's sites are forgotten when it exits (`--all` sees processes
//! come and go for days) and their ids serve new sites. So is a site of a
//! live process that held nothing at every aging pass over a period
//! (`forget_idle`): a process that runs for days allocates at ever more
//! stacks (a recursion of varying depth, code loaded later), most of them
//! freed at once. No block refers to such a site (the table says what is
//! held at the pass), so its id can serve a new site without pointing a
//! live allocation at a wrong stack; the same stack seen again later is
//! interned afresh.
use std::collections::hash_map::Entry;
use std::hash::BuildHasher;

use rustc_hash::{FxBuildHasher, FxHashMap as HashMap};

use leaktrace_common::AllocFn;

/// Index into `CallSites`.
pub type SiteId = u32;

/// One call site: where an allocation was made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallSite {
    pub pid: u32,
    pub func: AllocFn,
    /// Return addresses captured at the allocator's return, innermost first.
    pub stack: Box<[u64]>,
    /// Python frames, two words each (code object, position), innermost
    /// first; empty for native code. Part of the site's identity: one
    /// native stack runs many Python lines.
    pub python: Box<[u64]>,
    /// Bit i set: frame i was found by the frame-pointer fallback of the
    /// .`eh_frame` unwinder (as first seen; not part of the site's identity).
    pub fp_frames: u64,
}

/// Whether a site held memory at the last aging pass.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Activity {
    /// Forgotten: its id waits in `free`.
    Free,
    /// Held memory at the last pass, or was interned since.
    Holding,
    /// Held nothing at every pass since this time (seconds since attach).
    IdleSince(f64),
}

/// Interns call sites.
#[derive(Default)]
pub struct CallSites {
    sites: Vec<CallSite>,
    /// Each site's activity, by id.
    activity: Vec<Activity>,
    /// Ids of forgotten sites, for reuse.
    free: Vec<SiteId>,
    /// Each process's sites.
    by_pid: HashMap<u32, Vec<SiteId>>,
    /// Hash of (pid, func, stack) to the ids with that hash.
    by_hash: HashMap<u64, Vec<SiteId>>,
    /// Fx: stacks come from the kernel, and a collision only costs a
    /// comparison (ids are checked against the full stack).
    hasher: FxBuildHasher,
}

impl CallSites {
    /// The id of this site, creating it on first sight (then `true`).
    /// Does not allocate when the site is known.
    pub fn intern(
        &mut self,
        pid: u32,
        func: AllocFn,
        stack: &[u64],
        python: &[u64],
        fp_frames: u64,
    ) -> (SiteId, bool) {
        let hash = self.hasher.hash_one((pid, func as u32, stack, python));
        let ids = self.by_hash.entry(hash).or_default();
        for &id in ids.iter() {
            let site = &self.sites[id as usize];
            if site.pid == pid
                && site.func == func
                && *site.stack == *stack
                && *site.python == *python
            {
                return (id, false);
            }
        }
        let site = CallSite {
            pid,
            func,
            stack: stack.into(),
            python: python.into(),
            fp_frames,
        };
        let id = if let Some(id) = self.free.pop() {
            self.sites[id as usize] = site;
            self.activity[id as usize] = Activity::Holding;
            id
        } else {
            self.sites.push(site);
            self.activity.push(Activity::Holding);
            (self.sites.len() - 1) as SiteId
        };
        ids.push(id);
        self.by_pid.entry(pid).or_default().push(id);
        (id, true)
    }

    /// Forgets every site of `pid` and returns their ids, which new sites
    /// will reuse: nothing may refer to them any more.
    pub fn forget_process(&mut self, pid: u32) -> Vec<SiteId> {
        let ids = self.by_pid.remove(&pid).unwrap_or_default();
        for &id in &ids {
            self.release(id);
        }
        ids
    }

    /// An aging pass at `now` (seconds since attach): `holding` tells which
    /// sites hold memory now. A site that held nothing at every pass for at
    /// least `idle` seconds is forgotten; its id is returned (for the
    /// growth history and the page's series) and will serve a new site.
    /// A site interned since the last pass counts as holding then.
    pub fn forget_idle(
        &mut self,
        now: f64,
        idle: f64,
        holding: impl Fn(SiteId) -> bool,
    ) -> Vec<SiteId> {
        let mut idle_sites = Vec::new();
        for (index, activity) in self.activity.iter_mut().enumerate() {
            let id = index as SiteId;
            match *activity {
                Activity::Free => {}
                _ if holding(id) => *activity = Activity::Holding,
                Activity::Holding => *activity = Activity::IdleSince(now),
                Activity::IdleSince(since) if now - since >= idle => idle_sites.push(id),
                Activity::IdleSince(_) => {}
            }
        }
        if idle_sites.is_empty() {
            return idle_sites;
        }
        let gone: rustc_hash::FxHashSet<SiteId> = idle_sites.iter().copied().collect();
        for &id in &idle_sites {
            let pid = self.sites[id as usize].pid;
            if let Entry::Occupied(mut own) = self.by_pid.entry(pid) {
                own.get_mut().retain(|site| !gone.contains(site));
                if own.get().is_empty() {
                    own.remove();
                }
            }
        }
        for &id in &idle_sites {
            self.release(id);
        }
        idle_sites
    }

    /// Empties site `id` (already out of `by_pid`), takes it out of the
    /// hash index and puts its id up for reuse.
    fn release(&mut self, id: SiteId) {
        let site = std::mem::replace(
            &mut self.sites[id as usize],
            CallSite {
                pid: 0,
                func: AllocFn::Malloc,
                stack: Box::new([]),
                python: Box::new([]),
                fp_frames: 0,
            },
        );
        self.activity[id as usize] = Activity::Free;
        let hash = self
            .hasher
            .hash_one((site.pid, site.func as u32, &*site.stack, &*site.python));
        if let Entry::Occupied(mut bucket) = self.by_hash.entry(hash) {
            bucket.get_mut().retain(|&other| other != id);
            if bucket.get().is_empty() {
                bucket.remove();
            }
        }
        self.free.push(id);
    }

    pub fn get(&self, id: SiteId) -> &CallSite {
        &self.sites[id as usize]
    }

    /// Sites known (forgotten ones excluded).
    pub fn len(&self) -> usize {
        self.sites.len() - self.free.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_site_same_id_different_anything_different_id() {
        let mut sites = CallSites::default();
        let (a, new) = sites.intern(1, AllocFn::Malloc, &[1, 2, 3], &[], 0);
        assert!(new);
        assert_eq!(
            sites.intern(1, AllocFn::Malloc, &[1, 2, 3], &[], 0),
            (a, false)
        );
        let others = [
            sites.intern(2, AllocFn::Malloc, &[1, 2, 3], &[], 0).0,
            sites.intern(1, AllocFn::Calloc, &[1, 2, 3], &[], 0).0,
            sites.intern(1, AllocFn::Malloc, &[1, 2], &[], 0).0,
            sites.intern(1, AllocFn::Malloc, &[1, 2, 4], &[], 0).0,
            sites.intern(1, AllocFn::Malloc, &[], &[], 0).0,
        ];
        let mut all = vec![a];
        all.extend(others);
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 6);
        assert_eq!(sites.len(), 6);
        assert_eq!(*sites.get(a).stack, [1, 2, 3]);
    }

    #[test]
    fn an_exited_process_sites_are_forgotten_and_their_ids_reused() {
        let mut sites = CallSites::default();
        let (kept, _) = sites.intern(1, AllocFn::Malloc, &[1, 2], &[], 0);
        let (gone_a, _) = sites.intern(2, AllocFn::Malloc, &[1, 2], &[], 0);
        let (gone_b, _) = sites.intern(2, AllocFn::Calloc, &[3], &[], 0);
        let mut forgotten = sites.forget_process(2);
        forgotten.sort_unstable();
        assert_eq!(forgotten, [gone_a, gone_b]);
        assert_eq!(sites.len(), 1);
        assert!(sites.forget_process(2).is_empty());
        // The same stack in a new process with the old pid is a new site,
        // on a reused id; the other process's site is untouched.
        let (again, new) = sites.intern(2, AllocFn::Malloc, &[1, 2], &[], 0);
        assert!(new && (again == gone_a || again == gone_b));
        assert_eq!(
            sites.intern(1, AllocFn::Malloc, &[1, 2], &[], 0),
            (kept, false)
        );
        assert_eq!(sites.len(), 2);
        assert_eq!(sites.get(again).pid, 2);
    }

    /// A site is let go once it held nothing at every pass for the idle
    /// period; one that holds again before that starts over; a site
    /// interned between passes is not judged idle at once; a forgotten
    /// site's stack seen again is a new site, never another's id.
    #[test]
    fn sites_idle_for_the_period_are_forgotten_and_holders_kept() {
        let mut sites = CallSites::default();
        let (busy, _) = sites.intern(1, AllocFn::Malloc, &[1], &[], 0);
        let (idle, _) = sites.intern(1, AllocFn::Malloc, &[2], &[], 0);
        let (flicker, _) = sites.intern(1, AllocFn::Malloc, &[3], &[], 0);
        let holding = |held: &'static [SiteId]| move |id| held.contains(&id);
        // Leaked ids are static in the closures below.
        assert_eq!((busy, idle, flicker), (0, 1, 2));
        assert!(sites.forget_idle(0.0, 10.0, holding(&[0])).is_empty());
        assert!(sites.forget_idle(5.0, 10.0, holding(&[0, 2])).is_empty());
        // 10 s after the first idle pass: site 1 goes, 2 held at 5 s.
        assert_eq!(sites.forget_idle(10.0, 10.0, holding(&[0])), [idle]);
        assert_eq!(sites.len(), 2);
        // A site interned now is not judged on this pass's holding set.
        let (late, new) = sites.intern(1, AllocFn::Malloc, &[4], &[], 0);
        assert!(new);
        assert_eq!(late, idle, "the forgotten id serves the new site");
        assert_eq!(*sites.get(late).stack, [4]);
        // Site 2 is idle since 10 s, the new one since 15 s.
        assert!(sites.forget_idle(15.0, 10.0, holding(&[0])).is_empty());
        assert_eq!(sites.forget_idle(20.0, 10.0, holding(&[0])), [flicker]);
        assert!(sites.forget_idle(24.0, 10.0, holding(&[0])).is_empty());
        assert_eq!(sites.forget_idle(25.0, 10.0, holding(&[0])), [late]);
        // The stack of the site forgotten first is a new site again.
        let (again, new) = sites.intern(1, AllocFn::Malloc, &[2], &[], 0);
        assert!(new);
        assert_eq!(*sites.get(again).stack, [2]);
        assert_eq!(sites.len(), 2);
        // forget_process still finds exactly the live sites of pid 1.
        let mut left = sites.forget_process(1);
        left.sort_unstable();
        let mut expected = vec![busy, again];
        expected.sort_unstable();
        assert_eq!(left, expected);
        assert!(sites.is_empty());
    }
}
