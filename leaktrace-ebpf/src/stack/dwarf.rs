//! Stack walking with .`eh_frame` tables, inside the program (`--stack-mode
//! dwarf`): complete stacks through code built without frame pointers.
//!
//! Each step finds the mapping holding the pc (binary search over the
//! process's executable mappings), then the row covering it in that
//! object's table (binary search over its rows), computes the CFA from rsp
//! or rbp, reads the return address at CFA-8 and, when the row says so,
//! the caller's rbp. Code without rows (JIT, anonymous code, an object
//! whose table is not loaded) is stepped with frame pointers instead, and
//! the frame is flagged so the report can say so. The loop is a `bpf_loop`,
//! so the verifier checks one step, not 64.
use core::ffi::c_void;

use aya_ebpf::{
    helpers::{bpf_probe_read_user, generated::bpf_loop},
    macros::map,
    maps::{Array, HashMap},
};
use leaktrace_common::{
    MAX_STACK_DEPTH, MAX_UNWIND_MAPPINGS, MAX_UNWIND_PROCESSES, ProcessMappings, UNWIND_CFA_RBP,
    UNWIND_CFA_RSP, UNWIND_NONE, UNWIND_OUTERMOST, UNWIND_PLT, UnwindRow,
};

use crate::maps::SCRATCH;

/// Every loaded object's rows, back to back (sized by the loader).
#[map]
static UNWIND_ROWS: Array<UnwindRow> = Array::with_max_entries(1, 0);

/// Each traced process's slot in `PROCESS_MAPPINGS` (filled by userspace):
/// looked up once per walk; each step then reads an array slot, which the
/// verifier inlines, instead of hashing the pid again.
#[map]
static PROCESS_SLOTS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_UNWIND_PROCESSES, 0);

/// Drops a process's tables (it exec'd: its mappings no longer hold): its
/// stacks fall back to frame pointers until userspace loads the new ones.
#[inline(always)]
pub(crate) fn forget_process(pid: u32) {
    let _: Result<_, _> = PROCESS_SLOTS.remove(pid);
}

/// Executable mappings of each traced process, by slot.
#[map]
static PROCESS_MAPPINGS: Array<ProcessMappings> = Array::with_max_entries(MAX_UNWIND_PROCESSES, 0);

/// The walk's state, shared with each `bpf_loop` step.
#[repr(C)]
struct Walk {
    pc: u64,
    sp: u64,
    bp: u64,
    /// Frames found by falling back to frame pointers (bit per frame).
    fp_frames: u64,
    /// The process's slot in `PROCESS_MAPPINGS`; `u32::MAX`: none.
    slot: u32,
    depth: u32,
}

/// The row covering `pc` in the tables of the process in `slot`, if any.
#[inline(always)]
fn find_row(slot: u32, pc: u64) -> Option<UnwindRow> {
    let process = PROCESS_MAPPINGS.get(slot)?;
    let count = (process.count as usize).min(MAX_UNWIND_MAPPINGS);
    // Last mapping whose start <= pc.
    let (mut low, mut high) = (0usize, count);
    for _ in 0..8 {
        if low >= high {
            break;
        }
        let middle = usize::midpoint(low, high);
        let mapping = process.mappings.get(middle)?;
        if mapping.start <= pc {
            low = middle + 1;
        } else {
            high = middle;
        }
    }
    let mapping = process.mappings.get(low.checked_sub(1)?)?;
    if pc >= mapping.end || mapping.row_count == 0 {
        return None;
    }
    let target = pc.wrapping_sub(mapping.bias);
    if target > u64::from(u32::MAX) {
        return None;
    }
    let target = target as u32;
    // Last row whose pc <= target.
    let (mut low, mut high) = (mapping.first_row, mapping.first_row + mapping.row_count);
    for _ in 0..24 {
        if high - low <= 1 {
            break;
        }
        let middle = low + (high - low) / 2;
        let row = UNWIND_ROWS.get(middle)?;
        if row.pc <= target {
            low = middle;
        } else {
            high = middle;
        }
    }
    let row = UNWIND_ROWS.get(low)?;
    (row.pc <= target).then_some(*row)
}

/// One step: from (pc, sp, bp) of a frame to its caller's. 0 continues the
/// loop, 1 stops it.
extern "C" fn step(_index: u64, context: *mut c_void) -> i64 {
    // SAFETY: bpf_loop hands back the Walk it was given.
    let walk = unsafe { &mut *context.cast::<Walk>() };
    let depth = walk.depth as usize;
    if depth >= MAX_STACK_DEPTH {
        return 1;
    }
    let Some(record) = SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // Every pc past the first is a return address: look up the call.
    let row = find_row(walk.slot, walk.pc.wrapping_sub(1));
    let kind = row.map_or(UNWIND_NONE, |r| r.kind);
    let (next_pc, next_sp, next_bp) = if kind == UNWIND_OUTERMOST {
        return 1;
    } else if kind == UNWIND_NONE {
        // No rows: one frame-pointer step.
        if walk.bp == 0 {
            return 1;
        }
        // SAFETY: bpf_probe_read_user checks the user address.
        let Ok([saved_bp, return_address]) =
            (unsafe { bpf_probe_read_user(walk.bp as *const [u64; 2]) })
        else {
            return 1;
        };
        walk.fp_frames |= 1 << depth;
        (return_address, walk.bp + 16, saved_bp)
    } else {
        let row = row.unwrap_or_default();
        let cfa = match kind {
            UNWIND_CFA_RSP => walk.sp.wrapping_add(i64::from(row.cfa_offset) as u64),
            UNWIND_CFA_RBP => walk.bp.wrapping_add(i64::from(row.cfa_offset) as u64),
            UNWIND_PLT => walk.sp + 8 + if walk.pc & 15 >= 11 { 8 } else { 0 },
            _ => return 1,
        };
        // SAFETY: bpf_probe_read_user checks the user address.
        let Ok(return_address) = (unsafe { bpf_probe_read_user((cfa - 8) as *const u64) }) else {
            return 1;
        };
        let bp = if row.rbp_offset != 0 {
            let at = cfa.wrapping_add(i64::from(row.rbp_offset) as u64);
            // SAFETY: as above.
            match unsafe { bpf_probe_read_user(at as *const u64) } {
                Ok(bp) => bp,
                Err(_) => return 1,
            }
        } else {
            walk.bp
        };
        (return_address, cfa, bp)
    };
    // The stack grows down: a caller's frame is above its callee's.
    if next_pc == 0 || next_sp <= walk.sp {
        return 1;
    }
    // SAFETY: this CPU's scratch slot; `depth` was checked above.
    unsafe { (*record).stack[depth] = next_pc };
    walk.depth += 1;
    walk.pc = next_pc;
    walk.sp = next_sp;
    walk.bp = next_bp;
    0
}

/// Walks the stack from the registers at the allocator's return into the
/// scratch record's stack. Returns (frames, frame-pointer fallback bits).
#[inline(always)]
pub(crate) fn walk(pid: u32, pc: u64, sp: u64, bp: u64) -> (u32, u64) {
    let Some(record) = SCRATCH.get_ptr_mut(0) else {
        return (0, 0);
    };
    // SAFETY: this CPU's scratch slot.
    unsafe { (*record).stack[0] = pc };
    // SAFETY: read-only lookup.
    let slot = unsafe { PROCESS_SLOTS.get(pid) }.map_or(u32::MAX, |slot| *slot);
    let mut state = Walk {
        pc,
        sp,
        bp,
        fp_frames: 0,
        slot,
        depth: 1,
    };
    // SAFETY: the callback and its context live for the call.
    unsafe {
        bpf_loop(
            (MAX_STACK_DEPTH - 1) as u32,
            step as *mut c_void,
            (&raw mut state).cast(),
            0,
        )
    };
    (state.depth, state.fp_frames)
}
