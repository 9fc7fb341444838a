//! The settings the programs were loaded with (the CONFIG array map, one
//! `CONFIG_*` index a setting), behind one accessor each.
use aya_ebpf::{macros::map, maps::Array};
use leaktrace_common::{
    CONFIG_ENTRIES, CONFIG_GROUP_DEAD_OFFSET, CONFIG_SAMPLE_MEAN, CONFIG_SELF_PID,
    CONFIG_STACK_MODE, CONFIG_TRACE_ALL, STACK_MODE_DWARF,
};

/// Settings from userspace (`CONFIG_*` indexes).
#[map]
static CONFIG: Array<u32> = Array::with_max_entries(CONFIG_ENTRIES, 0);

/// A setting from userspace (0 when unset).
#[inline(always)]
fn config(index: u32) -> u32 {
    CONFIG.get(index).map_or(0, |value| *value)
}

/// Mean bytes between samples; 0 when every call is recorded.
#[inline(always)]
pub fn sample_mean() -> u32 {
    config(CONFIG_SAMPLE_MEAN)
}

/// Whether stacks are walked with .eh_frame tables (else frame pointers).
#[inline(always)]
pub fn dwarf_stacks() -> bool {
    CONFIG
        .get(CONFIG_STACK_MODE)
        .is_some_and(|mode| *mode == STACK_MODE_DWARF)
}

/// Whether every process is traced (`--all`).
#[inline(always)]
pub fn trace_all() -> bool {
    config(CONFIG_TRACE_ALL) != 0
}

/// Offset of `group_dead` in sched_process_exit's record; 0: no such field.
#[inline(always)]
pub fn group_dead_offset() -> usize {
    config(CONFIG_GROUP_DEAD_OFFSET) as usize
}

/// True for leaktrace's own calls. Only system-wide probes (`--all`) see
/// them; without this check the daemon would trace itself tracing.
#[inline(always)]
pub fn is_self(pid_tgid: u64) -> bool {
    config(CONFIG_SELF_PID) == (pid_tgid >> 32) as u32
}
