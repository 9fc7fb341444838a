//! Records as the kernel writes them, built in userspace: the unit tests and
//! the ingest benchmark feed the daemon with these instead of a kernel.
//! Compiled for tests and under the `bench` feature only.
use leaktrace_common::{AllocEvent, AllocFn, EventHeader, ReleaseEvent};

/// Encodes an allocating record as the kernel sends it (tests, benchmarks).
/// u64 storage keeps the 8-byte alignment the ring buffer guarantees.
/// `python` holds the Python frames' word pairs.
pub fn encode_alloc(event: &AllocEvent, stack: &[u64], python: &[u64]) -> Vec<u64> {
    let mut event = *event;
    event.header.stack_len = stack.len() as u32;
    event.python_frames = (python.len() / 2) as u32;
    let mut words = vec![0u64; size_of::<AllocEvent>() / 8];
    // SAFETY: AllocEvent is plain data whose size is a multiple of 8.
    unsafe {
        std::ptr::copy_nonoverlapping(
            (&raw const event).cast::<u8>(),
            words.as_mut_ptr().cast::<u8>(),
            size_of::<AllocEvent>(),
        );
    };
    words.extend_from_slice(stack);
    words.extend_from_slice(python);
    words
}

/// Encodes a release record as the kernel sends it.
pub fn encode_release(event: &ReleaseEvent) -> Vec<u64> {
    let mut words = vec![0u64; size_of::<ReleaseEvent>() / 8];
    // SAFETY: ReleaseEvent is plain data whose size is a multiple of 8.
    unsafe {
        std::ptr::copy_nonoverlapping(
            std::ptr::from_ref::<ReleaseEvent>(event).cast::<u8>(),
            words.as_mut_ptr().cast::<u8>(),
            size_of::<ReleaseEvent>(),
        );
    };
    words
}

/// A sampled `malloc(size)` by `pid` that returned `addr` at
/// `timestamp_ns`, with `stack`, as the kernel sends it (tests, benchmarks).
pub fn malloc_record(pid: u32, addr: u64, size: u64, stack: &[u64], timestamp_ns: u64) -> Vec<u64> {
    let event = AllocEvent {
        header: EventHeader {
            func: AllocFn::Malloc as u32,
            pid,
            tid: pid,
            stack_len: 0,
            timestamp_ns,
        },
        args: [size, 0, 0, 0],
        ret: addr,
        out: 0,
        fp_frames: 0,
        flags: leaktrace_common::FLAG_SAMPLED,
        python_frames: 0,
        python_status: 0,
    };
    encode_alloc(&event, stack, &[])
}

/// A `free(addr)` by `pid`, as the kernel sends it (tests, benchmarks).
pub fn free_record(pid: u32, addr: u64) -> Vec<u64> {
    release_record(AllocFn::Free, pid, addr)
}

/// A release of `addr` by `pid` through `func`, as the kernel sends it.
pub fn release_record(func: AllocFn, pid: u32, addr: u64) -> Vec<u64> {
    encode_release(&ReleaseEvent {
        header: EventHeader {
            func: func as u32,
            pid,
            tid: pid,
            stack_len: 0,
            timestamp_ns: 0,
        },
        args: [addr, 0],
    })
}

/// Views encoded words as the bytes the ring buffer hands over.
pub fn as_bytes(words: &[u64]) -> &[u8] {
    // SAFETY: viewing initialised u64s as bytes.
    unsafe { std::slice::from_raw_parts(words.as_ptr().cast(), words.len() * 8) }
}
