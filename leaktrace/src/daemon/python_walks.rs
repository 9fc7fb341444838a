//! What the kernel's Python walk found at each recorded allocation of a
//! process, counted: how many allocations carry Python frames, and why the
//! others do not.
//!
//! Why count them: a report that shows Python lines on most of a
//! process's bytes says nothing of the allocations that could have none.
//! A thread Python never ran on (C code's own threads) is expected to have
//! none; unresolved lookups and failed reads are what leaktrace missed.
use std::collections::HashMap;

use leaktrace_common::{
    PYTHON_NO_THREAD_STATE, PYTHON_READ_FAILED, PYTHON_UNRESOLVED, PYTHON_WALKED,
};
use serde::Serialize;

/// One process's recorded allocations by the walk's `python_status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PythonWalks {
    /// Frames were walked from the allocating thread's own thread state
    /// (none when it ran no Python code at that moment).
    pub walked: u64,
    /// The thread had no Python thread state: native frames by design.
    pub no_thread_state: u64,
    /// The thread's own state could not be looked for (2.7/3.6 without
    /// `interp_head` while nobody held the GIL, or more threads than the
    /// search's bound).
    pub unresolved: u64,
    /// A read of the process's memory failed on the way.
    pub read_failed: u64,
}

impl PythonWalks {
    /// Allocations the walk was tried on.
    pub fn total(&self) -> u64 {
        self.walked + self.no_thread_state + self.unresolved + self.read_failed
    }
}

/// The counts of every process whose walks were tried, by pid.
#[derive(Debug, Default)]
pub struct WalksByProcess {
    by_pid: HashMap<u32, PythonWalks>,
}

impl WalksByProcess {
    /// One recorded allocation of `pid` with the walk's `status`; a process
    /// that is not walked (`PYTHON_NONE`, or an unknown value) is not
    /// counted.
    pub fn count(&mut self, pid: u32, status: u32) {
        if !matches!(
            status,
            PYTHON_WALKED | PYTHON_NO_THREAD_STATE | PYTHON_UNRESOLVED | PYTHON_READ_FAILED
        ) {
            return;
        }
        let walks = self.by_pid.entry(pid).or_default();
        let field = match status {
            PYTHON_WALKED => &mut walks.walked,
            PYTHON_NO_THREAD_STATE => &mut walks.no_thread_state,
            PYTHON_UNRESOLVED => &mut walks.unresolved,
            _ => &mut walks.read_failed,
        };
        *field += 1;
    }

    /// `pid`'s counts; None when no walk was tried.
    pub fn get(&self, pid: u32) -> Option<PythonWalks> {
        self.by_pid.get(&pid).copied()
    }

    /// `pid` exec'd or is forgotten: its counts go with its image.
    pub fn forget(&mut self, pid: u32) {
        self.by_pid.remove(&pid);
    }
}

#[cfg(test)]
mod tests {
    use leaktrace_common::PYTHON_NONE;

    use super::*;

    #[test]
    fn statuses_are_counted_per_process_and_none_is_not() {
        let mut walks = WalksByProcess::default();
        for status in [
            PYTHON_WALKED,
            PYTHON_WALKED,
            PYTHON_NO_THREAD_STATE,
            PYTHON_UNRESOLVED,
            PYTHON_READ_FAILED,
        ] {
            walks.count(7, status);
        }
        walks.count(8, PYTHON_NONE);
        walks.count(8, 99);
        assert_eq!(
            walks.get(7),
            Some(PythonWalks {
                walked: 2,
                no_thread_state: 1,
                unresolved: 1,
                read_failed: 1,
            })
        );
        assert_eq!(walks.get(7).unwrap().total(), 5);
        assert_eq!(walks.get(8), None);
        walks.forget(7);
        assert_eq!(walks.get(7), None);
    }
}
