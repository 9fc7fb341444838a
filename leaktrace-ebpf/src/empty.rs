//! Programs that do nothing, for the benchmark's floor measurement
//! (`--empty-programs`): attached where the real ones would be, they show
//! what the probes cost before any of leaktrace's own work.
use aya_ebpf::{
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};

/// Benchmark floor: the same probes, attached to programs that do nothing.
#[uprobe]
pub(crate) fn empty_entry(_ctx: ProbeContext) -> u32 {
    0
}

/// Benchmark floor, return side.
#[uretprobe]
pub(crate) fn empty_return(_ctx: RetProbeContext) -> u32 {
    0
}
