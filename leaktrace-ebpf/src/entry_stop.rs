//! `run`'s entry stop: a uprobe at the command's entry point that asks for
//! one signal, so that its tracer sees the command stop there (a ptraced
//! thread stops at the delivery of any signal) and loads the unwind tables
//! of the libraries the dynamic loader mapped, before main runs.
//!
//! No instruction of the command is written: the uprobe is the kernel's,
//! and goes with leaktrace's fd however leaktrace ends, so a dead tracer
//! leaves nothing behind that could kill the command.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_send_signal_thread},
    macros::{map, uprobe},
    maps::HashMap,
    programs::ProbeContext,
};

/// The processes to stop at their entry point (tgid), and the signal to
/// send each. The entry is taken out when used: one stop per process, even
/// if it execs the same program again.
#[map]
static ENTRY_STOPS: HashMap<u32, u32> = HashMap::with_max_entries(64, 0);

/// Sends the signal asked for to the thread at the entry point, once.
#[uprobe]
pub(crate) fn entry_stop(_ctx: ProbeContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: read-only lookup; the value is copied out at once.
    let Some(&signal) = (unsafe { ENTRY_STOPS.get(tgid) }) else {
        return 0;
    };
    // Only the caller that took the entry out signals: once per process.
    if ENTRY_STOPS.remove(tgid).is_ok() {
        // SAFETY: a BPF helper; it signals the current thread only.
        unsafe { bpf_send_signal_thread(signal) };
    }
    0
}
