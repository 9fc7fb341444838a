//! Call sites: each distinct (process, stack, allocator function) gets a
//! small id, so the heap table stores 4 bytes per block instead of a stack.
//!
//! Stacks are compared in full, never by a hash alone: two different stacks
//! never share an id (the "stack id collision" bug of stack-map based tools).
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
    /// Bit i set: frame i was found by the frame-pointer fallback of the
    /// .eh_frame unwinder (as first seen; not part of the site's identity).
    pub fp_frames: u64,
}

/// Interns call sites.
#[derive(Default)]
pub struct CallSites {
    sites: Vec<CallSite>,
    /// Hash of (pid, func, stack) to the ids with that hash.
    by_hash: HashMap<u64, Vec<SiteId>>,
    /// Fx: stacks come from the kernel, and a collision only costs a
    /// comparison (ids are checked against the full stack).
    hasher: FxBuildHasher,
}

impl CallSites {
    /// The id of this site, creating it on first sight. Does not allocate
    /// when the site is known.
    pub fn intern(&mut self, pid: u32, func: AllocFn, stack: &[u64], fp_frames: u64) -> SiteId {
        let hash = self.hasher.hash_one((pid, func as u32, stack));
        let ids = self.by_hash.entry(hash).or_default();
        for &id in ids.iter() {
            let site = &self.sites[id as usize];
            if site.pid == pid && site.func == func && *site.stack == *stack {
                return id;
            }
        }
        let id = self.sites.len() as SiteId;
        self.sites.push(CallSite {
            pid,
            func,
            stack: stack.into(),
            fp_frames,
        });
        ids.push(id);
        id
    }

    pub fn get(&self, id: SiteId) -> &CallSite {
        &self.sites[id as usize]
    }

    pub fn len(&self) -> usize {
        self.sites.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sites.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_site_same_id_different_anything_different_id() {
        let mut sites = CallSites::default();
        let a = sites.intern(1, AllocFn::Malloc, &[1, 2, 3], 0);
        assert_eq!(sites.intern(1, AllocFn::Malloc, &[1, 2, 3], 0), a);
        let others = [
            sites.intern(2, AllocFn::Malloc, &[1, 2, 3], 0),
            sites.intern(1, AllocFn::Calloc, &[1, 2, 3], 0),
            sites.intern(1, AllocFn::Malloc, &[1, 2], 0),
            sites.intern(1, AllocFn::Malloc, &[1, 2, 4], 0),
            sites.intern(1, AllocFn::Malloc, &[], 0),
        ];
        let mut all = vec![a];
        all.extend(others);
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 6);
        assert_eq!(sites.len(), 6);
        assert_eq!(*sites.get(a).stack, [1, 2, 3]);
    }
}
