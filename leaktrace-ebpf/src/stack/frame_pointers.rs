//! Stack walking by frame pointers: the cheapest walk there is, complete
//! in code built with frame pointers (Go, C built with
//! -fno-omit-frame-pointer). In code without them (Debian's libc, most Rust
//! binaries) it stops early or follows garbage: `dwarf` is the walk for
//! those.
use core::ffi::c_void;

use aya_ebpf::helpers::{bpf_probe_read_user, generated::bpf_loop};
use leaktrace_common::MAX_STACK_DEPTH;

use crate::maps::SCRATCH;

/// A frame record as frame-pointer code lays it out: saved rbp, then the
/// return address.
#[repr(C)]
struct FrameRecord {
    next_frame: u64,
    return_address: u64,
}

/// The walk's state, handed to each `bpf_loop` step.
#[repr(C)]
struct FrameWalk {
    /// The frame pointer of the next frame to read; 0 at the end.
    frame: u64,
    /// Return addresses written so far.
    depth: u64,
}

/// One frame: reads its record, writes its return address, moves out. 0
/// continues the loop, 1 stops it.
extern "C" fn step(_index: u64, context: *mut c_void) -> i64 {
    // SAFETY: bpf_loop hands back the FrameWalk it was given.
    let walk = unsafe { &mut *context.cast::<FrameWalk>() };
    let depth = walk.depth as usize;
    if walk.frame == 0 || depth >= MAX_STACK_DEPTH {
        return 1;
    }
    let Some(record) = SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: bpf_probe_read_user checks the user address.
    let Ok(frame) = (unsafe { bpf_probe_read_user(walk.frame as *const FrameRecord) }) else {
        return 1;
    };
    if frame.return_address == 0 {
        return 1;
    }
    // SAFETY: this CPU's scratch record; `depth` was checked above.
    unsafe { (*record).stack[depth] = frame.return_address };
    walk.depth += 1;
    if frame.next_frame <= walk.frame {
        return 1;
    }
    walk.frame = frame.next_frame;
    0
}

/// Fills the scratch record's stack with return addresses, innermost
/// first, and returns how many. Called at the allocator's return, where
/// rip is the return address into the caller and rbp the caller's frame.
///
/// Frame pointers are followed here, one user read per frame, rather than
/// with `bpf_get_stack`: the perf callchain machinery behind that helper cost
/// ~0.75 µs a call here, several times this loop. The walk stops at a null
/// or non-increasing frame pointer (the outermost frame, or code without
/// frame pointers) or an unreadable frame. A frame walk that finds nothing
/// past rip is normal for code without frame pointers, not a failure. The
/// frames are stepped in a `bpf_loop`, so the verifier checks one step, not
/// every depth (with the Python walk after it, an unrolled loop exceeded the
/// verifier's budget).
/// `ip` and `frame` are the thread's user rip and rbp.
#[inline(always)]
pub(crate) fn walk(ip: u64, frame: u64) -> u32 {
    let Some(record) = SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's scratch record.
    unsafe { (*record).stack[0] = ip };
    let mut walk = FrameWalk { frame, depth: 1 };
    // SAFETY: the callback and its context live for the call.
    unsafe {
        bpf_loop(
            (MAX_STACK_DEPTH - 1) as u32,
            step as *mut c_void,
            (&raw mut walk).cast(),
            0,
        )
    };
    walk.depth as u32
}
