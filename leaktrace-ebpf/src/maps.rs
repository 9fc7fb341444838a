//! The maps several programs share, and the small accessors around them:
//! the ring buffer every record leaves by, the loss counters, the per-thread
//! stash that hands a call's arguments from its entry to its return, and
//! the per-CPU scratch record that the return probe and the stack walkers
//! fill. Maps with a single user live next to it.
use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, pt_regs},
    helpers::bpf_probe_read_user,
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

/// Whether the outer call that entered at `outer_sp` is still in flight:
/// its return address there is still the uretprobe trampoline the kernel
/// put in its place when the call entered (the start of the `[uprobes]`
/// page: page-aligned, which no return address after a `call` is but by a
/// 1-in-4096 chance). A thread that left the call by longjmp has since
/// called again from that frame or below, and the slot then holds a real
/// return address (or, when nothing was written there yet, still the stale
/// trampoline: the call is then taken for nested, as before this check).
/// Read only when a call finds the slot set, never on the common path.
#[inline(always)]
pub(crate) fn outer_in_flight(outer_sp: u64) -> bool {
    // SAFETY: bpf_probe_read_user checks the user address.
    match unsafe { bpf_probe_read_user(outer_sp as *const u64) } {
        Ok(word) => word != 0 && word.is_multiple_of(4096),
        // Unreadable: no evidence the call was abandoned.
        Err(_) => true,
    }
}

/// True when an outer allocator call is running on this thread, i.e. the
/// current call is the allocator calling into itself. A slot left by a
/// call that was abandoned is freed here (and counted).
#[inline(always)]
pub(crate) fn inside_allocator(tid: u32, sp: u64) -> bool {
    let Some(slot) = stash_slot(tid) else {
        return false;
    };
    // SAFETY: plain accesses to this thread's slot.
    unsafe {
        if (*slot).func == 0 || (*slot).tid != tid || !is_nested((*slot).sp, sp) {
            return false;
        }
        if outer_in_flight((*slot).sp) {
            return true;
        }
        (*slot).func = 0;
    }
    count_loss(LossCounter::AbandonedCall);
    false
}

/// Per-CPU scratch where an allocating record is built: only its used part
/// (the event and the frames captured) goes into the ring buffer.
#[map]
pub(crate) static SCRATCH: PerCpuArray<AllocRecord> = PerCpuArray::with_max_entries(1, 0);
