//! Report: what a user reads. Built from the aggregated sites, symbolized,
//! then written as text, folded stacks or JSON (each in its own module).

pub use build::{ProcessInput, PythonSplice, ReportInput, build};
use serde::Serialize;

use crate::{
    daemon::{growth::Growth, python_walks::PythonWalks, sites::SiteId},
    symbolize::Frame,
};

pub mod assets;
mod build;
mod by_type;
pub mod c_library;
mod escape;
pub mod folded;
pub mod goroutines;
pub mod html;
pub mod json;
pub mod metrics;
pub mod pprof;
pub mod series;
pub mod svg;
pub mod text;

pub use goroutines::{CodeLocation, GoroutineGrowth, GoroutineReadReport, GoroutineSiteReport};

/// The report format (`--format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Top call sites with their stacks, for people.
    Text,
    /// One line per call site, `root;...;leaf bytes`, for flamegraph tools.
    Folded,
    /// Every call site and counter, for programs (schema in README.md).
    Json,
    /// Gzipped profile.proto of the outstanding allocations, for
    /// `go tool pprof` (binary: needs --output).
    Pprof,
    /// Interactive flamegraph of the outstanding bytes (SVG, via inferno).
    Svg,
}

impl Format {
    /// Formats whose output is not text (refused on stdout).
    pub fn is_binary(self) -> bool {
        self == Format::Pprof
    }
}

/// Totals over everything outstanding and everything seen.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub outstanding_bytes: u64,
    pub outstanding_allocations: u64,
    pub call_sites: u64,
    /// Records received from the kernel.
    pub events: u64,
    pub allocations: u64,
    pub releases: u64,
    pub failed_calls: u64,
    /// Releases of blocks allocated before tracing began (or, in a child
    /// followed, inherited from its parent at fork: not its allocations).
    pub unmatched_releases: u64,
    /// Blocks found at an address already outstanding (a release was missed).
    pub replaced_blocks: u64,
    /// Times the process called exec (its earlier blocks were dropped).
    pub execs: u64,
    /// Processes that exited under `--all`: their tables were dropped, and
    /// what they held is not in this report.
    pub exited_processes: u64,
    /// Child processes of traced ones left unfollowed: the kernel's set of
    /// traced processes (4096) was full when they were forked.
    pub children_not_followed: u64,
    /// Call sites the daemon keeps, holding memory or not: a site that
    /// held nothing through `--forget-idle-sites` is let go (a process that
    /// runs for days allocates at ever more sites).
    pub known_call_sites: u64,
    /// Entries of the kernel's set of sampled blocks, as its last sweep
    /// counted them (null when not sampling, or before the first sweep).
    pub kernel_sampled_blocks: Option<u64>,
}

/// Everything that was lost on the way: never silently zero.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Losses {
    pub ring_buffer_full: u64,
    pub entry_slot_collisions: u64,
    pub stack_capture_failed: u64,
    pub return_without_entry: u64,
    pub sampled_map_full: u64,
    /// Allocations the daemon did not record: its table was at
    /// --max-allocations.
    pub table_full: u64,
    pub decode_errors: u64,
    /// Growth mode: faults not checked for a transparent huge page (too
    /// many regions faulted between two reports): each may have grown
    /// 2 MiB where 4 KiB is counted.
    pub huge_page_checks_skipped: u64,
    /// Allocator calls a thread left without returning (longjmp out of the
    /// allocator): each went unrecorded.
    pub abandoned_calls: u64,
    pub total: u64,
    /// Of `ring_buffer_full`, records that released a block (a free, a
    /// munmap, a realloc): the block stays outstanding here though the
    /// process gave it back. Not added to `total` again.
    pub releases_lost: u64,
    /// With releases lost, the most bytes the figures may overstate: the
    /// sum of the `releases_lost` largest outstanding blocks (which blocks
    /// were released is unknown). 0 when no release was lost.
    pub overstated_bytes_max: u64,
}

impl Losses {
    /// These counts with `total` set to their sum.
    pub fn totalled(self) -> Losses {
        let Losses {
            ring_buffer_full,
            entry_slot_collisions,
            stack_capture_failed,
            return_without_entry,
            sampled_map_full,
            table_full,
            decode_errors,
            huge_page_checks_skipped,
            abandoned_calls,
            total: _,
            releases_lost: _,
            overstated_bytes_max: _,
        } = self;
        Losses {
            total: ring_buffer_full
                + sampled_map_full
                + table_full
                + entry_slot_collisions
                + stack_capture_failed
                + return_without_entry
                + decode_errors
                + huge_page_checks_skipped
                + abandoned_calls,
            ..self
        }
    }

    /// "0 events lost" or the breakdown.
    pub fn summary(&self) -> String {
        if self.total == 0 {
            return "0 events lost".into();
        }
        let parts: Vec<String> = [
            ("ring buffer full", self.ring_buffer_full),
            ("entry slot collision", self.entry_slot_collisions),
            ("stack capture failed", self.stack_capture_failed),
            ("return without entry", self.return_without_entry),
            ("sampled-block map full", self.sampled_map_full),
            ("table at --max-allocations", self.table_full),
            ("huge-page check skipped", self.huge_page_checks_skipped),
            ("call abandoned by longjmp", self.abandoned_calls),
            ("undecodable", self.decode_errors),
        ]
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(what, n)| format!("{what}: {n}"))
        .collect();
        format!("{} events lost ({})", self.total, parts.join(", "))
    }

    /// When releases were lost, what that may do to the figures: "figures
    /// may be overstated by up to N bytes: M releases lost".
    pub fn overstatement(&self) -> Option<String> {
        (self.releases_lost > 0).then(|| {
            format!(
                "figures may be overstated by up to {} bytes: {} releases lost",
                self.overstated_bytes_max, self.releases_lost
            )
        })
    }
}

/// One call site's outstanding memory and its symbolized stack.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SiteReport {
    pub pid: u32,
    /// The allocator function called (malloc, calloc, mmap...).
    pub allocator: String,
    pub bytes: u64,
    pub count: u64,
    pub oldest_age_ms: u64,
    /// How its outstanding bytes moved over the intervals seen so far
    /// (null until there are 3 samples).
    pub growth: Option<Growth>,
    /// Innermost first: `frames[0]` called the allocator.
    pub frames: Vec<Frame>,
    /// The tracer's ids of the sites this one stands for (several when
    /// Python sites naming the same frames were merged), to find its
    /// history; not part of any format.
    #[serde(skip)]
    pub ids: Vec<SiteId>,
}

/// One traced process's share of the report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProcessReport {
    pub pid: u32,
    /// Its command line (empty when it could not be read).
    pub command: String,
    /// It exited; what it held when it did is kept (`--pid`, `run`).
    pub exited: bool,
    pub bytes: u64,
    pub count: u64,
    pub call_sites: u64,
    /// The runtime found in it (a Python interpreter), or null. Its frames
    /// are still native: this says what runs, not how it is unwound.
    pub runtime: Option<RuntimeReport>,
    /// Growth mode: how much its anonymous resident memory (`RssAnon` in
    /// `/proc/PID/status`) grew since attach, to compare with `bytes`, the
    /// growth the sites explain; null in allocations mode or when unread.
    pub rss_growth_bytes: Option<i64>,
    /// Its cgroup v2 path as `/proc/PID/cgroup` gives it (relative to
    /// leaktrace's cgroup namespace), or null: a host without cgroup v2, or
    /// the process was gone before it was read. Any text but NUL: every
    /// format escapes it.
    pub cgroup: Option<String>,
    /// The container that path names, or null.
    pub container: Option<ContainerReport>,
    /// The traced process it was forked from, when leaktrace followed it
    /// as a child; null for the processes named (`--pid`, `run`, `--all`).
    pub parent: Option<u32>,
}

/// The runtime a process runs on top of its native code.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuntimeReport {
    /// "python" or "go".
    pub kind: String,
    /// "3.11.7" (Python) or "go1.22.12" (Go), read from the object
    /// itself; null when it could not be read (then its frames stay native, and a warning said why).
    pub version: Option<String>,
    /// The object that holds the runtime, as the process sees it: the
    /// executable or a libpython, wherever it lives.
    pub object: String,
    /// Its recorded allocations by what the kernel's walk of their Python
    /// frames found (all zero until the walk runs: a version read, a layout
    /// known).
    pub walks: PythonWalks,
    /// Go, allocations mode: what was read of the runtime's own heap
    /// profile (absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub go_heap: Option<GoHeapReport>,
}

/// A Go process's heap profile as read: its sites are the report's sites
/// with allocator `go-heap`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GoHeapReport {
    /// "read" (its sites are in the report), "off" (the binary does not
    /// use runtime/pprof: the linker turned the profile off, nothing is
    /// reported) or "unreadable" (`note` says why).
    pub profile: String,
    /// `runtime.MemProfileRate` as read: mean bytes between samples (1:
    /// every allocation); null when not read.
    pub sample_rate: Option<u64>,
    /// Buckets read, and buckets past the cap left unread.
    pub buckets: u64,
    pub buckets_cut: u64,
    /// One line for people.
    pub note: String,
}

impl RuntimeReport {
    /// "python 3.11.7 (libpython3.11.so.1.0)", or "python, version
    /// unreadable (python3.11)".
    pub fn label(&self) -> String {
        let file = self.object.rsplit('/').next().unwrap_or_default();
        match &self.version {
            Some(version) => format!("{} {version} ({file})", self.kind),
            None => format!("{}, version unreadable ({file})", self.kind),
        }
    }

    /// "Python frames at 9500 of 10000 recorded allocations; 480 on
    /// threads without a Python thread state, 20 unresolved, 0 failed
    /// reads", or None before any walk.
    pub fn walks_summary(&self) -> Option<String> {
        let w = &self.walks;
        (w.total() > 0).then(|| {
            format!(
                "Python frames walked at {} of {} recorded allocations; {} on threads without a Python thread state, {} unresolved, {} failed reads",
                w.walked,
                w.total(),
                w.no_thread_state,
                w.unresolved,
                w.read_failed
            )
        })
    }
}

/// The container a process runs in, from its cgroup path (never from a
/// runtime's API: see `target::cgroup`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ContainerReport {
    /// "docker", "containerd", "cri-o", "podman" or "ecs"; null when the
    /// path does not say (Kubernetes with the cgroupfs driver).
    pub runtime: Option<String>,
    /// The full id: 64 hex digits (ECS on Fargate: 32, `-`, digits).
    pub id: String,
    /// The Kubernetes pod's uid, or null outside Kubernetes.
    pub pod: Option<String>,
    /// The pod's quality-of-service class, as Kubernetes spells it:
    /// `Guaranteed`, `Burstable` or `BestEffort`.
    pub qos: Option<String>,
}

impl ContainerReport {
    /// The container `cgroup` names, if any.
    pub(crate) fn from_cgroup(cgroup: &str) -> Option<ContainerReport> {
        let found = crate::target::cgroup::container(cgroup)?;
        Some(ContainerReport {
            runtime: found.runtime.map(|r| r.name().to_string()),
            id: found.id,
            pod: found.pod,
            qos: found.qos.map(|q| q.name().to_string()),
        })
    }

    /// The id's first 12 characters, as `docker ps` shows it.
    pub fn short_id(&self) -> &str {
        self.id.get(..12).unwrap_or(&self.id)
    }

    /// "docker 9ec39b91f3d7", or "container 9ec39b91f3d7" when the runtime
    /// is unknown: ids and runtimes are checked text, safe anywhere.
    pub fn label(&self) -> String {
        let runtime = self.runtime.as_deref().unwrap_or("container");
        format!("{runtime} {}", self.short_id())
    }
}

impl ProcessReport {
    /// The program's file name: "python3" for "/usr/bin/python3 app.py".
    pub fn comm(&self) -> &str {
        let program = self.command.split(' ').next().unwrap_or_default();
        program.rsplit('/').next().unwrap_or_default()
    }
}

/// Exact object mode's by-type view: one Python type's outstanding
/// objects in one process, read from the live process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PythonTypeReport {
    pub pid: u32,
    /// `tp_name` as the process has it (a class's name; for 2.7 old-style
    /// instances, their class's), or "(buffer, no object header)" for the
    /// allocator's blocks that hold no object.
    #[serde(rename = "type")]
    pub type_name: String,
    pub objects: u64,
    pub bytes: u64,
    /// Change since the view before (0 at the first).
    pub objects_change: i64,
    pub bytes_change: i64,
}

/// A whole report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// What was measured: "allocations" (outstanding allocations per call
    /// site) or "growth" (resident memory growth since attach per site).
    pub mode: String,
    pub pids: Vec<u32>,
    pub command: Option<Vec<String>>,
    /// Every process on the host was traced (`--all`).
    pub all_processes: bool,
    /// Each traced process, most outstanding bytes first.
    pub processes: Vec<ProcessReport>,
    pub allocator_objects: Vec<String>,
    pub elapsed_ms: u64,
    /// The last report of the trace (the process exited or tracing ended).
    #[serde(rename = "final")]
    pub is_final: bool,
    pub min_age_ms: u64,
    /// Mean bytes between samples; 0 when every allocation was recorded.
    /// When sampling, site bytes and counts are unbiased estimates.
    pub sample_bytes: u64,
    /// Growth mode kept one page in this many, by address (1: every page);
    /// above 1, bytes and pages are unbiased estimates.
    pub page_sample: u64,
    pub totals: Totals,
    pub losses: Losses,
    /// Largest first.
    pub sites: Vec<SiteReport>,
    /// What the C library holds for itself (thread stacks and their TLS,
    /// stdio buffers): kept on purpose, so not among `sites` nor in the
    /// totals (see `c_library`). Largest first.
    pub c_library: Vec<c_library::CLibrarySite>,
    /// Exact object mode (`--python-objects`): outstanding objects per
    /// Python type, most bytes first; empty otherwise.
    pub python_types: Vec<PythonTypeReport>,
    /// Every Go process's live goroutines by creation site, read at this
    /// report: the program's sites first, most goroutines first.
    pub goroutines: Vec<GoroutineSiteReport>,
    /// How each Go process's goroutines were read, or why they were not.
    pub goroutine_reads: Vec<GoroutineReadReport>,
}

impl Report {
    /// "final" or "interval", for headers.
    pub fn kind(&self) -> &'static str {
        if self.is_final { "final" } else { "interval" }
    }

    /// What was traced, for headers: "pid 42 (./prog)", "pid 1,2" or
    /// "all processes (12 traced, 3 exited)".
    pub fn target_label(&self) -> String {
        if self.all_processes {
            return format!(
                "all processes ({} traced, {} exited)",
                self.processes.len(),
                self.totals.exited_processes
            );
        }
        let pids: Vec<String> = self.pids.iter().map(u32::to_string).collect();
        match &self.command {
            Some(command) => format!("pid {} ({})", pids.join(","), command.join(" ")),
            None => format!("pid {}", pids.join(",")),
        }
    }

    /// More than one process may own the sites: say whose each one is.
    pub fn spans_processes(&self) -> bool {
        self.all_processes || self.pids.len() > 1
    }

    /// "pid 42 (python3)": whose a site is, in reports of several processes.
    pub fn process_label(&self, pid: u32) -> String {
        let name = self
            .processes
            .iter()
            .find(|p| p.pid == pid)
            .map_or("", ProcessReport::comm);
        if name.is_empty() {
            format!("pid {pid}")
        } else {
            format!("pid {pid} ({name})")
        }
    }
}

/// Renders a report in a text `format`. `top` limits the text format only:
/// the others always carry every site. Binary formats (`Format::is_binary`)
/// go through [`render_bytes`]; asking this for one is a bug and panics.
pub fn render(report: &Report, format: Format, top: usize) -> String {
    match format {
        Format::Text => text::render(report, top),
        Format::Folded => folded::render(report),
        Format::Json => json::render(report),
        Format::Svg => svg::render(report),
        Format::Pprof => panic!("--format pprof is binary: use report::render_bytes"),
    }
}

/// Renders a report in any `format`, binary ones included, as bytes.
pub fn render_bytes(report: &Report, format: Format, top: usize) -> Vec<u8> {
    match format {
        Format::Pprof => pprof::render(report),
        _ => render(report, format, top).into_bytes(),
    }
}

#[cfg(test)]
pub(crate) mod fixtures;

#[cfg(test)]
mod tests {
    use leaktrace_common::AllocFn;

    use super::*;
    use crate::symbolize::FrameKind;

    #[test]
    fn a_go_heap_stack_names_one_frame_per_pc() {
        let frame = |function: &str, address: u64, inlined: bool| Frame {
            function: function.into(),
            file: None,
            line: None,
            module: "/app".into(),
            address,
            inlined,
            fallback: false,
            kind: FrameKind::Native,
            python_unmatched: false,
        };
        // PC 1 is in `inner`, inlined into `outer`; PC 2 is the inline
        // mark's entry, in `outer`; PC 3 (a recursive call's return
        // address, the same twice) in `main`.
        let expanded = vec![
            frame("inner", 1, true),
            frame("outer", 1, false),
            frame("outer", 2, false),
            frame("main", 3, false),
            frame("main", 3, false),
        ];
        let names = |frames: Vec<Frame>| -> Vec<String> {
            frames.into_iter().map(|f| f.function).collect()
        };
        assert_eq!(
            names(build::go_logical_frames(AllocFn::GoHeap, expanded.clone())),
            ["inner", "outer", "main", "main"]
        );
        assert_eq!(
            names(build::go_logical_frames(AllocFn::Malloc, expanded)).len(),
            5
        );
    }

    #[test]
    fn losses_summary_says_zero_or_breaks_down() {
        assert_eq!(Losses::default().summary(), "0 events lost");
        let losses = Losses {
            ring_buffer_full: 3,
            stack_capture_failed: 1,
            decode_errors: 2,
            ..Default::default()
        }
        .totalled();
        assert_eq!(losses.total, 6);
        assert_eq!(
            losses.summary(),
            "6 events lost (ring buffer full: 3, stack capture failed: 1, undecodable: 2)"
        );
        assert_eq!(losses.overstatement(), None);
        let releases = Losses {
            ring_buffer_full: 5,
            releases_lost: 4,
            overstated_bytes_max: 4096,
            abandoned_calls: 1,
            ..Default::default()
        }
        .totalled();
        assert_eq!(releases.total, 6, "releases lost are among the ring's");
        assert_eq!(
            releases.overstatement().as_deref(),
            Some("figures may be overstated by up to 4096 bytes: 4 releases lost")
        );
        assert!(releases.summary().contains("call abandoned by longjmp: 1"));
    }
}
