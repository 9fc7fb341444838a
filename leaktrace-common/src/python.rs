//! What the kernel needs to walk a `CPython` process's frames at an
//! allocation, written per process by userspace (which found the
//! interpreter, read its version and chose the layout for it).
//!
//! The walk: find the allocating thread's own thread state (the one whose
//! `thread_id`, `pthread_self()`, is the thread's FS base): the GIL holder's
//! when that is this thread (the common case, one read), else the one
//! cached for this thread if it still says so, else the one found by
//! walking the interpreters' thread lists. Then follow its frame chain from
//! the innermost frame, sending per Python frame its code object's address
//! and its raw instruction position. Userspace reads the code objects and
//! turns positions into lines. Everything is read with
//! `bpf_probe_read_user`: a bad pointer ends the walk, it never harms the
//! process.

/// Python frames an allocation record carries at most (innermost first).
pub const MAX_PYTHON_FRAMES: usize = 32;

/// Steps of the search for a thread's own thread state: one per thread
/// state checked and one per interpreter entered. A process with more
/// Python threads than this gets `PYTHON_UNRESOLVED` for the threads the
/// search does not reach (those that started first: lists are newest
/// first).
pub const MAX_THREAD_SEARCH: u32 = 256;

/// `PythonProcess::tstate_source` (where the GIL holder, the walk's first
/// guess, is found): `tstate_address` holds the thread state pointer
/// itself (2.7/3.6 `_PyThreadState_Current`, 3.7–3.11
/// `_PyRuntime.gilstate.tstate_current`).
pub const TSTATE_DIRECT: u32 = 1;
/// `tstate_address` holds the main interpreter's address; the thread state
/// is the GIL's last holder at `interp_gil_last_holder` inside it (3.12+).
pub const TSTATE_GIL_LAST_HOLDER: u32 = 2;

/// `PythonProcess::frame_chain`: `tstate_frame` points at a
/// `PyFrameObject` (≤3.10).
pub const CHAIN_FRAME_OBJECT: u32 = 1;
/// `tstate_frame` points at a `_PyCFrame` whose `current_frame` is the
/// innermost `_PyInterpreterFrame` (3.11, 3.12).
pub const CHAIN_CFRAME: u32 = 2;
/// `tstate_frame` is the innermost `_PyInterpreterFrame` (3.13).
pub const CHAIN_CURRENT_FRAME: u32 = 3;

/// `PythonProcess::entry_marker`: none (≤3.10: one native eval call per
/// Python frame).
pub const ENTRY_NONE: u32 = 0;
/// 3.11: the byte at `frame_entry` (`is_entry`) is nonzero on the first
/// frame each native eval call ran.
pub const ENTRY_IS_ENTRY: u32 = 1;
/// 3.12+: a shim frame whose byte at `frame_entry` (`owner`) equals
/// `entry_owner` starts each native eval call; it is skipped and the frame
/// before it (innermost side) is marked.
pub const ENTRY_OWNER: u32 = 2;

/// Bit 63 of a frame's position word: this frame is the first one its
/// native eval call ran (3.11+), so the next frame outwards belongs to the
/// next native `_PyEval_EvalFrameDefault` frame.
pub const PYTHON_ENTRY_BIT: u64 = 1 << 63;

/// `AllocEvent::python_status`: the process is not a traced Python process
/// (or its layout is unknown).
pub const PYTHON_NONE: u32 = 0;
/// Frames were walked: `python_frames` of them follow the native stack
/// (none when the thread state runs no Python code at the moment).
pub const PYTHON_WALKED: u32 = 1;
/// The allocating thread has no thread state in any interpreter of the
/// process: a thread Python never ran on (C code's own threads), or the
/// interpreter is not up yet. Native frames only, by design.
pub const PYTHON_NO_THREAD_STATE: u32 = 2;
/// A read failed on the way (the thread state or a frame); what was read
/// before it is sent.
pub const PYTHON_READ_FAILED: u32 = 3;
/// The thread's own thread state could not be looked for: the
/// interpreters are not known (2.7/3.6 builds without `interp_head`, at a
/// moment no thread holds the GIL), or the thread lists are longer than
/// `MAX_THREAD_SEARCH`. Native frames only.
pub const PYTHON_UNRESOLVED: u32 = 4;
/// `python_status` values, for arrays indexed by them.
pub const PYTHON_STATUSES: usize = 5;

/// Per-process walking instructions (a map value keyed by pid).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PythonProcess {
    /// Address, in the process, of the word the GIL holder is found from
    /// (see `tstate_source`).
    pub tstate_address: u64,
    /// Address of the word that points to the first interpreter
    /// (`interp_head` in 2.7/3.6, `_PyRuntime.interpreters.head` from
    /// 3.7); 0 when unknown: then the GIL holder's `tstate_interp`.
    pub interp_address: u64,
    /// `TSTATE_*`.
    pub tstate_source: u32,
    /// 3.12+: offset of the GIL's last holder in the interpreter.
    pub interp_gil_last_holder: u32,
    /// `PyInterpreterState.next`.
    pub interp_next: u32,
    /// `PyInterpreterState.tstate_head` (≤3.10) / `.threads.head` (3.11+):
    /// its thread states, newest first.
    pub interp_tstate_head: u32,
    /// `PyThreadState.next`.
    pub tstate_next: u32,
    /// `PyThreadState.interp`.
    pub tstate_interp: u32,
    /// `PyThreadState.thread_id` (`pthread_self()`).
    pub tstate_thread_id: u32,
    /// `PyThreadState.frame` / `.cframe` / `.current_frame`.
    pub tstate_frame: u32,
    /// `CHAIN_*`.
    pub frame_chain: u32,
    /// `_PyCFrame.current_frame` (3.11, 3.12).
    pub cframe_current_frame: u32,
    /// `f_back` / `previous`.
    pub frame_back: u32,
    /// `f_code` / `f_executable`.
    pub frame_code: u32,
    /// `f_lasti` (an int, ≤3.10) / `prev_instr` / `instr_ptr` (pointers).
    pub frame_lasti: u32,
    /// 1 when `frame_lasti` is a 4-byte int, 0 when it is a pointer.
    pub lasti_is_int: u32,
    /// `ENTRY_*`.
    pub entry_marker: u32,
    /// `is_entry` (3.11) / `owner` (3.12+): one byte.
    pub frame_entry: u32,
    /// `FRAME_OWNED_BY_CSTACK` for `ENTRY_OWNER`.
    pub entry_owner: u32,
    pub _padding: u32,
}

// Both sides must agree on the layout byte for byte (no hidden padding:
// 2 words and 18 ints, the last one `_padding`).
const _: () = assert!(size_of::<PythonProcess>() == 88);
