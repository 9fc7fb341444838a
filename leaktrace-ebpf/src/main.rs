//! Kernel-side programs: three uprobe programs serve every traced function.
//!
//! - `alloc_entry` (uprobe) stashes the argument registers per thread.
//! - `alloc_return` (uretprobe) sends them with the return value and the
//!   user stack as one `AllocEvent`.
//! - `release_entry` (uprobe) sends a `ReleaseEvent` for free and friends.
//!
//! Which function fired comes from the attach cookie (`AllocFn`), so the
//! same programs serve glibc, jemalloc and any other allocator. Everything
//! the rules of each function imply (realloc, calloc overflow, MAP_FAILED)
//! is decided in userspace; the kernel only copies registers, so that the
//! cost per call stays at the uprobe floor.
#![no_std]
#![no_main]

mod sampling;
mod unwind;

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, pt_regs},
    helpers::{
        bpf_get_attach_cookie, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
    },
    macros::{map, tracepoint, uprobe, uretprobe},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::{ProbeContext, RetProbeContext, TracePointContext},
};
use leaktrace_common::{
    AllocEvent, AllocFn, AllocRecord, CONFIG_ENTRIES, CONFIG_GROUP_DEAD_OFFSET, CONFIG_SELF_PID,
    CONFIG_STACK_MODE, CONFIG_TRACE_ALL, EXEC_EVENT, EXIT_EVENT, EntryStash, EventHeader,
    FLAG_SAMPLED, LOSS_COUNTERS, LossCounter, MAX_STACK_DEPTH, ReleaseEvent, STACK_MODE_DWARF,
    STASH_SLOTS,
};

/// Events to userspace. The size is set by the loader (`--ring-buffer-size`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(16 * 1024 * 1024, 0);

/// Entry-to-return hand-off, one slot per thread (see `EntryStash`).
#[map]
static STASH: Array<EntryStash> = Array::with_max_entries(STASH_SLOTS, 0);

/// This thread's stash slot.
#[inline(always)]
fn stash_slot(tid: u32) -> Option<*mut EntryStash> {
    STASH.get_ptr_mut(tid & (STASH_SLOTS - 1))
}

/// Per-CPU counts of everything the kernel side had to drop.
#[map]
static LOSSES: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOSS_COUNTERS, 0);

/// Set to 1 by userspace once every probe is attached. Before that, a return
/// whose entry was not seen is a call that began while the probes were
/// going live, not a loss.
#[map]
static ARMED: Array<u32> = Array::with_max_entries(1, 0);

/// Settings from userspace (`CONFIG_*` indexes).
#[map]
pub(crate) static CONFIG: Array<u32> = Array::with_max_entries(CONFIG_ENTRIES, 0);

/// A setting from userspace (0 when unset).
#[inline(always)]
fn config(index: u32) -> u32 {
    CONFIG.get(index).map_or(0, |value| *value)
}

/// True for leaktrace's own calls. Only system-wide probes (`--all`) see
/// them; without this check the daemon would trace itself tracing.
#[inline(always)]
fn is_self(pid_tgid: u64) -> bool {
    config(CONFIG_SELF_PID) == (pid_tgid >> 32) as u32
}

#[inline(always)]
pub(crate) fn count_loss(counter: LossCounter) {
    if let Some(slot) = LOSSES.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, programs on one CPU do not preempt each other.
        unsafe { *slot += 1 };
    }
}

/// Wake the daemon only once this much is waiting. By default the kernel
/// wakes the consumer on every record it has caught up to, which for a
/// daemon that keeps up means on every record: an irq_work and a thread
/// wakeup per malloc, more than the rest of the probe costs. The daemon
/// also drains on a short timer, so nothing waits long below the mark.
const WAKEUP_BYTES: u64 = 256 * 1024;

#[inline(always)]
fn submit_flags() -> u64 {
    if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

#[inline(always)]
fn header(func: u32, pid_tgid: u64, timestamp_ns: u64) -> EventHeader {
    EventHeader {
        func,
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        stack_len: 0,
        timestamp_ns,
    }
}

/// Per-CPU scratch where an allocating record is built: only its used part
/// (the event and the frames captured) goes into the ring buffer.
#[map]
pub(crate) static SCRATCH: PerCpuArray<AllocRecord> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn user_sp<C: EbpfContext>(ctx: &C) -> u64 {
    let regs = ctx.as_ptr() as *const aya_ebpf::bindings::pt_regs;
    // SAFETY: uprobe contexts are the traced thread's saved user registers.
    unsafe { (*regs).rsp }
}

/// How far below an outer allocator call's entry a call may start and still
/// be that call's own doing. The same sp counts: glibc's realloc(NULL, n)
/// tail-calls malloc. A stash further away (or above) was left by a call
/// that never returned, e.g. on a dead thread whose id was reused.
const NESTING_WINDOW: u64 = 64 * 1024;

#[inline(always)]
fn is_nested(outer_sp: u64, sp: u64) -> bool {
    outer_sp.wrapping_sub(sp) < NESTING_WINDOW
}

/// True when an outer allocator call is running on this thread, i.e. the
/// current call is the allocator calling into itself.
#[inline(always)]
fn inside_allocator(tid: u32, sp: u64) -> bool {
    match stash_slot(tid) {
        // SAFETY: plain reads of this thread's slot.
        Some(slot) => unsafe {
            (*slot).func != 0 && (*slot).tid == tid && is_nested((*slot).sp, sp)
        },
        None => false,
    }
}

#[uprobe]
pub fn alloc_entry(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if is_self(pid_tgid) {
        return 0;
    }
    let tid = pid_tgid as u32;
    let sp = user_sp(&ctx);
    let Some(slot) = stash_slot(tid) else {
        return 0;
    };
    // SAFETY: the slot is this thread's (a colliding thread is detected by
    // its tid and counted).
    unsafe {
        if (*slot).func != 0 {
            if (*slot).tid == tid {
                if is_nested((*slot).sp, sp) {
                    (*slot).nested += 1;
                    return 0;
                }
            } else {
                count_loss(LossCounter::EntrySlotCollision);
            }
        }
        let func = bpf_get_attach_cookie(ctx.as_ptr()) as u32;
        let args = [
            ctx.arg::<u64>(0).unwrap_or(0),
            ctx.arg::<u64>(1).unwrap_or(0),
            ctx.arg::<u64>(2).unwrap_or(0),
            ctx.arg::<u64>(3).unwrap_or(0),
        ];
        *slot = EntryStash {
            func,
            nested: 0,
            tid,
            sampled: sampling::decide(func, &args) as u32,
            sp,
            args,
        };
    }
    0
}

/// A frame record as frame-pointer code lays it out: saved rbp, then the
/// return address.
#[repr(C)]
struct FrameRecord {
    next_frame: u64,
    return_address: u64,
}

/// The stack-capture seam: fills `stack` with return addresses, innermost
/// first, and returns how many. Called at the allocator's return, where
/// rip is the return address into the caller and rbp the caller's frame.
///
/// Frame pointers are followed here, one user read per frame, rather than
/// with bpf_get_stack: the perf callchain machinery behind that helper cost
/// ~0.75 µs a call here, several times this loop. The walk stops at a null
/// or non-increasing frame pointer (the outermost frame, or code without
/// frame pointers) or an unreadable frame. A frame walk that finds nothing
/// past rip is normal for code without frame pointers, not a failure.
#[inline(always)]
unsafe fn capture_stack(regs: *const pt_regs, stack: &mut [u64; MAX_STACK_DEPTH]) -> u32 {
    // SAFETY: uprobe contexts point at the thread's saved user registers.
    let (ip, mut frame) = unsafe { ((*regs).rip, (*regs).rbp) };
    stack[0] = ip;
    let mut depth = 1;
    while depth < MAX_STACK_DEPTH {
        if frame == 0 {
            break;
        }
        // SAFETY: bpf_probe_read_user checks the user address.
        let Ok(record) = (unsafe { bpf_probe_read_user(frame as *const FrameRecord) }) else {
            break;
        };
        if record.return_address == 0 {
            break;
        }
        stack[depth] = record.return_address;
        depth += 1;
        if record.next_frame <= frame {
            break;
        }
        frame = record.next_frame;
    }
    depth as u32
}

/// The record's flags when sampling, or None when the call is not worth a
/// record: its block is not sampled and it released no sampled block.
/// Keeps the set of sampled blocks up to date (realloc releases its old
/// block when it succeeds, or when realloc(p, 0) returns NULL).
#[inline(always)]
fn sampled_flags(stash: &EntryStash, pid: u32, ret: u64, out: u64) -> Option<u64> {
    if sampling::mean() == 0
        || stash.func == AllocFn::Mmap as u32
        || stash.func == AllocFn::Mremap as u32
    {
        return Some(FLAG_SAMPLED);
    }
    // xallocx returns a size, not a block: it only resizes its argument,
    // which matters when that block is a sampled one.
    if stash.func == AllocFn::Xallocx as u32 {
        return sampling::contains(pid, stash.args[0]).then_some(FLAG_SAMPLED);
    }
    let reallocates = stash.func == AllocFn::Realloc as u32
        || stash.func == AllocFn::Reallocarray as u32
        || stash.func == AllocFn::Rallocx as u32;
    let old = stash.args[0];
    let releases_old = reallocates
        && old != 0
        && (ret != 0 || (stash.func == AllocFn::Realloc as u32 && stash.args[1] == 0));
    let released_sampled = releases_old && sampling::forget(pid, old);
    let new = if stash.func == AllocFn::PosixMemalign as u32 {
        out
    } else {
        ret
    };
    let recorded = stash.sampled != 0 && new != 0 && sampling::record(pid, new);
    match (recorded, released_sampled) {
        (true, _) => Some(FLAG_SAMPLED),
        (false, true) => Some(0),
        (false, false) => None,
    }
}

#[uretprobe]
pub fn alloc_return(ctx: RetProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if is_self(pid_tgid) {
        return 0;
    }
    let tid = pid_tgid as u32;
    let Some(slot) = stash_slot(tid) else {
        return 0;
    };
    // SAFETY: the slot is this thread's when its tid says so.
    let stash = unsafe {
        if (*slot).func == 0 || (*slot).tid != tid {
            if ARMED.get(0).is_some_and(|armed| *armed != 0) {
                count_loss(LossCounter::ReturnWithoutEntry);
            }
            return 0;
        }
        if (*slot).nested > 0 {
            (*slot).nested -= 1;
            return 0;
        }
        let stash = *slot;
        (*slot).func = 0;
        stash
    };

    let ret: u64 = ctx.ret();
    let mut out = 0u64;
    if stash.func == AllocFn::PosixMemalign as u32 && ret == 0 {
        // SAFETY: bpf_probe_read_user checks the user address.
        out = unsafe { bpf_probe_read_user(stash.args[0] as *const u64) }.unwrap_or(0);
    }
    let pid = (pid_tgid >> 32) as u32;
    let Some(flags) = sampled_flags(&stash, pid, ret, out) else {
        // Unsampled, and no sampled block released: nothing to report.
        return 0;
    };

    let Some(record) = SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's scratch slot; programs on one CPU do not preempt
    // each other. The length sent is bounded by the slot's size.
    unsafe {
        let regs: *const pt_regs = ctx.as_ptr().cast();
        let dwarf = CONFIG
            .get(CONFIG_STACK_MODE)
            .is_some_and(|mode| *mode == STACK_MODE_DWARF);
        // A record that only releases a sampled block needs no stack.
        let (depth, fp_frames) = if flags & FLAG_SAMPLED == 0 {
            (0, 0)
        } else if dwarf {
            unwind::walk(pid, (*regs).rip, (*regs).rsp, (*regs).rbp)
        } else {
            (capture_stack(regs, &mut (*record).stack), 0)
        };
        let mut event_header = header(stash.func, pid_tgid, bpf_ktime_get_ns());
        event_header.stack_len = depth;
        (*record).event = AllocEvent {
            header: event_header,
            args: stash.args,
            ret,
            out,
            fp_frames,
            flags,
        };
        let depth = (depth as usize).min(MAX_STACK_DEPTH);
        let bytes = core::slice::from_raw_parts(
            record.cast::<u8>(),
            size_of::<AllocEvent>() + depth * size_of::<u64>(),
        );
        if EVENTS.output::<[u8]>(bytes, submit_flags()).is_err() {
            // A block added to the sampled set here stays there until its
            // free, which then reaches userspace as a release of a block it
            // never saw (counted). Removing it at once cost 200 ms of
            // verification at every load (measured), for no gain in counts.
            count_loss(LossCounter::RingBufferFull);
        }
    }
    0
}

#[uprobe]
pub fn release_entry(ctx: ProbeContext) -> u32 {
    let addr = ctx.arg::<u64>(0).unwrap_or(0);
    if addr == 0 {
        // free(NULL) is a no-op; it costs no event (checked first: it
        // needs no map lookup).
        return 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    if is_self(pid_tgid) || inside_allocator(pid_tgid as u32, user_sp(&ctx)) {
        return 0;
    }
    let func = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u32;
    // When sampling, only releases of sampled blocks matter.
    if func != AllocFn::Munmap as u32
        && sampling::mean() != 0
        && !sampling::forget((pid_tgid >> 32) as u32, addr)
    {
        return 0;
    }
    let release = ReleaseEvent {
        header: header(func, pid_tgid, 0),
        args: [addr, ctx.arg::<u64>(1).unwrap_or(0)],
    };
    if EVENTS
        .output::<ReleaseEvent>(&release, submit_flags())
        .is_err()
    {
        count_loss(LossCounter::RingBufferFull);
    }
    0
}

/// Benchmark floor: the same probes, attached to programs that do nothing.
#[uprobe]
pub fn empty_entry(_ctx: ProbeContext) -> u32 {
    0
}

/// Benchmark floor, return side.
#[uretprobe]
pub fn empty_return(_ctx: RetProbeContext) -> u32 {
    0
}

/// Processes being traced (filled by userspace): the exec and exit
/// tracepoints fire for every process on the host, uprobes only where they
/// are attached. With `--all` (`CONFIG_TRACE_ALL`) every process counts.
#[map]
static TRACED_PIDS: HashMap<u32, u8> = HashMap::with_max_entries(4096, 0);

#[inline(always)]
fn is_traced(pid_tgid: u64) -> bool {
    let pid = (pid_tgid >> 32) as u32;
    if config(CONFIG_TRACE_ALL) != 0 {
        return !is_self(pid_tgid);
    }
    // SAFETY: read-only lookup.
    unsafe { TRACED_PIDS.get(&pid) }.is_some()
}

/// Sends a record made of a header alone (exec, exit), waking the daemon
/// at once: it reads a new image's mappings as soon as it can.
#[inline(always)]
fn send_process_event(func: u32, pid_tgid: u64) {
    if EVENTS
        .output::<EventHeader>(
            &header(func, pid_tgid, unsafe { bpf_ktime_get_ns() }),
            BPF_RB_FORCE_WAKEUP as u64,
        )
        .is_err()
    {
        count_loss(LossCounter::RingBufferFull);
    }
}

/// sched:sched_process_exec: a traced process replaced its image.
#[tracepoint]
pub fn on_exec(_ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if is_traced(pid_tgid) {
        // The old image's mappings no longer hold: until the daemon has
        // read the new ones, stacks fall back to frame pointers (flagged)
        // rather than being walked with rows of the wrong objects.
        let _ = unwind::PROCESS_SLOTS.remove(&((pid_tgid >> 32) as u32));
        send_process_event(EXEC_EVENT, pid_tgid);
    }
    0
}

/// sched:sched_process_exit: a thread exited; the process is gone when it
/// was its last one (`group_dead`, or without that field its main thread).
/// Every record the process sent is in the ring buffer before this one: no
/// user code runs after its last thread entered exit.
#[tracepoint]
pub fn on_exit(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // A thread that dies inside the allocator (killed, or its process
    // exec'd) never returns: free its stash slot, which would otherwise
    // make later calls in that slot look nested or colliding.
    let tid = pid_tgid as u32;
    if let Some(slot) = stash_slot(tid) {
        // SAFETY: plain accesses to this thread's slot.
        unsafe {
            if (*slot).tid == tid {
                (*slot).func = 0;
            }
        }
    }
    let offset = config(CONFIG_GROUP_DEAD_OFFSET) as usize;
    let process_gone = if offset != 0 {
        // SAFETY: the offset comes from the tracepoint's format file.
        unsafe { ctx.read_at::<u8>(offset) }.is_ok_and(|dead| dead != 0)
    } else {
        (pid_tgid >> 32) == (pid_tgid & 0xffff_ffff)
    };
    if process_gone && is_traced(pid_tgid) {
        send_process_event(EXIT_EVENT, pid_tgid);
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
