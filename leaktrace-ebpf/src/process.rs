//! Processes coming and going: the set of traced pids, and the fork, exec
//! and exit tracepoints that tell the daemon when a traced process created
//! a child process (to be followed), replaced its image (its blocks are
//! gone with the old address space) or ended (its table can go). These
//! fire for every process on the host, so each first checks that the
//! process is one being traced.
use aya_ebpf::{
    bindings::BPF_RB_FORCE_WAKEUP,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{map, raw_tracepoint, tracepoint},
    maps::HashMap,
    programs::{RawTracePointContext, TracePointContext},
};
use leaktrace_common::{
    EXEC_EVENT, EXIT_EVENT, EventHeader, FORK_EVENT, FORK_TRACED, ForkEvent, LossCounter,
};

use crate::{
    maps::{EVENTS, count_loss, header, stash_slot},
    runtime, settings, stack,
};

/// Processes being traced: the exec and exit tracepoints fire for every
/// process on the host, uprobes only where they are attached. Userspace
/// puts the processes it was told to trace here; the fork tracepoint adds
/// their children (when following them); the exit tracepoint takes a
/// process out when it ends, so the set holds live processes only and a
/// reused pid is not mistaken for a traced one. With `--all`
/// (`Settings::trace_all`) every process counts and the set is unused.
#[map]
static TRACED_PIDS: HashMap<u32, u8> = HashMap::with_max_entries(4096, 0);

#[inline(always)]
pub(crate) fn is_traced(pid_tgid: u64) -> bool {
    let pid = (pid_tgid >> 32) as u32;
    if settings::trace_all() {
        return !settings::is_self(pid_tgid);
    }
    // SAFETY: read-only lookup.
    unsafe { TRACED_PIDS.get(pid) }.is_some()
}

/// Sends a record made of a header alone (exec, exit), waking the daemon
/// at once: it reads a new image's mappings as soon as it can.
#[inline(always)]
fn send_process_event(func: u32, pid_tgid: u64) {
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    if EVENTS
        .output::<EventHeader>(&header(func, pid_tgid, now), u64::from(BPF_RB_FORCE_WAKEUP))
        .is_err()
    {
        count_loss(LossCounter::RingBufferFull);
    }
}

/// `sched:sched_process_exec`: a traced process replaced its image.
#[tracepoint]
pub(crate) fn on_exec(_ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if is_traced(pid_tgid) {
        // The old image's mappings no longer hold: until the daemon has
        // read the new ones, stacks fall back to frame pointers (flagged)
        // rather than being walked with rows of the wrong objects, and no
        // Python frames are walked with the old image's addresses.
        stack::dwarf::forget_process((pid_tgid >> 32) as u32);
        runtime::python::forget_process((pid_tgid >> 32) as u32);
        send_process_event(EXEC_EVENT, pid_tgid);
    }
    0
}

/// `sched:sched_process_exit`: a thread exited; the process is gone when it
/// was its last one (`group_dead`, or without that field its main thread).
/// Every record the process sent is in the ring buffer before this one: no
/// user code runs after its last thread entered exit.
#[tracepoint]
pub(crate) fn on_exit(ctx: TracePointContext) -> u32 {
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
    let offset = settings::group_dead_offset();
    let process_gone = if offset != 0 {
        // SAFETY: the offset comes from the tracepoint's format file.
        unsafe { ctx.read_at::<u8>(offset) }.is_ok_and(|dead| dead != 0)
    } else {
        (pid_tgid >> 32) == (pid_tgid & 0xffff_ffff)
    };
    if process_gone && is_traced(pid_tgid) {
        send_process_event(EXIT_EVENT, pid_tgid);
        if !settings::trace_all() {
            // Gone from the set at once: the pid may be reused by a
            // process nobody asked to trace. Nothing to do if it was not
            // there.
            let _: Result<_, _> = TRACED_PIDS.remove((pid_tgid >> 32) as u32);
        }
    }
    0
}

/// Reads a `pid_t` of the task at `task` (a kernel pointer), `offset` bytes
/// in (from BTF).
#[inline(always)]
fn task_id(task: u64, offset: u32) -> Option<u32> {
    // SAFETY: bpf_probe_read_kernel checks the address; the offset is the
    // field's, from the running kernel's BTF.
    unsafe { bpf_probe_read_kernel((task + u64::from(offset)) as *const u32) }.ok()
}

/// `sched_process_fork`, as a raw tracepoint: runs in the forking thread
/// (so the current tgid is the parent's) with the new task as its second
/// argument (`TP_PROTO(struct task_struct *parent, struct task_struct
/// *child)`). The same tracepoint reports new threads: only a new process
/// counts, told by its `pid == tgid` (a thread has its parent's tgid). The
/// raw form is used because the formatted record carries the child's pid
/// alone, not its tgid; the two offsets come from the kernel's BTF, read by
/// userspace (aya 0.14's eBPF side has no CO-RE relocations).
///
/// A child of a traced process joins `TRACED_PIDS` here, before it runs a
/// single instruction, so an exec or exit it makes before the daemon
/// attaches its uprobes is still reported; the daemon is woken at once to
/// attach them (allocations before that are not seen: the per-process
/// uprobes of the parent filter on its address space, which the child no
/// longer shares). Threads never enter the set: they share their process's
/// entry.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub(crate) fn on_fork(ctx: RawTracePointContext) -> u32 {
    if !settings::follow_children() || settings::trace_all() {
        return 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let parent = (pid_tgid >> 32) as u32;
    // SAFETY: read-only lookup.
    if unsafe { TRACED_PIDS.get(parent) }.is_none() {
        return 0;
    }
    let child: *const u8 = ctx.arg(1);
    let (pid_offset, tgid_offset) = settings::task_id_offsets();
    let (Some(pid), Some(tgid)) = (
        task_id(child as u64, pid_offset),
        task_id(child as u64, tgid_offset),
    ) else {
        return 0;
    };
    if pid != tgid {
        return 0;
    }
    let traced = TRACED_PIDS.insert(tgid, 1, 0).is_ok();
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    let event = ForkEvent {
        header: header(FORK_EVENT, pid_tgid, now),
        child_pid: tgid,
        flags: if traced { FORK_TRACED } else { 0 },
    };
    if EVENTS
        .output::<ForkEvent>(&event, u64::from(BPF_RB_FORCE_WAKEUP))
        .is_err()
    {
        count_loss(LossCounter::RingBufferFull);
    }
    0
}
