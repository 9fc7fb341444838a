//! Pipeline: the pure part of the daemon, ring-buffer bytes in, heap table
//! out. The tracer (app) feeds it records from the kernel; the ingest benchmark
//! feeds it synthetic ones through the very same code.
use leaktrace_common::{AllocFn, FLAG_SAMPLED, FORK_TRACED};
use rustc_hash::FxHashMap;

use crate::daemon::{
    contracts::{self, HeapOp},
    decode::{self, Record},
    heap::HeapTable,
    python_walks::WalksByProcess,
    sites::{CallSites, SiteId},
};

/// What the caller should know about one record.
pub enum Ingested<'a> {
    /// Nothing beyond the table update.
    Applied,
    /// The record introduced a call site never seen before in process
    /// `pid`, with this stack: the tracer makes sure its addresses are in
    /// the known mappings.
    NewSite {
        pid: u32,
        stack: &'a [u64],
        python: &'a [u64],
    },
    /// The process exec'd: its earlier blocks and sites were dropped.
    Exec(Forgotten),
    /// The process exited (its last thread).
    Exit(u32),
    /// Process `parent` forked process `child` at `timestamp_ns`
    /// (`CLOCK_MONOTONIC`); `traced`: the kernel added the child to its
    /// set of traced processes (false when the set was full).
    Fork {
        parent: u32,
        child: u32,
        traced: bool,
        timestamp_ns: u64,
    },
}

/// What forgetting a process let go of.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Forgotten {
    pub pid: u32,
    /// Addresses of its heap blocks (to drop from the kernel's set of
    /// sampled blocks).
    pub blocks: Vec<u64>,
    /// Its call sites' ids, free for new sites now.
    pub sites: Vec<SiteId>,
}

#[derive(Default)]
pub struct Pipeline {
    pub table: HeapTable,
    pub sites: CallSites,
    /// Records received.
    pub events: u64,
    pub decode_errors: u64,
    pub execs: u64,
    /// What the kernel's Python walk found at each recorded allocation.
    pub python_walks: WalksByProcess,
    /// `run` attaches before the command's own exec, which is expected.
    pub launch_exec_pending: bool,
    /// Per process, the block its last `PyObject_Free` released (exact
    /// object mode). pymalloc hands blocks over 512 bytes to the C
    /// library, so that release is followed by a `free` of the same
    /// address, on the same thread and under the GIL (no other Python
    /// thread frees in between): that second release is the same one, not
    /// a release of a block never seen.
    pub python_freed: FxHashMap<u32, u64>,
}

impl Pipeline {
    /// Drops a process's blocks and call sites (it exec'd or exited).
    pub fn forget_process(&mut self, pid: u32) -> Forgotten {
        self.python_freed.remove(&pid);
        self.python_walks.forget(pid);
        Forgotten {
            pid,
            blocks: self.table.forget_process(pid),
            sites: self.sites.forget_process(pid),
        }
    }

    pub fn ingest<'a>(&mut self, bytes: &'a [u8]) -> Ingested<'a> {
        self.events += 1;
        match decode::decode(bytes) {
            Err(_) => {
                self.decode_errors += 1;
                Ingested::Applied
            }
            Ok(Record::Exec(header)) => {
                if self.launch_exec_pending {
                    self.launch_exec_pending = false;
                    return Ingested::Applied;
                }
                self.execs += 1;
                Ingested::Exec(self.forget_process(header.pid))
            }
            Ok(Record::Exit(header)) => Ingested::Exit(header.pid),
            Ok(Record::Fork(fork)) => Ingested::Fork {
                parent: fork.header.pid,
                child: fork.child_pid,
                traced: fork.flags & FORK_TRACED != 0,
                timestamp_ns: fork.header.timestamp_ns,
            },
            Ok(Record::Release(event)) => {
                let func = AllocFn::from_u32(event.header.func).expect("decode checked it");
                let pid = event.header.pid;
                match func {
                    AllocFn::PyObjectFree => {
                        self.python_freed.insert(pid, event.args[0]);
                    }
                    AllocFn::Free
                        if !self.python_freed.is_empty()
                            && self.python_freed.get(&pid) == Some(&event.args[0]) =>
                    {
                        self.python_freed.remove(&pid);
                        return Ingested::Applied;
                    }
                    _ => {}
                }
                let op = contracts::interpret_release(func, event.args);
                self.table
                    .apply(event.header.pid, op, 0, event.header.timestamp_ns);
                Ingested::Applied
            }
            Ok(Record::Alloc(event, stack, python)) => {
                let func = AllocFn::from_u32(event.header.func).expect("decode checked it");
                let mut op = contracts::interpret_alloc(func, event.args, event.ret, event.out);
                if event.flags & FLAG_SAMPLED == 0 {
                    // Sampling: the new block is not sampled; the record
                    // only releases the sampled block it replaced.
                    op = match op {
                        HeapOp::Realloc { old, .. } => HeapOp::Free { addr: old },
                        free @ HeapOp::Free { .. } => free,
                        _ => HeapOp::Ignored,
                    };
                }
                let pid = event.header.pid;
                if event.flags & FLAG_SAMPLED != 0 {
                    self.python_walks.count(pid, event.python_status);
                }
                // Only a call that creates a block needs its site: a failed
                // or release-only record keeps no stack.
                let (site, new) = match op {
                    HeapOp::Alloc { .. } | HeapOp::Realloc { .. } | HeapOp::Resident { .. } => {
                        self.sites.intern(pid, func, stack, python, event.fp_frames)
                    }
                    _ => (0, false),
                };
                self.table.apply(pid, op, site, event.header.timestamp_ns);
                if new {
                    Ingested::NewSite { pid, stack, python }
                } else {
                    Ingested::Applied
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::records::{as_bytes, free_record, malloc_record, release_record};

    #[test]
    fn records_flow_into_the_table_and_new_sites_are_announced() {
        let mut pipeline = Pipeline::default();
        let first = malloc_record(7, 0x1000, 10, &[0xa, 0xb], 1);
        assert!(matches!(
            pipeline.ingest(as_bytes(&first)),
            Ingested::NewSite {
                pid: 7,
                stack: &[0xa, 0xb],
                python: &[],
            }
        ));
        let again = malloc_record(7, 0x2000, 10, &[0xa, 0xb], 1);
        assert!(matches!(
            pipeline.ingest(as_bytes(&again)),
            Ingested::Applied
        ));
        pipeline.ingest(as_bytes(&free_record(7, 0x1000)));
        assert_eq!(pipeline.table.len(), 1);
        assert_eq!(pipeline.events, 3);
        pipeline.ingest(&[1, 2, 3]);
        assert_eq!(pipeline.decode_errors, 1);
    }

    /// pymalloc gives a block over 512 bytes to the C library: its
    /// `PyObject_Free` is followed by a `free` of the same address, which
    /// is the same release, not one of a block never seen. A `free` of
    /// another address still counts.
    #[test]
    fn a_free_that_follows_py_object_free_of_its_block_is_one_release() {
        let mut pipeline = Pipeline::default();
        let mut object = malloc_record(7, 0x1000, 600, &[0xa], 1);
        object[0] = (object[0] & !0xffff_ffff) | AllocFn::PyObjectMalloc as u64;
        pipeline.ingest(as_bytes(&object));
        assert_eq!(pipeline.table.len(), 1);
        pipeline.ingest(as_bytes(&release_record(AllocFn::PyObjectFree, 7, 0x1000)));
        pipeline.ingest(as_bytes(&free_record(7, 0x1000)));
        assert_eq!(pipeline.table.len(), 0);
        assert_eq!(pipeline.table.stats.releases, 1);
        assert_eq!(pipeline.table.stats.unmatched_releases, 0);
        // The same address freed again, with no PyObject_Free before it.
        pipeline.ingest(as_bytes(&free_record(7, 0x1000)));
        assert_eq!(pipeline.table.stats.unmatched_releases, 1);
        // Another process's free of that address is its own.
        pipeline.ingest(as_bytes(&release_record(AllocFn::PyObjectFree, 7, 0x2000)));
        pipeline.ingest(as_bytes(&free_record(8, 0x2000)));
        assert_eq!(pipeline.table.stats.unmatched_releases, 3);
    }

    #[test]
    fn python_walks_are_counted_for_recorded_allocations_until_forgotten() {
        use leaktrace_common::{
            AllocEvent, EventHeader, PYTHON_NO_THREAD_STATE, PYTHON_NONE, PYTHON_WALKED,
        };

        use crate::daemon::records::encode_alloc;

        let record = |addr, status, flags| {
            let event = AllocEvent {
                header: EventHeader {
                    func: AllocFn::Malloc as u32,
                    pid: 7,
                    tid: 8,
                    stack_len: 0,
                    timestamp_ns: 1,
                },
                args: [16, 0, 0, 0],
                ret: addr,
                out: 0,
                fp_frames: 0,
                flags,
                python_frames: 0,
                python_status: status,
            };
            encode_alloc(&event, &[0xa], &[])
        };
        let mut pipeline = Pipeline::default();
        for (addr, status, flags) in [
            (0x1000, PYTHON_WALKED, FLAG_SAMPLED),
            (0x2000, PYTHON_NO_THREAD_STATE, FLAG_SAMPLED),
            (0x3000, PYTHON_NO_THREAD_STATE, FLAG_SAMPLED),
            // Not sampled: the kernel walked nothing.
            (0x4000, PYTHON_NONE, 0),
        ] {
            pipeline.ingest(as_bytes(&record(addr, status, flags)));
        }
        let walks = pipeline.python_walks.get(7).unwrap();
        assert_eq!((walks.walked, walks.no_thread_state), (1, 2));
        assert_eq!(walks.total(), 3);
        pipeline.forget_process(7);
        assert_eq!(pipeline.python_walks.get(7), None);
    }
}
