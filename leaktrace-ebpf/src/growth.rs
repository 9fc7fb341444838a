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
//! - `on_munmap`, `on_madvise` (DONTNEED, FREE, REMOVE), `on_mremap_*`,
//!   `on_brk`: memory given back, or moved.
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
    macros::{map, tracepoint},
    maps::HashMap,
    programs::TracePointContext,
};
use leaktrace_common::{AllocFn, FLAG_SAMPLED, LossCounter, ReleaseEvent, mix64};

use crate::{
    alloc::{Outcome, send_allocation},
    maps::{EVENTS, count_loss, header, submit_flags},
    process::is_traced,
    settings,
};

const PAGE_SIZE: u64 = 4096;
/// `error_code` bit of a write access (x86 `X86_PF_WRITE`).
const FAULT_WRITE: u64 = 1 << 1;
/// madvise advice that gives pages back: DONTNEED, FREE, REMOVE,
/// `DONTNEED_LOCKED`.
const MADV_DONTNEED: u64 = 4;
const MADV_FREE: u64 = 8;
const MADV_REMOVE: u64 = 9;
const MADV_DONTNEED_LOCKED: u64 = 24;
/// Lowest address that is not a user one on x86-64.
const USER_END: u64 = 0x0000_8000_0000_0000;

/// `mremap`'s arguments from its entry, by thread, for its exit.
#[map]
static MREMAP_ARGS: HashMap<u32, [u64; 4]> = HashMap::with_max_entries(1024, 0);

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

/// Sends a release of `[start, start + len)` (or a brk move) by `func`.
#[inline(always)]
fn send_release(func: AllocFn, pid_tgid: u64, args: [u64; 2]) {
    let release = ReleaseEvent {
        header: header(func as u32, pid_tgid, 0),
        args,
    };
    if EVENTS
        .output::<ReleaseEvent>(&release, submit_flags())
        .is_err()
    {
        count_loss(LossCounter::RingBufferFull);
    }
}

/// A syscall argument of the `sys_enter_*` record (the n-th, from 0).
#[inline(always)]
fn syscall_arg(ctx: &TracePointContext, n: usize) -> u64 {
    // SAFETY: syscall records hold their arguments as 8-byte fields from
    // offset 16.
    unsafe { ctx.read_at::<u64>(16 + 8 * n) }.unwrap_or(0)
}

#[tracepoint]
pub(crate) fn on_munmap(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if is_traced(pid_tgid) {
        send_release(
            AllocFn::Munmap,
            pid_tgid,
            [syscall_arg(&ctx, 0), syscall_arg(&ctx, 1)],
        );
    }
    0
}

#[tracepoint]
pub(crate) fn on_madvise(ctx: TracePointContext) -> u32 {
    let advice = syscall_arg(&ctx, 2) & 0xffff_ffff;
    if !matches!(
        advice,
        MADV_DONTNEED | MADV_FREE | MADV_REMOVE | MADV_DONTNEED_LOCKED
    ) {
        return 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    if is_traced(pid_tgid) {
        send_release(
            AllocFn::Madvise,
            pid_tgid,
            [syscall_arg(&ctx, 0), syscall_arg(&ctx, 1)],
        );
    }
    0
}

#[tracepoint]
pub(crate) fn on_mremap_enter(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if is_traced(pid_tgid) {
        let args = [
            syscall_arg(&ctx, 0),
            syscall_arg(&ctx, 1),
            syscall_arg(&ctx, 2),
            syscall_arg(&ctx, 3),
        ];
        if MREMAP_ARGS.insert(pid_tgid as u32, args, 0).is_err() {
            count_loss(LossCounter::EntrySlotCollision);
        }
    }
    0
}

#[tracepoint]
pub(crate) fn on_mremap_exit(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    // SAFETY: a map value, copied out at once.
    let Some(args) = (unsafe { MREMAP_ARGS.get(tid) }).copied() else {
        return 0;
    };
    let _: Result<(), i32> = MREMAP_ARGS.remove(tid);
    let ret = syscall_arg(&ctx, 0);
    // A move needs no stack: the region keeps the site that grew it.
    send_allocation(
        pid_tgid,
        &args,
        Outcome {
            func: AllocFn::Mremap as u32,
            ret,
            out: 0,
            flags: FLAG_SAMPLED,
        },
        (0, 0, 0),
    );
    0
}

#[tracepoint]
pub(crate) fn on_brk(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if is_traced(pid_tgid) {
        send_release(AllocFn::Brk, pid_tgid, [syscall_arg(&ctx, 0), 0]);
    }
    0
}
