//! Growth mode (`--mode growth`): resident memory growth, from the kernel's
//! own events instead of the allocator's calls. No uprobe is placed, so no
//! allocation of any process traps into the kernel; what is recorded is
//! where memory becomes resident (the first write to an anonymous page,
//! orders of magnitude rarer than malloc) and where it is given back.
//!
//! - `on_page_fault_user` / `on_page_fault_kernel`
//!   (`exceptions:page_fault_*`): a write fault at a user address in
//!   anonymous private memory makes a page resident (a fresh page, the copy
//!   of a shared or zero page). Read faults map the shared zero page and
//!   grow nothing. A fault the kernel takes on a user address (`read(2)`
//!   into a fresh buffer) counts for the user stack that made the call. The
//!   record carries the user stack (from the task's saved user registers)
//!   and the thread's Python frames, as an allocation's would.
//! - `on_munmap`, `on_madvise` (DONTNEED, FREE, REMOVE), `on_mremap_*`,
//!   `on_brk`: memory given back, or moved.
//!
//! Pages can be sampled by address (`Settings::page_sample_shift`): the
//! same pages are kept on fault and on release, so the estimate is
//! unbiased and releases stay exact for the pages kept.
use core::ffi::c_void;

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_kernel,
        generated::{bpf_find_vma, bpf_get_current_task_btf, bpf_task_pt_regs},
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
/// `VM_SHARED` in `vm_flags`.
const VM_SHARED: u64 = 0x8;
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

/// What `vma_kind` found: the VMA is anonymous and private.
#[repr(C)]
struct VmaQuery {
    anonymous_private: u64,
}

/// `bpf_find_vma`'s callback: reads the VMA's file and flags at the
/// offsets userspace found in the kernel's BTF.
extern "C" fn vma_kind(_task: *mut c_void, vma: *mut c_void, query: *mut c_void) -> i64 {
    let (file_offset, flags_offset) = settings::vma_offsets();
    let vma = vma as u64;
    // SAFETY: bpf_probe_read_kernel checks the address; the offsets are
    // the kernel's own (BTF).
    let file = unsafe { bpf_probe_read_kernel((vma + u64::from(file_offset)) as *const u64) };
    // SAFETY: as above.
    let flags = unsafe { bpf_probe_read_kernel((vma + u64::from(flags_offset)) as *const u64) };
    if let (Ok(0), Ok(flags)) = (file, flags)
        && flags & VM_SHARED == 0
    {
        // SAFETY: the context is the caller's `VmaQuery` on its stack.
        unsafe { (*query.cast::<VmaQuery>()).anonymous_private = 1 };
    }
    0
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
    let mut query = VmaQuery {
        anonymous_private: 0,
    };
    // SAFETY: the callback and its context live for the call.
    let found = unsafe {
        bpf_find_vma(
            task.cast(),
            page,
            vma_kind as *mut c_void,
            (&raw mut query).cast(),
            0,
        )
    };
    // The VMA could not be looked at (the helper gives up when its
    // deferred unlock from the previous fault on this CPU is still pending,
    // as in a burst of faults): the record goes out flagged, and userspace
    // checks the address against the process's file mappings.
    let unchecked = u64::from(found != 0);
    if found == 0 && query.anonymous_private == 0 {
        return;
    }
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
        &[page, PAGE_SIZE, unchecked, 0],
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
