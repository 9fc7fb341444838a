//! Native stack capture at the allocator's return: the seam between the
//! record being built and the two ways of walking a stack. Which way is a
//! setting fixed at load (`--stack-mode`), so the verifier only checks the
//! one in use.
//!
//! - `frame_pointers`: follow the rbp chain, one user read per frame.
//! - `dwarf`: step with .`eh_frame` rows that userspace loads per object,
//!   falling back to frame pointers where an object has none.
pub(crate) mod dwarf;
mod frame_pointers;

use crate::settings;

/// Fills the scratch record's stack with return addresses, innermost first,
/// from the thread's user rip, rsp and rbp (at the allocator's return, or
/// saved by the kernel at a page fault). Returns (frames, bits of the frames
/// found by falling back to frame pointers while walking tables).
#[inline(always)]
pub(crate) fn capture_at(pid: u32, pc: u64, sp: u64, bp: u64) -> (u32, u64) {
    if settings::dwarf_stacks() {
        dwarf::walk(pid, pc, sp, bp)
    } else {
        (frame_pointers::walk(pc, bp), 0)
    }
}
