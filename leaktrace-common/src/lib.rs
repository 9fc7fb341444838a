//! Records shared by the kernel programs and the userspace daemon.
//!
//! Everything here is `#[repr(C)]` with explicit padding so that both sides
//! agree on the byte layout without relying on the compiler: the kernel
//! writes these into the ring buffer and userspace decodes them from bytes.
#![no_std]

mod python;
mod settings;
mod unwinding;
pub use python::*;
pub use settings::*;
pub use unwinding::*;

/// How many user frames an allocation event carries. Frames beyond this are
/// cut, and the event says so (`stack_len == MAX_STACK_DEPTH`).
pub const MAX_STACK_DEPTH: usize = 64;

/// Which traced function a probe is attached to. The value travels as the
/// uprobe's attach cookie, so one kernel program serves every function.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AllocFn {
    Malloc = 1,
    Calloc = 2,
    Realloc = 3,
    Reallocarray = 4,
    PosixMemalign = 5,
    AlignedAlloc = 6,
    Memalign = 7,
    Valloc = 8,
    Pvalloc = 9,
    Free = 10,
    Mallocx = 11,
    Rallocx = 12,
    Xallocx = 13,
    Dallocx = 14,
    Sdallocx = 15,
    Mmap = 16,
    Munmap = 17,
    Mremap = 18,
    /// `CPython`'s object allocator (pymalloc), traced in exact object mode
    /// only: `PyObject_Malloc(size)` (2.7) or the static
    /// `_PyObject_Malloc(ctx, size)` behind the 3.6+ wrapper (the attach
    /// cookie then carries `COOKIE_SKIPS_CONTEXT`).
    PyObjectMalloc = 19,
    PyObjectCalloc = 20,
    PyObjectRealloc = 21,
    PyObjectFree = 22,
    /// Growth mode: the first write to an anonymous private page (a page
    /// fault that makes it resident): `args[0]` the page, `args[1]` its size.
    /// Any write fault of a traced process comes: userspace leaves out those
    /// in file mappings.
    PageFault = 23,
    // 24 and 25 were growth mode's brk and madvise, no longer sent: pages
    // given back are found in the page map by userspace.
    /// A Go program's heap as its runtime's own profile counts it (read
    /// from the process by userspace, never sent by the kernel): not in
    /// [`AllocFn::ALL`], which lists what can be probed or recorded.
    GoHeap = 26,
}

/// Bit of a uprobe's attach cookie above the `AllocFn`: the function takes
/// a context pointer first (3.6+'s `_PyObject_Malloc(ctx, size)`), so its
/// arguments start at the second register. The kernel reads them from
/// there and sends them as if the context were not there.
pub const COOKIE_SKIPS_CONTEXT: u64 = 1 << 32;

impl AllocFn {
    pub const ALL: [AllocFn; 23] = [
        AllocFn::Malloc,
        AllocFn::Calloc,
        AllocFn::Realloc,
        AllocFn::Reallocarray,
        AllocFn::PosixMemalign,
        AllocFn::AlignedAlloc,
        AllocFn::Memalign,
        AllocFn::Valloc,
        AllocFn::Pvalloc,
        AllocFn::Free,
        AllocFn::Mallocx,
        AllocFn::Rallocx,
        AllocFn::Xallocx,
        AllocFn::Dallocx,
        AllocFn::Sdallocx,
        AllocFn::Mmap,
        AllocFn::Munmap,
        AllocFn::Mremap,
        AllocFn::PyObjectMalloc,
        AllocFn::PyObjectCalloc,
        AllocFn::PyObjectRealloc,
        AllocFn::PyObjectFree,
        AllocFn::PageFault,
    ];

    pub fn from_u32(value: u32) -> Option<AllocFn> {
        AllocFn::ALL.into_iter().find(|f| *f as u32 == value)
    }

    /// The symbol the function is exported as.
    pub fn symbol(self) -> &'static str {
        match self {
            AllocFn::Malloc => "malloc",
            AllocFn::Calloc => "calloc",
            AllocFn::Realloc => "realloc",
            AllocFn::Reallocarray => "reallocarray",
            AllocFn::PosixMemalign => "posix_memalign",
            AllocFn::AlignedAlloc => "aligned_alloc",
            AllocFn::Memalign => "memalign",
            AllocFn::Valloc => "valloc",
            AllocFn::Pvalloc => "pvalloc",
            AllocFn::Free => "free",
            AllocFn::Mallocx => "mallocx",
            AllocFn::Rallocx => "rallocx",
            AllocFn::Xallocx => "xallocx",
            AllocFn::Dallocx => "dallocx",
            AllocFn::Sdallocx => "sdallocx",
            AllocFn::Mmap => "mmap",
            AllocFn::Munmap => "munmap",
            AllocFn::Mremap => "mremap",
            AllocFn::PyObjectMalloc => "PyObject_Malloc",
            AllocFn::PyObjectCalloc => "PyObject_Calloc",
            AllocFn::PyObjectRealloc => "PyObject_Realloc",
            AllocFn::PyObjectFree => "PyObject_Free",
            AllocFn::PageFault => "page_fault",
            AllocFn::GoHeap => "go-heap",
        }
    }

    /// Whether the function only releases memory: it needs no return probe
    /// and its event carries no stack.
    pub fn is_release(self) -> bool {
        matches!(
            self,
            AllocFn::Free
                | AllocFn::Dallocx
                | AllocFn::Sdallocx
                | AllocFn::Munmap
                | AllocFn::PyObjectFree
        )
    }

    /// Whether the record comes from growth mode's tracepoints (a page
    /// fault), not from a probed function.
    pub fn is_kernel_event(self) -> bool {
        matches!(self, AllocFn::PageFault)
    }

    /// Whether the function is `CPython`'s object allocator (exact object
    /// mode), not a C allocator.
    pub fn is_python_object(self) -> bool {
        matches!(
            self,
            AllocFn::PyObjectMalloc
                | AllocFn::PyObjectCalloc
                | AllocFn::PyObjectRealloc
                | AllocFn::PyObjectFree
        )
    }
}

/// Slots in the entry-to-return hand-off array (a power of two).
pub const STASH_SLOTS: u32 = 1 << 16;

/// Argument registers stashed at function entry, read back at return.
///
/// One slot per thread, at index `tid % STASH_SLOTS`: an array slot is a
/// load the verifier inlines, where a hash map costs a hashed lookup, an
/// insert and a delete per call. The slot records its thread; a thread
/// that finds another thread's call in flight in its slot takes the slot
/// and counts a collision (the other call's return then finds no entry and
/// is counted too), so a collision is never silent.
///
/// Calls the allocator makes into itself or into mmap (malloc mapping an
/// arena, reallocarray calling realloc) see the outer stash, bump `nested`
/// and are not reported: the outer call already accounts for the memory.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EntryStash {
    /// `AllocFn` of the outermost call in flight; 0 when the slot is free.
    pub func: u32,
    /// Calls into the allocator made by the outer call, still running.
    pub nested: u32,
    /// The thread whose call this is.
    pub tid: u32,
    /// 1 when the call's block is sampled (always, in exact mode).
    pub sampled: u32,
    /// User stack pointer at entry of the outer call. A call that starts at
    /// most 64 KiB below it is nested while the outer call is still in
    /// flight, which the word at `sp` tells: the kernel replaced the outer
    /// call's return address there with its uretprobe trampoline (the
    /// first, page-aligned, address of the `[uprobes]` page). A stash
    /// farther away, or whose return-address slot holds anything else (a
    /// later call's real return address), belongs to a call that never
    /// returned (thread unwound by longjmp, or killed and its id reused),
    /// and is replaced.
    pub sp: u64,
    pub args: [u64; 4],
}

/// What every ring-buffer record starts with.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EventHeader {
    /// `AllocFn` that produced the record.
    pub func: u32,
    /// Thread group id (the "pid" users see).
    pub pid: u32,
    pub tid: u32,
    /// Valid entries in `AllocEvent::stack`; 0 for release events.
    pub stack_len: u32,
    /// `CLOCK_MONOTONIC` (`bpf_ktime_get_ns`); 0 on release records, whose
    /// time nothing uses (it saves a clock read per free).
    pub timestamp_ns: u64,
}

/// A call that may have created memory: malloc family, mmap, mremap.
///
/// The kernel sends the raw argument registers and the return register; the
/// daemon's `ingest` stage interprets them per function (realloc's rules,
/// calloc's overflow, `MAP_FAILED`...). Keeping the semantics out of the kernel
/// keeps the probe cheap and the rules unit-testable.
///
/// On the wire the event is followed by `header.stack_len` return addresses
/// (u64, innermost first, captured at the call's return: the first one is
/// inside the function that called the allocator), then `python_frames`
/// pairs of words, and nothing more: a record is as long as its stacks.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct AllocEvent {
    pub header: EventHeader,
    /// The first four argument registers at entry (rdi, rsi, rdx, rcx).
    pub args: [u64; 4],
    /// The return register (rax).
    pub ret: u64,
    /// `posix_memalign` only: the pointer it stored through its out-pointer,
    /// read when it returned 0.
    pub out: u64,
    /// Bit i set: frame i was found by falling back to frame pointers (code
    /// without unwind rows) while unwinding with .`eh_frame` tables.
    pub fp_frames: u64,
    /// `FLAG_*` bits.
    pub flags: u64,
    /// Python frames that follow the native stack (`PYTHON_WALKED`): two
    /// words each, the code object's address and the raw position
    /// (`f_lasti`, or the instruction pointer), `PYTHON_ENTRY_BIT` marking
    /// the first frame of a native eval call.
    pub python_frames: u32,
    /// `PYTHON_*`: whether frames were walked, and if not, why.
    pub python_status: u32,
}

/// `AllocEvent::flags`: the block the call returned is sampled (always set
/// in exact mode). Without it the record only releases a sampled old block
/// (a realloc of a sampled block to an unsampled one).
pub const FLAG_SAMPLED: u64 = 1;

/// Exponentially distributed gaps between samples (bytes), drawn by
/// userspace with the configured mean: the kernel has no floating point.
pub const EXPONENTIAL_POOL: u32 = 4096;

/// Key of a sampled block, for filtering releases of unsampled blocks. The
/// map's value is the block's `CLOCK_MONOTONIC` time of entry (ns): the
/// daemon's sweep drops entries old enough to have reached it whose block
/// it does not hold (its record was lost, or dropped at the table's cap)
/// and those of processes that exited, so that neither stays for a free
/// that may never come, nor matches a reused pid.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SampledKey {
    pub pid: u32,
    pub _padding: u32,
    pub addr: u64,
}

/// Where the kernel builds an allocating record before sending the used
/// part of it (a per-CPU scratch slot).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AllocRecord {
    pub event: AllocEvent,
    /// The native stack, then the Python frames' word pairs.
    pub stack: [u64; RECORD_WORDS],
}

/// Words after an allocating record's fixed part: the native stack and
/// two per Python frame.
pub const RECORD_WORDS: usize = MAX_STACK_DEPTH + 2 * MAX_PYTHON_FRAMES;

/// A call that releases memory: free, dallocx, sdallocx, munmap.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ReleaseEvent {
    pub header: EventHeader,
    /// The first two argument registers: the block (or range start) and,
    /// for munmap and sdallocx, its length.
    pub args: [u64; 2],
}

/// `EventHeader::func` of a record saying that a traced process called
/// exec: every block it had is gone with its old address space.
pub const EXEC_EVENT: u32 = 100;

/// `EventHeader::func` of a record saying that a traced process exited
/// (its last thread): its table can go.
pub const EXIT_EVENT: u32 = 101;

/// `EventHeader::func` of a `ForkEvent`: a traced process created a new
/// process (not a thread).
pub const FORK_EVENT: u32 = 102;

/// A traced process forked: the header is the parent's (its tgid in
/// `pid`, the forking thread in `tid`, the fork's time), then the child.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ForkEvent {
    pub header: EventHeader,
    /// The new process's pid (its tgid: it is a process, not a thread).
    pub child_pid: u32,
    /// `FORK_*` bits.
    pub flags: u32,
}

/// `ForkEvent::flags`: the kernel added the child to its set of traced
/// processes, so its exec and exit are reported from the fork on. Without
/// it the set was full (4096 processes) and the child is not followed.
pub const FORK_TRACED: u32 = 1;

/// Indexes into the per-CPU loss counters the kernel keeps.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossCounter {
    /// An event could not be reserved: the ring buffer was full.
    RingBufferFull = 0,
    /// Two threads in flight in the same stash slot: the earlier call was
    /// displaced and goes unrecorded.
    EntrySlotCollision = 1,
    /// Never counted any more: stacks are walked by the programs themselves
    /// (frame pointers or unwind tables), which cannot fail as a whole. The
    /// slot stays so the reports' loss fields keep their meaning.
    StackCaptureFailed = 2,
    /// A return probe fired without its entry (call in flight at attach).
    ReturnWithoutEntry = 3,
    /// The map of sampled blocks was full: a sampled block went unrecorded.
    SampledMapFull = 4,
    /// An allocator call found its thread's stash still holding a call that
    /// never returned (the thread left it by longjmp, a signal handler's
    /// siglongjmp, or a C++ exception through it): that call goes
    /// unrecorded, and the new one takes the slot.
    AbandonedCall = 5,
    /// A record that releases a block (free, munmap, a realloc of a block)
    /// was lost, the ring buffer being full: the block stays outstanding in
    /// the daemon's table, overstating its figures. Also counted in
    /// `RingBufferFull`.
    ReleaseLost = 6,
}

pub const LOSS_COUNTERS: u32 = 7;

/// How to unwind one frame, from `pc` up to the next row's `pc`, in an
/// object's compact unwind table (built from .`eh_frame` by userspace, searched
/// by the eBPF unwinder). The return address is always at CFA - 8 (`x86_64`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindRow {
    /// First instruction the row covers: the object's ELF virtual address.
    pub pc: u32,
    /// CFA = (rsp or rbp, per `kind`) + `cfa_offset`.
    pub cfa_offset: i16,
    /// Where the caller's rbp was saved: CFA + `rbp_offset`; 0 when rbp still
    /// holds the caller's value (not saved yet, or never touched).
    pub rbp_offset: i16,
    /// One of the UNWIND_* kinds.
    pub kind: u8,
    pub _padding: [u8; 3],
}

/// No unwind information covers this pc (a gap between FDEs, or a rule the
/// table cannot express): the unwinder falls back to frame pointers.
pub const UNWIND_NONE: u8 = 0;
/// CFA = rsp + `cfa_offset`.
pub const UNWIND_CFA_RSP: u8 = 1;
/// CFA = rbp + `cfa_offset`.
pub const UNWIND_CFA_RBP: u8 = 2;
/// The return address is undefined here: the outermost frame (_start, clone's thread start). Stop.
pub const UNWIND_OUTERMOST: u8 = 3;
/// A PLT stub: CFA = rsp + 8, plus 8 when (pc & 15) >= 11 (the standard .plt CFA expression).
pub const UNWIND_PLT: u8 = 4;

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data with explicit layout and no padding holes that
    // could leak uninitialised bytes (all fields are u32/u64, sized in pairs).
    unsafe impl aya::Pod for super::EntryStash {}
    // SAFETY: 12 bytes (u32, 2 x i16, u8, [u8; 3]): explicit padding, no holes.
    unsafe impl aya::Pod for super::UnwindRow {}
    // SAFETY: as above; u64/u32 fields only, explicit padding.
    unsafe impl aya::Pod for super::UnwindMapping {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ProcessMappings {}
    // SAFETY: u32, u32, u64: no holes.
    unsafe impl aya::Pod for super::SampledKey {}
    // SAFETY: ten u32 (the last explicit padding), then a u64: 48 bytes,
    // no holes.
    unsafe impl aya::Pod for super::Settings {}
    // SAFETY: a u64 then fourteen u32 (the last explicit padding): 64
    // bytes, no holes.
    unsafe impl aya::Pod for super::PythonProcess {}
}
