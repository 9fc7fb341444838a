//! Processes coming and going: the set of traced pids, and the exec and
//! exit tracepoints that tell the daemon when a traced process replaced its
//! image (its blocks are gone with the old address space) or ended (its
//! table can go). These fire for every process on the host, so each first
//! checks that the process is one being traced.
use aya_ebpf::{
    bindings::BPF_RB_FORCE_WAKEUP,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, tracepoint},
    maps::HashMap,
    programs::TracePointContext,
};
use leaktrace_common::{EXEC_EVENT, EXIT_EVENT, EventHeader, LossCounter};

use crate::{
    maps::{EVENTS, count_loss, header, stash_slot},
    runtime, settings, stack,
};

/// Processes being traced (filled by userspace): the exec and exit
/// tracepoints fire for every process on the host, uprobes only where they
/// are attached. With `--all` (`Settings::trace_all`) every process counts.
#[map]
static TRACED_PIDS: HashMap<u32, u8> = HashMap::with_max_entries(4096, 0);

#[inline(always)]
fn is_traced(pid_tgid: u64) -> bool {
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
    }
    0
}
