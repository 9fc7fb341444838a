//! Pipeline: the pure part of the daemon, ring-buffer bytes in, heap table
//! out. The session feeds it records from the kernel; the ingest benchmark
//! feeds it synthetic ones through the very same code.
use leaktrace_common::AllocFn;

use crate::{
    heap::HeapTable,
    ingest::{self, Record},
    sites::CallSites,
};

/// What the caller should know about one record.
pub enum Ingested<'a> {
    /// Nothing beyond the table update.
    Applied,
    /// The record introduced a call site never seen before, with this
    /// stack: the session makes sure its addresses are in the known mappings.
    NewSite(&'a [u64]),
    /// The process exec'd: its earlier blocks were dropped.
    Exec(u32),
}

#[derive(Default)]
pub struct Pipeline {
    pub table: HeapTable,
    pub sites: CallSites,
    /// Records received.
    pub events: u64,
    pub decode_errors: u64,
    pub execs: u64,
    /// `run` attaches before the command's own exec, which is expected.
    pub launch_exec_pending: bool,
}

impl Pipeline {
    pub fn ingest<'a>(&mut self, bytes: &'a [u8]) -> Ingested<'a> {
        self.events += 1;
        match ingest::decode(bytes) {
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
                self.table.forget_process(header.pid);
                Ingested::Exec(header.pid)
            }
            Ok(Record::Release(event)) => {
                let func = AllocFn::from_u32(event.header.func).expect("decode checked it");
                let op = ingest::interpret_release(func, event.args);
                self.table
                    .apply(event.header.pid, op, 0, event.header.timestamp_ns);
                Ingested::Applied
            }
            Ok(Record::Alloc(event)) => {
                let func = AllocFn::from_u32(event.header.func).expect("decode checked it");
                let op = ingest::interpret_alloc(func, event.args, event.ret, event.out);
                let stack = ingest::stack(event);
                let known_sites = self.sites.len();
                let site = self.sites.intern(event.header.pid, func, stack);
                self.table
                    .apply(event.header.pid, op, site, event.header.timestamp_ns);
                if self.sites.len() > known_sites {
                    Ingested::NewSite(stack)
                } else {
                    Ingested::Applied
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use leaktrace_common::{AllocEvent, EventHeader, MAX_STACK_DEPTH, ReleaseEvent};

    use super::*;

    fn bytes<T>(record: &T) -> Vec<u64> {
        // u64 storage keeps the 8-byte alignment the kernel guarantees.
        let mut words = vec![0u64; size_of::<T>().div_ceil(8)];
        // SAFETY: copying a plain-data record into a buffer at least as large.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (record as *const T).cast::<u8>(),
                words.as_mut_ptr().cast::<u8>(),
                size_of::<T>(),
            )
        };
        words
    }

    fn as_bytes(words: &[u64]) -> &[u8] {
        // SAFETY: viewing initialised u64s as bytes.
        unsafe { std::slice::from_raw_parts(words.as_ptr().cast(), words.len() * 8) }
    }

    fn malloc(addr: u64, size: u64, stack: &[u64]) -> AllocEvent {
        let mut event = AllocEvent {
            header: EventHeader {
                func: AllocFn::Malloc as u32,
                pid: 7,
                tid: 7,
                stack_len: stack.len() as u32,
                timestamp_ns: 1,
            },
            args: [size, 0, 0, 0],
            ret: addr,
            out: 0,
            stack: [0; MAX_STACK_DEPTH],
        };
        event.stack[..stack.len()].copy_from_slice(stack);
        event
    }

    #[test]
    fn records_flow_into_the_table_and_new_sites_are_announced() {
        let mut pipeline = Pipeline::default();
        let first = bytes(&malloc(0x1000, 10, &[0xa, 0xb]));
        assert!(matches!(
            pipeline.ingest(as_bytes(&first)),
            Ingested::NewSite(&[0xa, 0xb])
        ));
        let again = bytes(&malloc(0x2000, 10, &[0xa, 0xb]));
        assert!(matches!(
            pipeline.ingest(as_bytes(&again)),
            Ingested::Applied
        ));
        let free = ReleaseEvent {
            header: EventHeader {
                func: AllocFn::Free as u32,
                pid: 7,
                tid: 7,
                stack_len: 0,
                timestamp_ns: 2,
            },
            args: [0x1000, 0],
        };
        pipeline.ingest(as_bytes(&bytes(&free)));
        assert_eq!(pipeline.table.len(), 1);
        assert_eq!(pipeline.events, 3);
        pipeline.ingest(&[1, 2, 3]);
        assert_eq!(pipeline.decode_errors, 1);
    }
}
