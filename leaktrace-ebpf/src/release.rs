//! The releasing calls (free, dallocx, sdallocx, munmap, `PyObject_Free`): `release_entry`
//! sends a `ReleaseEvent` at the call's entry, where the block (or range)
//! is in the argument registers. They get no return probe, so a release
//! costs one trap.
use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_attach_cookie, bpf_get_current_pid_tgid},
    macros::uprobe,
    programs::ProbeContext,
};
use leaktrace_common::{AllocFn, LossCounter, ReleaseEvent};

use crate::{
    alloc::arguments,
    maps::{EVENTS, count_loss, header, inside_allocator, submit_flags, user_sp},
    sampling, settings,
};

#[uprobe]
pub(crate) fn release_entry(ctx: ProbeContext) -> u32 {
    // SAFETY: a uprobe context, as the helper expects.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let [addr, second, ..] = arguments(&ctx, cookie);
    if addr == 0 {
        // free(NULL) is a no-op; it costs no event (checked first: it
        // needs no map lookup).
        return 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    if settings::is_self(pid_tgid) || inside_allocator(pid_tgid as u32, user_sp(&ctx)) {
        return 0;
    }
    let func = cookie as u32;
    // When sampling, only releases of sampled blocks matter.
    if func != AllocFn::Munmap as u32
        && settings::sample_mean() != 0
        && !sampling::forget((pid_tgid >> 32) as u32, addr)
    {
        return 0;
    }
    let release = ReleaseEvent {
        header: header(func, pid_tgid, 0),
        args: [addr, second],
    };
    if EVENTS
        .output::<ReleaseEvent>(&release, submit_flags())
        .is_err()
    {
        count_loss(LossCounter::RingBufferFull);
        count_loss(LossCounter::ReleaseLost);
    }
    0
}
