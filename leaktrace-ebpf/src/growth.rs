//! Growth mode (`--mode growth`): resident memory growth, from the kernel's
//! own events instead of the allocator's calls. No uprobe is placed, so no
//! allocation of any process traps into the kernel; what is recorded is
//! where memory becomes resident (the first write to an anonymous page,
//! orders of magnitude rarer than malloc) and where it is given back.
//!
//! - `on_page_fault_user` / `on_page_fault_kernel`
//!   (`exceptions:page_fault_*`): a write fault at a user address in
//!   anonymous memory makes a page resident (a fresh page, the copy
//!   of a shared or zero page). Read faults map the shared zero page and
//!   grow nothing. A fault the kernel takes on a user address (`read(2)`
//!   into a fresh buffer) counts for the user stack that made the call. The
//!   record carries the user stack (from the task's saved user registers)
//!   and the thread's Python frames, as an allocation's would. Whether the
//!   page is anonymous is left to userspace, which knows the process's file
//!   mappings: `bpf_find_vma` here cost a self-interrupt per fault (its
//!   deferred unlock, the tracepoint runs with interrupts off), 4 µs more
//!   per page in the worst case (measured: 4.6 ms against 1.1 ms per MiB
//!   grown, 0.6 untraced).
//! - `on_vm_unmapped_area` (`mmap:vm_unmapped_area`): where an mremap
//!   moves a region. Memory given back (munmap, madvise, brk) is found by
//!   the daemon, absent from the process's page map: no syscall tracepoint
//!   is enabled, since any of them slows every syscall on the host.
//!
//! Pages can be sampled by address (`Settings::page_sample_shift`): the
//! same pages are kept on fault and on release, so the estimate is
//! unbiased and releases stay exact for the pages kept.
use aya_ebpf::{
    bindings::pt_regs,
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_kernel,
        generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use leaktrace_common::{AllocFn, FLAG_SAMPLED, LossCounter, mix64};

use crate::{
    alloc::{Outcome, send_allocation},
    maps::count_loss,
    process::is_traced,
    settings,
};

const PAGE_SIZE: u64 = 4096;
/// `error_code` bit of a write access (x86 `X86_PF_WRITE`).
const FAULT_WRITE: u64 = 1 << 1;
/// Lowest address that is not a user one on x86-64.
const USER_END: u64 = 0x0000_8000_0000_0000;

/// Whether the page at `page` is one of those kept (all, without sampling).
#[inline(always)]
fn page_kept(page: u64) -> bool {
    let shift = settings::page_sample_shift();
    shift == 0 || mix64(page >> 12) & ((1u64 << (shift & 31)) - 1) == 0
}

/// Records a write fault at `address` by the current thread, when it makes
/// an anonymous private page of a traced process resident.
#[inline(always)]
fn page_fault(ctx: &TracePointContext) {
    // SAFETY: the tracepoint's record has these fields at these offsets
    // (format: address at 8, error_code at 24).
    let (address, error_code) = unsafe {
        (
            ctx.read_at::<u64>(8).unwrap_or(0),
            ctx.read_at::<u64>(24).unwrap_or(0),
        )
    };
    if error_code & FAULT_WRITE == 0 || address >= USER_END {
        return;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_traced(pid_tgid) {
        return;
    }
    let page = address & !(PAGE_SIZE - 1);
    if !page_kept(page) {
        return;
    }
    // SAFETY: the current task, as the helpers expect.
    let task = unsafe { bpf_get_current_task_btf() };
    // SAFETY: the current task; the helper returns its saved user
    // registers (the ones it entered the kernel with).
    let regs = unsafe { bpf_task_pt_regs(task.cast()) } as *const pt_regs;
    // SAFETY: bpf_probe_read_kernel checks the address.
    let Ok(regs) = (unsafe { bpf_probe_read_kernel(regs) }) else {
        count_loss(LossCounter::StackCaptureFailed);
        return;
    };
    send_allocation(
        pid_tgid,
        &[page, PAGE_SIZE, 0, 0],
        Outcome {
            func: AllocFn::PageFault as u32,
            ret: page,
            out: 0,
            flags: FLAG_SAMPLED,
        },
        (regs.rip, regs.rsp, regs.rbp),
    );
}

#[tracepoint]
pub(crate) fn on_page_fault_user(ctx: TracePointContext) -> u32 {
    page_fault(&ctx);
    0
}

#[tracepoint]
pub(crate) fn on_page_fault_kernel(ctx: TracePointContext) -> u32 {
    page_fault(&ctx);
    0
}

/// x86-64's syscall number of mremap (in `orig_ax` while it runs).
const NR_MREMAP: u64 = 25;
/// Errors come back as addresses in the last page of the address space.
const MAX_ERRNO: u64 = 4095;

/// `mmap:vm_unmapped_area`: the kernel found a free range for a mapping.
/// Inside an mremap that moves its region, this is where it goes: the
/// record's address with the syscall's own arguments (old address, old and
/// new lengths, flags) from the task's saved user registers. A move needs
/// no stack: the region keeps the site that grew it. Nothing else is
/// watched of the memory syscalls: pages given back (munmap, madvise, brk)
/// are found absent from `/proc/PID/pagemap` by the daemon, because a
/// syscall tracepoint would slow every syscall on the host.
#[tracepoint]
pub(crate) fn on_vm_unmapped_area(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_traced(pid_tgid) {
        return 0;
    }
    // SAFETY: the current task, as the helpers expect.
    let task = unsafe { bpf_get_current_task_btf() };
    // SAFETY: the current task; its saved user registers.
    let regs = unsafe { bpf_task_pt_regs(task.cast()) } as *const pt_regs;
    // SAFETY: bpf_probe_read_kernel checks the address.
    let Ok(regs) = (unsafe { bpf_probe_read_kernel(regs) }) else {
        return 0;
    };
    if regs.orig_rax != NR_MREMAP {
        return 0;
    }
    // SAFETY: the record's format: addr at 8, length at 32.
    let (addr, length) = unsafe {
        (
            ctx.read_at::<u64>(8).unwrap_or(u64::MAX),
            ctx.read_at::<u64>(32).unwrap_or(0),
        )
    };
    if addr >= MAX_ERRNO.wrapping_neg() {
        return 0;
    }
    send_allocation(
        pid_tgid,
        &[regs.rdi, regs.rsi, regs.rdx, regs.r10],
        Outcome {
            func: AllocFn::Mremap as u32,
            ret: addr,
            // The length searched for: the new length, or more when the
            // kernel pads the search to align a huge page (the daemon
            // works out where the region went).
            out: length,
            flags: FLAG_SAMPLED,
        },
        (0, 0, 0),
    );
    0
}
