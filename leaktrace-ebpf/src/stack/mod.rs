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

use aya_ebpf::bindings::pt_regs;

use crate::settings;

/// Fills the scratch record's stack with return addresses, innermost first, from the
/// user registers at the allocator's return. Returns (frames, bits of the
/// frames found by falling back to frame pointers while walking tables).
///
/// # Safety
///
/// `regs` must be a uprobe context's saved user registers.
#[inline(always)]
pub(crate) unsafe fn capture(pid: u32, regs: *const pt_regs) -> (u32, u64) {
    if settings::dwarf_stacks() {
        // SAFETY: `regs` are the saved user registers (see the contract).
        let (pc, sp, bp) = unsafe { ((*regs).rip, (*regs).rsp, (*regs).rbp) };
        dwarf::walk(pid, pc, sp, bp)
    } else {
        // SAFETY: as above.
        (unsafe { frame_pointers::walk(regs) }, 0)
    }
}
