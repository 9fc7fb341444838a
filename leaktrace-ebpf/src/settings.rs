//! The settings the programs were loaded with, kept where the verifier can
//! see them: a read-only global that the loader fills in before it loads the
//! programs (`EbpfLoader::override_global("SETTINGS", ..)`). Each read is a
//! load from a frozen `.rodata` map, whose value the verifier knows: the
//! branches a setting rules out are neither verified nor run, and no probe
//! pays a map lookup for its settings.
use leaktrace_common::{STACK_MODE_DWARF, Settings};

/// The loader overwrites these zeros; userspace finds the symbol by name.
#[unsafe(no_mangle)]
static SETTINGS: Settings = Settings {
    stack_mode: 0,
    sample_mean: 0,
    self_pid: 0,
    trace_all: 0,
    group_dead_offset: 0,
    task_fsbase_offset: 0,
    follow_children: 0,
    task_pid_offset: 0,
    task_tgid_offset: 0,
    page_sample_shift: 0,
    task_group_leader_offset: 0,
    task_start_time_offset: 0,
    sample_seed: 0,
};

/// Reads one field of `SETTINGS`. The read is volatile: the compiler sees
/// an immutable static of zeros and would otherwise fold the read itself.
macro_rules! setting {
    ($field:ident) => {
        // SAFETY: a field of an aligned, initialised static; nothing writes
        // it once the programs are loaded (the map is frozen).
        unsafe { core::ptr::read_volatile(&raw const SETTINGS.$field) }
    };
}

/// Mean bytes between samples; 0 when every call is recorded.
#[inline(always)]
pub(crate) fn sample_mean() -> u32 {
    setting!(sample_mean)
}

/// Seed of the per-CPU generators that pick sampling gaps.
#[inline(always)]
pub(crate) fn sample_seed() -> u64 {
    setting!(sample_seed)
}

/// Whether stacks are walked with .`eh_frame` tables (else frame pointers).
#[inline(always)]
pub(crate) fn dwarf_stacks() -> bool {
    setting!(stack_mode) == STACK_MODE_DWARF
}

/// Whether every process is traced (`--all`).
#[inline(always)]
pub(crate) fn trace_all() -> bool {
    setting!(trace_all) != 0
}

/// Offset of `group_dead` in `sched_process_exit`'s record; 0: no such field.
#[inline(always)]
pub(crate) fn group_dead_offset() -> usize {
    setting!(group_dead_offset) as usize
}

/// True for leaktrace's own calls. Only system-wide probes (`--all`) see
/// them; without this check the daemon would trace itself tracing.
#[inline(always)]
pub(crate) fn is_self(pid_tgid: u64) -> bool {
    setting!(self_pid) == (pid_tgid >> 32) as u32
}

/// Offset of the FS base in `task_struct`; 0 when unknown (no Python walk).
#[inline(always)]
pub(crate) fn task_fsbase_offset() -> u32 {
    setting!(task_fsbase_offset)
}

/// Growth mode keeps one page in 2^shift.
#[inline(always)]
pub(crate) fn page_sample_shift() -> u32 {
    setting!(page_sample_shift)
}

/// Whether processes forked by a traced process are traced too.
#[inline(always)]
pub(crate) fn follow_children() -> bool {
    setting!(follow_children) != 0
}

/// Offsets of `pid` and `tgid` in `task_struct` (0 when not following
/// children).
#[inline(always)]
pub(crate) fn task_id_offsets() -> (u32, u32) {
    (setting!(task_pid_offset), setting!(task_tgid_offset))
}

/// Offsets of `group_leader` and `start_time` in `task_struct` (0 when
/// unknown: stale sampled blocks are then not told apart).
#[inline(always)]
pub(crate) fn task_start_offsets() -> (u32, u32) {
    (
        setting!(task_group_leader_offset),
        setting!(task_start_time_offset),
    )
}
