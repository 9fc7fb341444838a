//! What the eBPF unwinder reads to unwind without frame pointers: per
//! process, its executable mappings (sorted by start) and, for each, where
//! its object's rows sit in the shared row array (rows are `UnwindRow`s
//! built from the object's .`eh_frame` by userspace).

/// Executable mappings per process the unwinder can hold.
pub const MAX_UNWIND_MAPPINGS: usize = 128;

/// Processes the unwinder can hold tables for at once.
pub const MAX_UNWIND_PROCESSES: u32 = 256;

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
