//! The allocating calls (malloc and its family, mmap, mremap): `alloc_entry`
//! stashes the argument registers per thread at the call's entry, and
//! `alloc_return` sends them with the return value and the caller's stack
//! as one `AllocEvent` when the call returns. Calls the allocator makes into
//! itself are folded into the outer call; sampling decides at the entry
//! whether the return is worth a record.
use aya_ebpf::{
    EbpfContext,
    bindings::pt_regs,
    helpers::{
        bpf_get_attach_cookie, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
    },
    macros::{map, uprobe, uretprobe},
    maps::Array,
    programs::{ProbeContext, RetProbeContext},
};
use leaktrace_common::{
    AllocEvent, AllocFn, COOKIE_SKIPS_CONTEXT, EntryStash, FLAG_SAMPLED, LossCounter,
    MAX_PYTHON_FRAMES, MAX_STACK_DEPTH, PYTHON_NONE, RECORD_WORDS,
};

use crate::{
    maps::{
        EVENTS, SCRATCH, count_loss, header, is_nested, outer_in_flight, stash_slot, submit_flags,
        user_sp,
    },
    runtime, sampling, settings, stack,
};

/// Set to 1 by userspace once every probe is attached. Before that, a return
/// whose entry was not seen is a call that began while the probes were
/// going live, not a loss.
#[map]
static ARMED: Array<u32> = Array::with_max_entries(1, 0);

/// The call's first four arguments, after the context pointer when the
/// cookie says the function takes one first.
#[inline(always)]
pub(crate) fn arguments(ctx: &ProbeContext, cookie: u64) -> [u64; 4] {
    // Every register is read at a constant offset, then chosen: the
    // verifier refuses a context read at an offset computed at run time,
    // and without the black box the compiler computes it.
    let registers = core::hint::black_box([
        ctx.arg::<u64>(0).unwrap_or(0),
        ctx.arg::<u64>(1).unwrap_or(0),
        ctx.arg::<u64>(2).unwrap_or(0),
        ctx.arg::<u64>(3).unwrap_or(0),
        ctx.arg::<u64>(4).unwrap_or(0),
    ]);
    if cookie & COOKIE_SKIPS_CONTEXT != 0 {
        [registers[1], registers[2], registers[3], registers[4]]
    } else {
        [registers[0], registers[1], registers[2], registers[3]]
    }
}

#[uprobe]
pub(crate) fn alloc_entry(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if settings::is_self(pid_tgid) {
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
                    if outer_in_flight((*slot).sp) {
                        (*slot).nested += 1;
                        return 0;
                    }
                    // Left by longjmp: its return will never come, and
                    // without this every later call of the thread would
                    // look nested and go unrecorded.
                    count_loss(LossCounter::AbandonedCall);
                }
            } else {
                count_loss(LossCounter::EntrySlotCollision);
            }
        }
        let cookie = bpf_get_attach_cookie(ctx.as_ptr());
        let func = cookie as u32;
        let args = arguments(&ctx, cookie);
        *slot = EntryStash {
            func,
            nested: 0,
            tid,
            sampled: u32::from(sampling::decide(func, &args)),
            sp,
            args,
        };
    }
    0
}

/// The record's flags when sampling, or None when the call is not worth a
/// record: its block is not sampled and it released no sampled block.
/// Keeps the set of sampled blocks up to date (realloc releases its old
/// block when it succeeds, or when realloc(p, 0) returns NULL).
#[inline(always)]
fn sampled_flags(stash: &EntryStash, pid: u32, ret: u64, out: u64) -> Option<u64> {
    if settings::sample_mean() == 0
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
        || stash.func == AllocFn::Rallocx as u32
        || stash.func == AllocFn::PyObjectRealloc as u32;
    let old = stash.args[0];
    let releases_old = reallocates
        && old != 0
        && (ret != 0
            || ((stash.func == AllocFn::Realloc as u32
                || stash.func == AllocFn::PyObjectRealloc as u32)
                && stash.args[1] == 0));
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
pub(crate) fn alloc_return(ctx: RetProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if settings::is_self(pid_tgid) {
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

    let regs: *const pt_regs = ctx.as_ptr().cast();
    // SAFETY: a return probe's context is the thread's saved user registers.
    let (pc, sp, bp) = unsafe { ((*regs).rip, (*regs).rsp, (*regs).rbp) };
    send_allocation(
        pid_tgid,
        &stash.args,
        Outcome {
            func: stash.func,
            ret,
            out,
            flags,
        },
        (pc, sp, bp),
    );
    0
}

/// What an allocating call (or a page fault) did, for its record.
pub(crate) struct Outcome {
    /// `AllocFn`.
    pub func: u32,
    pub ret: u64,
    pub out: u64,
    /// `FLAG_*`; without `FLAG_SAMPLED` the record carries no stack.
    pub flags: u64,
}

/// Builds the `AllocEvent` in this CPU's scratch record, with the user
/// stack from the thread's registers `(pc, sp, bp)` and its Python frames
/// (none when `pc` is 0), and sends the used part of it.
#[inline(always)]
pub(crate) fn send_allocation(
    pid_tgid: u64,
    args: &[u64; 4],
    outcome: Outcome,
    regs: (u64, u64, u64),
) {
    let pid = (pid_tgid >> 32) as u32;
    let Some(record) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // No registers (a move of pages): no stack to walk.
    let sampled = outcome.flags & FLAG_SAMPLED != 0 && regs.0 != 0;
    // A record that only releases a sampled block needs no stack.
    let (depth, fp_frames) = if sampled {
        stack::capture_at(pid, regs.0, regs.1, regs.2)
    } else {
        (0, 0)
    };
    let depth = depth.min(MAX_STACK_DEPTH as u32);
    let (python_frames, python_status) = if sampled {
        runtime::python::capture(pid, depth)
    } else {
        (0, PYTHON_NONE)
    };
    let python_frames = python_frames.min(MAX_PYTHON_FRAMES as u32);
    // SAFETY: plain helper call.
    let mut event_header = header(outcome.func, pid_tgid, unsafe { bpf_ktime_get_ns() });
    event_header.stack_len = depth;
    // SAFETY: this CPU's scratch slot; programs on one CPU do not preempt
    // each other. The length sent is bounded by the slot's size.
    unsafe {
        (*record).event = AllocEvent {
            header: event_header,
            args: *args,
            ret: outcome.ret,
            out: outcome.out,
            fp_frames,
            flags: outcome.flags,
            python_frames,
            python_status,
        };
        // Opaque to the compiler, so that the bound below stays in the code:
        // it knows both counts are small, the verifier must be shown.
        let words = core::hint::black_box((depth + 2 * python_frames) as usize);
        let bytes = core::slice::from_raw_parts(
            record.cast::<u8>(),
            size_of::<AllocEvent>() + words.min(RECORD_WORDS) * size_of::<u64>(),
        );
        if EVENTS.output::<[u8]>(bytes, submit_flags()).is_err() {
            // A block added to the sampled set here stays there until its
            // free, which then reaches userspace as a release of a block it
            // never saw (counted). Removing it at once cost 200 ms of
            // verification at every load (measured), for no gain in counts.
            count_loss(LossCounter::RingBufferFull);
            // A realloc's record also releases its old block.
            if releases_a_block(outcome.func, args) {
                count_loss(LossCounter::ReleaseLost);
            }
        }
    }
}

/// Whether a call's record releases a block the daemon may hold: a
/// reallocation of a non-NULL block (whether it succeeded is the daemon's
/// to decide; counting a failed one only widens the bound it reports).
#[inline(always)]
fn releases_a_block(func: u32, args: &[u64; 4]) -> bool {
    (func == AllocFn::Realloc as u32
        || func == AllocFn::Reallocarray as u32
        || func == AllocFn::Rallocx as u32
        || func == AllocFn::PyObjectRealloc as u32
        || func == AllocFn::Mremap as u32)
        && args[0] != 0
}
