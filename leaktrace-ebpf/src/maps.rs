//! The maps several programs share, and the small accessors around them:
//! the ring buffer every record leaves by, the loss counters, the per-thread
//! stash that hands a call's arguments from its entry to its return, and
//! the per-CPU scratch record that the return probe and the stack walkers
//! fill. Maps with a single user live next to it.
use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, pt_regs},
    macros::map,
    maps::{Array, PerCpuArray, RingBuf},
};
use leaktrace_common::{
    AllocRecord, EntryStash, EventHeader, LOSS_COUNTERS, LossCounter, STASH_SLOTS,
};

/// Events to userspace. The size is set by the loader (`--ring-buffer-mib`).
#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(16 * 1024 * 1024, 0);

/// Wake the daemon only once this much is waiting. By default the kernel
/// wakes the consumer on every record it has caught up to, which for a
/// daemon that keeps up means on every record: an `irq_work` and a thread
/// wakeup per malloc, more than the rest of the probe costs. The daemon
/// also drains on a short timer, so nothing waits long below the mark.
const WAKEUP_BYTES: u64 = 256 * 1024;

/// Flags for `EVENTS.output` on the allocator's hot path (see `WAKEUP_BYTES`).
#[inline(always)]
pub(crate) fn submit_flags() -> u64 {
    if EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) >= WAKEUP_BYTES {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    }
}

/// The header of a record from this thread.
#[inline(always)]
pub(crate) fn header(func: u32, pid_tgid: u64, timestamp_ns: u64) -> EventHeader {
    EventHeader {
        func,
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        stack_len: 0,
        timestamp_ns,
    }
}

/// Per-CPU counts of everything the kernel side had to drop.
#[map]
static LOSSES: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOSS_COUNTERS, 0);

#[inline(always)]
pub(crate) fn count_loss(counter: LossCounter) {
    if let Some(slot) = LOSSES.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, programs on one CPU do not preempt each other.
        unsafe { *slot += 1 };
    }
}

/// Entry-to-return hand-off, one slot per thread (see `EntryStash`).
#[map]
static STASH: Array<EntryStash> = Array::with_max_entries(STASH_SLOTS, 0);

/// This thread's stash slot.
#[inline(always)]
pub(crate) fn stash_slot(tid: u32) -> Option<*mut EntryStash> {
    STASH.get_ptr_mut(tid & (STASH_SLOTS - 1))
}

/// The traced thread's user stack pointer.
#[inline(always)]
pub(crate) fn user_sp<C: EbpfContext>(ctx: &C) -> u64 {
    let regs = ctx.as_ptr() as *const pt_regs;
    // SAFETY: uprobe contexts are the traced thread's saved user registers.
    unsafe { (*regs).rsp }
}

/// How far below an outer allocator call's entry a call may start and still
/// be that call's own doing. The same sp counts: glibc's realloc(NULL, n)
/// tail-calls malloc. A stash further away (or above) was left by a call
/// that never returned, e.g. on a dead thread whose id was reused.
const NESTING_WINDOW: u64 = 64 * 1024;

/// Whether a call starting at `sp` runs inside the call stashed at `outer_sp`.
#[inline(always)]
pub(crate) fn is_nested(outer_sp: u64, sp: u64) -> bool {
    outer_sp.wrapping_sub(sp) < NESTING_WINDOW
}

/// True when an outer allocator call is running on this thread, i.e. the
/// current call is the allocator calling into itself.
#[inline(always)]
pub(crate) fn inside_allocator(tid: u32, sp: u64) -> bool {
    match stash_slot(tid) {
        // SAFETY: plain reads of this thread's slot.
        Some(slot) => unsafe {
            (*slot).func != 0 && (*slot).tid == tid && is_nested((*slot).sp, sp)
        },
        None => false,
    }
}

/// Per-CPU scratch where an allocating record is built: only its used part
/// (the event and the frames captured) goes into the ring buffer.
#[map]
pub(crate) static SCRATCH: PerCpuArray<AllocRecord> = PerCpuArray::with_max_entries(1, 0);
