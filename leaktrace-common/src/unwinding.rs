//! What the eBPF unwinder reads to unwind without frame pointers: per
//! process, its executable mappings (sorted by start) and, for each, where
//! its object's rows sit in the shared row array (rows are `UnwindRow`s
//! built from the object's .`eh_frame` by userspace).

/// Executable mappings per process the unwinder can hold.
pub const MAX_UNWIND_MAPPINGS: usize = 128;

/// Processes the unwinder can hold tables for at once.
pub const MAX_UNWIND_PROCESSES: u32 = 256;

/// `CONFIG[CONFIG_STACK_MODE]`: how stacks are captured.
pub const CONFIG_STACK_MODE: u32 = 0;
/// Frame pointers only.
pub const STACK_MODE_FP: u32 = 0;
/// .`eh_frame` tables where there are rows, frame pointers elsewhere.
pub const STACK_MODE_DWARF: u32 = 1;
/// `CONFIG[CONFIG_SELF_PID]`: leaktrace's own pid, which the probes ignore:
/// with system-wide probes (`--all`) the daemon's own allocations would
/// otherwise feed it records about itself without end.
pub const CONFIG_SELF_PID: u32 = 2;
/// `CONFIG[CONFIG_TRACE_ALL]`: 1 when every process is traced (`--all`):
/// the exec and exit tracepoints then report every process, not only the
/// pids in `TRACED_PIDS`.
pub const CONFIG_TRACE_ALL: u32 = 3;
/// `CONFIG[CONFIG_GROUP_DEAD_OFFSET]`: offset of `group_dead` in the
/// `sched_process_exit` tracepoint's record (read from its format file by
/// userspace); 0 when the kernel has no such field, and then a process
/// counts as gone when its main thread exits.
pub const CONFIG_GROUP_DEAD_OFFSET: u32 = 4;
pub const CONFIG_ENTRIES: u32 = 5;

/// One executable mapping of a process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindMapping {
    pub start: u64,
    pub end: u64,
    /// Address minus the object's ELF virtual address, for this mapping.
    pub bias: u64,
    /// The object's rows: `row_count` rows from `first_row` in the row array.
    pub first_row: u32,
    pub row_count: u32,
}

/// A process's executable mappings, sorted by `start`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcessMappings {
    pub count: u32,
    pub _padding: u32,
    pub mappings: [UnwindMapping; MAX_UNWIND_MAPPINGS],
}
