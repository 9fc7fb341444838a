//! Stack walking by frame pointers: the cheapest walk there is, complete
//! in code built with frame pointers (Go, C built with
//! -fno-omit-frame-pointer). In code without them (Debian's libc, most Rust
//! binaries) it stops early or follows garbage: `dwarf` is the walk for
//! those.
use aya_ebpf::{bindings::pt_regs, helpers::bpf_probe_read_user};
use leaktrace_common::{MAX_STACK_DEPTH, RECORD_WORDS};

/// A frame record as frame-pointer code lays it out: saved rbp, then the
/// return address.
#[repr(C)]
struct FrameRecord {
    next_frame: u64,
    return_address: u64,
}

/// Fills `stack` with return addresses, innermost first, and returns how
/// many. Called at the allocator's return, where rip is the return address
/// into the caller and rbp the caller's frame.
///
/// Frame pointers are followed here, one user read per frame, rather than
/// with `bpf_get_stack`: the perf callchain machinery behind that helper cost
/// ~0.75 µs a call here, several times this loop. The walk stops at a null
/// or non-increasing frame pointer (the outermost frame, or code without
/// frame pointers) or an unreadable frame. A frame walk that finds nothing
/// past rip is normal for code without frame pointers, not a failure.
///
/// # Safety
///
/// `regs` must point at a uprobe context's saved user registers.
#[inline(always)]
pub(crate) unsafe fn walk(regs: *const pt_regs, stack: &mut [u64; RECORD_WORDS]) -> u32 {
    // SAFETY: uprobe contexts point at the thread's saved user registers.
    let (ip, mut frame) = unsafe { ((*regs).rip, (*regs).rbp) };
    stack[0] = ip;
    let mut depth = 1;
    while depth < MAX_STACK_DEPTH {
        if frame == 0 {
            break;
        }
        // SAFETY: bpf_probe_read_user checks the user address.
        let Ok(record) = (unsafe { bpf_probe_read_user(frame as *const FrameRecord) }) else {
            break;
        };
        if record.return_address == 0 {
            break;
        }
        stack[depth] = record.return_address;
        depth += 1;
        if record.next_frame <= frame {
            break;
        }
        frame = record.next_frame;
    }
    depth as u32
}
