//! `CPython` frames at an allocation: the code object and instruction
//! position of each Python frame the allocating thread is running, read
//! from the process's memory at the allocator's return.
//!
//! Userspace writes, per Python process, where its thread states are found
//! and the offsets of the fields on the way (`PythonProcess`, chosen by the
//! interpreter's version). The walk starts from the allocating thread's own
//! thread state (`thread_state`): whether it holds the GIL or released it
//! around C code, its allocations carry its own Python frames, never
//! another thread's; a thread without one carries native frames only.
use core::ffi::c_void;

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user, generated::bpf_loop},
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use leaktrace_common::{
    CHAIN_CFRAME, ENTRY_IS_ENTRY, ENTRY_OWNER, MAX_PYTHON_FRAMES, MAX_STACK_DEPTH,
    PYTHON_ENTRY_BIT, PYTHON_NONE, PYTHON_READ_FAILED, PYTHON_WALKED, PythonProcess, RECORD_WORDS,
};

use crate::maps::SCRATCH;

mod thread_state;

/// This CPU's walk in progress (see `PythonWalk`).
#[map]
static WALK: PerCpuArray<PythonWalk> = PerCpuArray::with_max_entries(1, 0);

/// The Python processes being traced and how to walk them, by pid.
#[map]
pub(crate) static PYTHON_PROCESSES: HashMap<u32, PythonProcess> =
    HashMap::with_max_entries(4096, 0);

/// Stops walking a process's frames (it exec'd: its interpreter, if any,
/// is elsewhere now) until userspace says how to walk its new image. Done
/// here, at the exec itself, rather than when the daemon reads the exec
/// record, which may come after the daemon has already registered the new
/// image (a child that exec'd before it was followed).
#[inline(always)]
pub(crate) fn forget_process(pid: u32) {
    let _: Result<_, _> = PYTHON_PROCESSES.remove(pid);
}

/// A word of user memory at `address + offset`; None when unreadable.
#[inline(always)]
fn user_u64(address: u64, offset: u32) -> Option<u64> {
    // SAFETY: bpf_probe_read_user checks the user address; a bad one is an
    // error, never a fault.
    unsafe { bpf_probe_read_user((address + u64::from(offset)) as *const u64) }.ok()
}

/// An int of user memory at `address + offset`.
#[inline(always)]
fn user_i32(address: u64, offset: u32) -> Option<i32> {
    // SAFETY: as `user_u64`.
    unsafe { bpf_probe_read_user((address + u64::from(offset)) as *const i32) }.ok()
}

/// A byte of user memory at `address + offset`.
#[inline(always)]
fn user_u8(address: u64, offset: u32) -> Option<u8> {
    // SAFETY: as `user_u64`.
    unsafe { bpf_probe_read_user((address + u64::from(offset)) as *const u8) }.ok()
}

const _: () = assert!(RECORD_WORDS.is_power_of_two());

/// Indexes into the record's words are masked as well as checked: the
/// verifier bounds each access from the mask (`RECORD_WORDS` is a power of
/// two), not from an earlier comparison.
const MASK: usize = RECORD_WORDS - 1;

/// The walk's state, in a per-CPU map rather than on the stack: the
/// verifier then sees its counters as unknown values in each step and
/// checks the step once, where counters on the stack, known exactly, made
/// it check every count (past its budget after a frame-pointer walk).
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct PythonWalk {
    process: PythonProcess,
    /// The next frame to read; 0 at the end of the chain.
    frame: u64,
    /// Index in the record's words of the next pair.
    next: u64,
    /// Frames sent so far.
    sent: u32,
    /// `PYTHON_*`.
    status: u32,
}

/// One frame of the chain: sends it (or skips a shim), moves outwards. 0
/// continues the loop, 1 stops it.
extern "C" fn step(_index: u64, _context: *mut c_void) -> i64 {
    let Some(walk) = WALK.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's slot; programs on one CPU do not preempt each other.
    let walk = unsafe { &mut *walk };
    let frame = walk.frame;
    if frame == 0 || walk.sent as usize >= MAX_PYTHON_FRAMES {
        return 1;
    }
    let Some(record) = SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    let process = &walk.process;
    let Some(back) = user_u64(frame, process.frame_back) else {
        walk.status = PYTHON_READ_FAILED;
        return 1;
    };
    if process.entry_marker == ENTRY_OWNER {
        let Some(owner) = user_u8(frame, process.frame_entry) else {
            walk.status = PYTHON_READ_FAILED;
            return 1;
        };
        if u32::from(owner) == process.entry_owner {
            // A C-stack shim: the frame sent before it (innermost side) was
            // the first its native eval call ran.
            if walk.sent > 0 {
                let index = (walk.next as usize).wrapping_sub(1) & MASK;
                // SAFETY: this CPU's scratch record; the mask keeps the
                // index in bounds.
                unsafe { (*record).stack[index] |= PYTHON_ENTRY_BIT };
            }
            walk.frame = back;
            return 0;
        }
    }
    let Some(code) = user_u64(frame, process.frame_code) else {
        walk.status = PYTHON_READ_FAILED;
        return 1;
    };
    // An int position travels as its 32 bits (-1, before the first
    // instruction, is 0xffff_ffff): bit 63 stays free for the marker.
    let position = if process.lasti_is_int != 0 {
        user_i32(frame, process.frame_lasti).map(|lasti| u64::from(lasti as u32))
    } else {
        user_u64(frame, process.frame_lasti)
    };
    let Some(position) = position else {
        walk.status = PYTHON_READ_FAILED;
        return 1;
    };
    let entry = process.entry_marker == ENTRY_IS_ENTRY
        && user_u8(frame, process.frame_entry).is_some_and(|byte| byte != 0);
    let marker = if entry { PYTHON_ENTRY_BIT } else { 0 };
    let index = walk.next as usize;
    if index + 1 >= RECORD_WORDS {
        return 1;
    }
    // SAFETY: this CPU's scratch record; both indexes are below
    // RECORD_WORDS.
    unsafe {
        (*record).stack[index & MASK] = code;
        (*record).stack[(index + 1) & MASK] = (position & !PYTHON_ENTRY_BIT) | marker;
    }
    walk.sent += 1;
    walk.next += 2;
    walk.frame = back;
    0
}

/// Appends the allocating thread's Python frames to the scratch record's
/// words after its `native` return addresses. Returns (frames, `PYTHON_*`
/// status).
#[inline(always)]
pub(crate) fn capture(pid: u32, native: u32) -> (u32, u32) {
    // SAFETY: a map value, copied out at once.
    let Some(process) = (unsafe { PYTHON_PROCESSES.get(pid) }).copied() else {
        return (0, PYTHON_NONE);
    };
    let tstate = match thread_state::own(&process, bpf_get_current_pid_tgid()) {
        Ok(tstate) => tstate,
        Err(status) => return (0, status),
    };
    let Some(mut frame) = user_u64(tstate, process.tstate_frame) else {
        return (0, PYTHON_READ_FAILED);
    };
    if process.frame_chain == CHAIN_CFRAME && frame != 0 {
        match user_u64(frame, process.cframe_current_frame) {
            Some(current) => frame = current,
            None => return (0, PYTHON_READ_FAILED),
        }
    }
    let Some(walk) = WALK.get_ptr_mut(0) else {
        return (0, PYTHON_NONE);
    };
    // SAFETY: this CPU's slot; programs on one CPU do not preempt each other.
    unsafe {
        *walk = PythonWalk {
            process,
            frame,
            next: u64::from(native.min(MAX_STACK_DEPTH as u32)),
            sent: 0,
            status: PYTHON_WALKED,
        };
    }
    // At most MAX_PYTHON_FRAMES frames are sent, and as many shims skipped.
    // SAFETY: the callback lives for the call; it needs no context.
    unsafe {
        bpf_loop(
            (2 * MAX_PYTHON_FRAMES) as u32,
            step as *mut c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    // SAFETY: as above.
    let walk = unsafe { &*walk };
    (walk.sent, walk.status)
}
