//! `CPython` frames at an allocation: the code object and instruction
//! position of each Python frame the allocating thread is running, read
//! from the process's memory at the allocator's return.
//!
//! Userspace writes, per Python process, where its thread state is found
//! and the offsets of the fields on the way (`PythonProcess`, chosen by the
//! interpreter's version). The walk sends frames only when the thread state
//! is the allocating thread's own: the GIL holder's `thread_id` is its
//! `pthread_self()`, which on x86-64 is the FS base the kernel keeps for
//! each thread. Allocations by a thread that does not hold the GIL carry
//! native frames only: never another thread's Python stack.
use core::ffi::c_void;

use aya_ebpf::{
    helpers::{
        bpf_get_current_task, bpf_probe_read_kernel, bpf_probe_read_user, generated::bpf_loop,
    },
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use leaktrace_common::{
    CHAIN_CFRAME, ENTRY_IS_ENTRY, ENTRY_OWNER, MAX_PYTHON_FRAMES, MAX_STACK_DEPTH,
    PYTHON_ENTRY_BIT, PYTHON_NONE, PYTHON_OTHER_THREAD, PYTHON_READ_FAILED, PYTHON_WALKED,
    PythonProcess, RECORD_WORDS, TSTATE_GIL_LAST_HOLDER,
};

use crate::{maps::SCRATCH, settings};

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

/// The current thread's `pthread_self()`: its FS base, from its
/// `task_struct` at the offset userspace read from BTF.
#[inline(always)]
fn pthread_self(fsbase_offset: u32) -> Option<u64> {
    // SAFETY: the helper returns the current task's address.
    let task = unsafe { bpf_get_current_task() };
    // SAFETY: bpf_probe_read_kernel checks the address; the offset is the
    // kernel's own (BTF).
    unsafe { bpf_probe_read_kernel((task + u64::from(fsbase_offset)) as *const u64) }.ok()
}

/// The thread state of the thread holding the GIL, when it is this thread.
#[inline(always)]
fn own_thread_state(process: &PythonProcess) -> Result<u64, u32> {
    let fsbase_offset = settings::task_fsbase_offset();
    if fsbase_offset == 0 {
        return Err(PYTHON_NONE);
    }
    let mut tstate = user_u64(process.tstate_address, 0).ok_or(PYTHON_READ_FAILED)?;
    if process.tstate_source == TSTATE_GIL_LAST_HOLDER && tstate != 0 {
        tstate = user_u64(tstate, process.interp_gil_last_holder).ok_or(PYTHON_READ_FAILED)?;
    }
    if tstate == 0 {
        // Nobody holds the GIL (or the interpreter is not up yet).
        return Err(PYTHON_OTHER_THREAD);
    }
    let holder = user_u64(tstate, process.tstate_thread_id).ok_or(PYTHON_READ_FAILED)?;
    let this = pthread_self(fsbase_offset).ok_or(PYTHON_READ_FAILED)?;
    if holder == this {
        Ok(tstate)
    } else {
        Err(PYTHON_OTHER_THREAD)
    }
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
    let tstate = match own_thread_state(&process) {
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
