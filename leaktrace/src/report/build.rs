//! Building a report from what the tracer knows: the aggregated sites
//! symbolized (Go's logical frames, Python sites naming the same frames
//! merged), the processes, totals and losses.
use std::time::Duration;

use leaktrace_common::AllocFn;

use super::{
    ContainerReport, GoroutineReadReport, GoroutineSiteReport, Losses, ProcessReport,
    PythonTypeReport, Report, RuntimeReport, SiteReport, Totals, c_library,
};
use crate::{
    daemon::{aggregate::SiteTotal, growth::GrowthTracker, heap::TableStats, sites::CallSites},
    symbolize::{Frame, FrameKind, ProcessMaps, Symbolizer},
};

/// A traced process as the tracer knows it.
pub struct ProcessInput {
    pub pid: u32,
    pub command: String,
    pub exited: bool,
    pub runtime: Option<RuntimeReport>,
    pub rss_growth_bytes: Option<i64>,
    /// Its cgroup v2 path, read when it was first tracked (and at exec).
    pub cgroup: Option<String>,
    /// The traced process that forked it (a child followed).
    pub parent: Option<u32>,
}

/// What the tracer knows when it asks for a report.
pub struct ReportInput<'a> {
    /// Growth mode (`--mode growth`).
    pub growth_mode: bool,
    pub processes: Vec<ProcessInput>,
    pub all_processes: bool,
    pub exited_processes: u64,
    pub children_not_followed: u64,
    pub command: Option<Vec<String>>,
    pub allocator_objects: Vec<String>,
    pub elapsed: Duration,
    pub is_final: bool,
    pub min_age: Duration,
    pub sample_bytes: u64,
    pub page_sample: u64,
    pub stats: TableStats,
    pub events: u64,
    pub execs: u64,
    pub losses: Losses,
    /// Entries of the kernel's set of sampled blocks at its last sweep.
    pub kernel_sampled_blocks: Option<u64>,
    pub totals: &'a [SiteTotal],
    pub sites: &'a CallSites,
    pub growth: &'a GrowthTracker,
    pub python_types: Vec<PythonTypeReport>,
    pub goroutines: Vec<GoroutineSiteReport>,
    pub goroutine_reads: Vec<GoroutineReadReport>,
}

/// Puts a site's Python frames (pid, its native frames, the kernel's word
/// pairs) into its native stack; the identity for native code.
pub type PythonSplice<'a> = &'a mut dyn FnMut(u32, Vec<Frame>, &[u64]) -> Vec<Frame>;

/// Symbolizes and assembles a report; `maps` gives each process's mappings
/// (None: nothing is known of it, its frames stay addresses).
pub fn build<'m>(
    input: ReportInput<'_>,
    maps: &dyn Fn(u32) -> Option<&'m ProcessMaps>,
    symbolizer: &mut Symbolizer,
    python: PythonSplice<'_>,
) -> Report {
    let unknown = ProcessMaps::from_mappings(0, Vec::new());
    let sites: Vec<SiteReport> = input
        .totals
        .iter()
        .map(|total| {
            let site = input.sites.get(total.site);
            SiteReport {
                pid: site.pid,
                allocator: site.func.symbol().to_string(),
                bytes: total.bytes,
                count: total.count,
                oldest_age_ms: total.oldest_age_ms,
                growth: input.growth.assess(total.site),
                frames: python(
                    site.pid,
                    go_logical_frames(
                        site.func,
                        symbolizer.symbolize_stack(
                            maps(site.pid).unwrap_or(&unknown),
                            &site.stack,
                            site.fp_frames,
                            // A page fault's first frame is the faulting
                            // instruction, every other stack's a return
                            // address.
                            site.func == AllocFn::PageFault,
                        ),
                    ),
                    &site.python,
                ),
                ids: vec![total.site],
            }
        })
        .collect();
    let (sites, c_library) = c_library::split(merge_python_sites(sites));
    let TableStats {
        allocations,
        releases,
        failed_calls,
        unmatched_releases,
        replaced_blocks,
        // Reported with the losses (Losses::table_full).
        dropped_at_cap: _,
    } = input.stats;
    let mut processes: Vec<ProcessReport> = input
        .processes
        .iter()
        .map(|process| {
            let own = sites.iter().filter(|s| s.pid == process.pid);
            ProcessReport {
                pid: process.pid,
                command: process.command.clone(),
                exited: process.exited,
                bytes: own.clone().map(|s| s.bytes).sum(),
                count: own.clone().map(|s| s.count).sum(),
                call_sites: own.count() as u64,
                runtime: process.runtime.clone(),
                rss_growth_bytes: process.rss_growth_bytes,
                cgroup: process.cgroup.clone(),
                container: process
                    .cgroup
                    .as_deref()
                    .and_then(ContainerReport::from_cgroup),
                parent: process.parent,
            }
        })
        .collect();
    processes.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.pid.cmp(&b.pid)));
    Report {
        mode: if input.growth_mode {
            "growth"
        } else {
            "allocations"
        }
        .to_owned(),
        pids: input.processes.iter().map(|p| p.pid).collect(),
        command: input.command,
        all_processes: input.all_processes,
        processes,
        allocator_objects: input.allocator_objects,
        elapsed_ms: input.elapsed.as_millis() as u64,
        is_final: input.is_final,
        min_age_ms: input.min_age.as_millis() as u64,
        sample_bytes: input.sample_bytes,
        page_sample: input.page_sample,
        totals: Totals {
            outstanding_bytes: sites.iter().map(|s| s.bytes).sum(),
            outstanding_allocations: sites.iter().map(|s| s.count).sum(),
            call_sites: sites.len() as u64,
            events: input.events,
            allocations,
            releases,
            failed_calls,
            unmatched_releases,
            replaced_blocks,
            execs: input.execs,
            exited_processes: input.exited_processes,
            children_not_followed: input.children_not_followed,
            known_call_sites: input.sites.len() as u64,
            kernel_sampled_blocks: input.kernel_sampled_blocks,
        },
        losses: input.losses,
        sites,
        c_library,
        python_types: input.python_types,
        goroutines: input.goroutines,
        goroutine_reads: input.goroutine_reads,
    }
}

/// A Go heap profile's stack (`runtime.callers`) already has one PC per
/// logical frame, inlined calls included (an inlined call's entry is its
/// inline mark's address + 1): each PC stands for the innermost frame
/// there, as `runtime.CallersFrames` and pprof read it. Expanding each PC
/// again would name every caller of an inlined call twice. Other stacks
/// are physical and keep their expansion.
pub(super) fn go_logical_frames(func: AllocFn, frames: Vec<Frame>) -> Vec<Frame> {
    if func != AllocFn::GoHeap {
        return frames;
    }
    // One PC's frames: its inlined calls, innermost first, then the
    // function that holds it (not inlined), which ends the group.
    let mut logical: Vec<Frame> = Vec::with_capacity(frames.len());
    let mut group_start = true;
    for frame in frames {
        let ends_group = !frame.inlined;
        if group_start {
            logical.push(frame);
        }
        group_start = ends_group;
    }
    logical
}

/// Sites with Python frames, merged when they name the same frames: the
/// kernel tells Python frames apart by code object and instruction, so one
/// Python line that allocates from several instructions (or through several
/// native return addresses of the eval loop) is several sites until named.
/// Native-only sites are kept as they are. Largest first, as they came.
pub(super) fn merge_python_sites(sites: Vec<SiteReport>) -> Vec<SiteReport> {
    type Key = (
        u32,
        String,
        Vec<(FrameKind, String, Option<String>, Option<u32>)>,
    );
    let key = |site: &SiteReport| -> Key {
        let frames = site
            .frames
            .iter()
            .map(|f| (f.kind, f.function.clone(), f.file.clone(), f.line))
            .collect();
        (site.pid, site.allocator.clone(), frames)
    };
    let mut merged: Vec<SiteReport> = Vec::with_capacity(sites.len());
    let mut index: std::collections::HashMap<Key, usize> = std::collections::HashMap::new();
    for site in sites {
        if !site.frames.iter().any(|f| f.kind == FrameKind::Python) {
            merged.push(site);
            continue;
        }
        match index.entry(key(&site)) {
            std::collections::hash_map::Entry::Occupied(at) => {
                let into = &mut merged[*at.get()];
                into.bytes += site.bytes;
                into.count += site.count;
                into.oldest_age_ms = into.oldest_age_ms.max(site.oldest_age_ms);
                into.ids.extend(site.ids);
                // The growth of the largest part stands for the whole.
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(merged.len());
                merged.push(site);
            }
        }
    }
    merged.sort_by_key(|site| std::cmp::Reverse(site.bytes));
    merged
}
