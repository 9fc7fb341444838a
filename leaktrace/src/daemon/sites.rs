//! Call sites: each distinct (process, stack, allocator function) gets a
//! small id, so the heap table stores 4 bytes per block instead of a stack.
//!
//! Stacks are compared in full, never by a hash alone: two different stacks
//! never share an id (the "stack id collision" bug of stack-map based tools).
//!
//! A process's sites are forgotten when it exits (`--all` sees processes
//! come and go for days) and their ids serve new sites.
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

/// Interns call sites.
#[derive(Default)]
pub struct CallSites {
    sites: Vec<CallSite>,
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
            id
        } else {
            self.sites.push(site);
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
            let hash =
                self.hasher
                    .hash_one((site.pid, site.func as u32, &*site.stack, &*site.python));
            if let Entry::Occupied(mut bucket) = self.by_hash.entry(hash) {
                bucket.get_mut().retain(|&other| other != id);
                if bucket.get().is_empty() {
                    bucket.remove();
                }
            }
        }
        self.free.extend_from_slice(&ids);
        ids
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
}
