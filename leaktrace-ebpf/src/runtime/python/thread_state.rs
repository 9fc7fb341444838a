//! The allocating thread's own `CPython` thread state: the one whose
//! `thread_id` (`pthread_self()`) is the thread's FS base.
//!
//! Why not simply the GIL holder's: a thread that released the GIL (C code
//! between `Py_BEGIN_ALLOW_THREADS` and `Py_END_ALLOW_THREADS`: numpy,
//! matplotlib's renderer, I/O, ctypes calls) still has its Python frames
//! below that C code, and its allocations belong to the Python line that
//! called it. So, cheapest first:
//!
//! 1. the GIL holder's thread state (2.7/3.6 `_PyThreadState_Current`,
//!    3.7–3.11 `gilstate.tstate_current`, 3.12+ the GIL's last holder),
//!    when it is this thread's: a thread running Python holds the GIL;
//! 2. the thread state found for this thread before (`THREAD_STATES`), when
//!    it still carries this thread's id: thread states are freed and their
//!    memory reused, so the cache is a guess that each use checks; a thread
//!    found to have none is cached too, until its interpreter's newest
//!    thread state changes (a new one goes to the head of the list);
//! 3. a search of every interpreter's thread list (`bpf_loop`, at most
//!    `MAX_THREAD_SEARCH` steps), whose result is cached.
//!
//! A thread with no thread state (a pure C thread) gets
//! `PYTHON_NO_THREAD_STATE`: never another thread's Python stack.
use core::ffi::c_void;

use aya_ebpf::{
    helpers::{bpf_get_current_task, bpf_probe_read_kernel, generated::bpf_loop},
    macros::map,
    maps::{LruHashMap, PerCpuArray},
};
use leaktrace_common::{
    MAX_THREAD_SEARCH, PYTHON_NO_THREAD_STATE, PYTHON_NONE, PYTHON_READ_FAILED, PYTHON_UNRESOLVED,
    PythonProcess, TSTATE_GIL_LAST_HOLDER,
};

use super::user_u64;
use crate::settings;

/// What was found for a thread (by `pid_tgid`) the last time it was looked
/// for.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct KnownThreadState {
    /// Its thread state; 0 when it had none.
    tstate: u64,
    /// With `tstate` 0: the first interpreter's newest thread state then.
    head: u64,
}

/// Threads' own thread states, by `pid_tgid`. LRU: threads that are gone
/// make room by themselves.
#[map]
static THREAD_STATES: LruHashMap<u64, KnownThreadState> = LruHashMap::with_max_entries(16384, 0);

/// This CPU's search in progress (see `Search`).
#[map]
static SEARCH: PerCpuArray<Search> = PerCpuArray::with_max_entries(1, 0);

/// `Search::state`.
const SEARCHING: u32 = 0;
const FOUND: u32 = 1;
const EXHAUSTED: u32 = 2;
const FAILED: u32 = 3;

/// The list search's state, in a per-CPU map rather than on the stack (as
/// the frame walk's): the verifier checks one step with unknown values,
/// not every iteration.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Search {
    /// The next interpreter whose list to search; 0 after the last.
    interp: u64,
    /// The next thread state to check; 0 at the end of a list.
    tstate: u64,
    /// The thread's `pthread_self()`.
    this: u64,
    interp_next: u32,
    interp_tstate_head: u32,
    tstate_next: u32,
    tstate_thread_id: u32,
    /// `SEARCHING`, `FOUND` (then `tstate` is it), `EXHAUSTED`, `FAILED`.
    state: u32,
    _padding: u32,
}

/// One step: checks a thread state and moves along its list, or enters the
/// next interpreter's list. 0 continues the loop, 1 stops it.
extern "C" fn search_step(_index: u64, _context: *mut c_void) -> i64 {
    let Some(search) = SEARCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's slot; programs on one CPU do not preempt each other.
    let search = unsafe { &mut *search };
    if search.tstate == 0 {
        if search.interp == 0 {
            search.state = EXHAUSTED;
            return 1;
        }
        let head = user_u64(search.interp, search.interp_tstate_head);
        let next = user_u64(search.interp, search.interp_next);
        let (Some(head), Some(next)) = (head, next) else {
            search.state = FAILED;
            return 1;
        };
        search.tstate = head;
        search.interp = next;
        return 0;
    }
    let id = user_u64(search.tstate, search.tstate_thread_id);
    let next = user_u64(search.tstate, search.tstate_next);
    let (Some(id), Some(next)) = (id, next) else {
        search.state = FAILED;
        return 1;
    };
    if id == search.this {
        search.state = FOUND;
        return 1;
    }
    search.tstate = next;
    0
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

/// The thread state of the thread holding the GIL (the last one to take it
/// from 3.12 on); 0 when nobody does.
#[inline(always)]
fn gil_holder(process: &PythonProcess) -> Result<u64, u32> {
    let tstate = user_u64(process.tstate_address, 0).ok_or(PYTHON_READ_FAILED)?;
    if process.tstate_source == TSTATE_GIL_LAST_HOLDER && tstate != 0 {
        return user_u64(tstate, process.interp_gil_last_holder).ok_or(PYTHON_READ_FAILED);
    }
    Ok(tstate)
}

/// The first interpreter: from the process's own list head, else (2.7/3.6
/// builds without `interp_head`) the GIL holder's; 0 when unknown.
#[inline(always)]
fn first_interpreter(process: &PythonProcess, holder: u64) -> Result<u64, u32> {
    if process.interp_address != 0 {
        return user_u64(process.interp_address, 0).ok_or(PYTHON_READ_FAILED);
    }
    if holder == 0 {
        return Ok(0);
    }
    user_u64(holder, process.tstate_interp).ok_or(PYTHON_READ_FAILED)
}

/// Whether `tstate` carries the id `this`.
#[inline(always)]
fn is_thread(process: &PythonProcess, tstate: u64, this: u64) -> bool {
    tstate != 0 && user_u64(tstate, process.tstate_thread_id) == Some(this)
}

/// The allocating thread's own thread state, or why there is none to walk
/// (`PYTHON_*`).
#[inline(always)]
pub(super) fn own(process: &PythonProcess, pid_tgid: u64) -> Result<u64, u32> {
    let fsbase_offset = settings::task_fsbase_offset();
    if fsbase_offset == 0 {
        return Err(PYTHON_NONE);
    }
    let this = pthread_self(fsbase_offset).ok_or(PYTHON_READ_FAILED)?;
    let holder = gil_holder(process)?;
    if is_thread(process, holder, this) {
        return Ok(holder);
    }
    // SAFETY: a map value, copied out at once.
    let known = unsafe { THREAD_STATES.get(pid_tgid) }.copied();
    if let Some(known) = known
        && is_thread(process, known.tstate, this)
    {
        return Ok(known.tstate);
    }
    let interp = first_interpreter(process, holder)?;
    if interp == 0 {
        return Err(PYTHON_UNRESOLVED);
    }
    let head = user_u64(interp, process.interp_tstate_head).ok_or(PYTHON_READ_FAILED)?;
    if let Some(known) = known
        && known.tstate == 0
        && known.head == head
        && !is_thread(process, head, this)
    {
        // No thread state then, and none added since.
        return Err(PYTHON_NO_THREAD_STATE);
    }
    let next = user_u64(interp, process.interp_next).ok_or(PYTHON_READ_FAILED)?;
    let Some(search) = SEARCH.get_ptr_mut(0) else {
        return Err(PYTHON_NONE);
    };
    // SAFETY: this CPU's slot; programs on one CPU do not preempt each other.
    unsafe {
        *search = Search {
            interp: next,
            tstate: head,
            this,
            interp_next: process.interp_next,
            interp_tstate_head: process.interp_tstate_head,
            tstate_next: process.tstate_next,
            tstate_thread_id: process.tstate_thread_id,
            state: SEARCHING,
            _padding: 0,
        };
    }
    // SAFETY: the callback lives for the call; it needs no context.
    unsafe {
        bpf_loop(
            MAX_THREAD_SEARCH,
            search_step as *mut c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    // SAFETY: as above.
    let search = unsafe { &*search };
    let (found, result) = match search.state {
        FOUND => (search.tstate, Ok(search.tstate)),
        EXHAUSTED => (0, Err(PYTHON_NO_THREAD_STATE)),
        FAILED => return Err(PYTHON_READ_FAILED),
        _ => return Err(PYTHON_UNRESOLVED),
    };
    let known = KnownThreadState {
        tstate: found,
        head,
    };
    // A full map evicts its least recently used entry; an error only costs
    // the next allocation another search.
    let _: Result<(), i32> = THREAD_STATES.insert(pid_tgid, known, 0);
    result
}
