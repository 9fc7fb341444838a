//! Tracer: what the daemon keeps while it traces, and the reports made from
//! it: the pipeline's heap table and call sites, each traced process's
//! mappings, the growth history, and the kernel side.
//!
//! Processes come and go: one named by `--pid` (or a child of one,
//! followed: see `children`) keeps its table after it exits, for the final
//! report; under `--all` an exited process's table,
//! sites, growth history, unwind slot and sampled blocks are let go at once,
//! so a daemon left running for days stays bounded.
use std::{
    collections::BTreeMap,
    io::Write as _,
    sync::{Arc, Mutex, MutexGuard},
    time::Instant,
};

use anyhow::Result;

mod aging;
mod given_back;
mod huge_pages;
mod pages;
mod reporting;
mod runtime;

use self::huge_pages::HugePageCheck;
use super::{
    children::Children,
    cli::ReportOptions,
    go_goroutines::GoGoroutines,
    go_heap::GoHeap,
    output::{own_usage, write_atomically},
    python_frames::PythonFrames,
    python_objects::PythonObjects,
    system_wide::SystemWide,
};
use crate::{
    daemon::{
        aggregate,
        growth::GrowthTracker,
        heap::HeapTable,
        history::{History, SiteBytes},
        pipeline::{Forgotten, Ingested, Pipeline},
    },
    kernel::{KernelProbes, unwind_tables::UnwindTables},
    report::{self, Format, Losses, ProcessInput, ReportInput, RuntimeReport},
    runtime::{go::detect::GoCache, python::PythonCache},
    symbolize::{ProcessMaps, Symbolizer},
    target::{
        ProbedObject,
        procfs::{cgroup_path, command_line, process_exists, rss_anon_bytes},
    },
};

/// What is traced.
pub(super) enum Targets {
    /// `run`: the command leaktrace started (its words).
    Command(Vec<String>),
    /// `--pid`: these processes.
    Pids,
    /// `--all`: every process on the host.
    All(SystemWide),
}

/// A traced process.
struct TracedProcess {
    /// Every mapping it was seen with (shared with `run`'s launcher, which
    /// reads them at the command's entry and exit stops).
    maps: Arc<Mutex<ProcessMaps>>,
    /// Its command line, for reports.
    command: String,
    exited: bool,
    /// The runtime found in it (a Python interpreter), for reports.
    runtime: Option<RuntimeReport>,
    /// The mappings' generation `runtime` was found in (None: not looked
    /// for yet).
    runtime_generation: Option<u64>,
    /// Its `RssAnon` when tracing began, and how far it has grown since
    /// (as read at the last report while it lived).
    rss_anon_at_attach: Option<u64>,
    rss_growth: Option<i64>,
    /// Its cgroup v2 path, for reports: read when it is first kept and at
    /// exec (a runtime's init process joins the container's cgroup before
    /// it execs the container's command), kept after it exits.
    cgroup: Option<String>,
    /// When a new site's stack last made its mappings be read again (see
    /// [`MAPS_REREAD_NS`]).
    maps_reread_ns: u64,
}

/// A new site whose stack holds an address outside the known mappings
/// makes the process's mappings be read again (a library loaded since),
/// at most this often per process: frame-pointer stacks through code built
/// without them hold addresses no mapping will ever cover, and under
/// `--all` reading `/proc/PID/maps` for each such site kept the event loop
/// from draining anything else. Mappings seen later still name the frames
/// (reports use every mapping a process was seen with).
const MAPS_REREAD_NS: u64 = 250_000_000;

impl TracedProcess {
    fn new(pid: u32, maps: Arc<Mutex<ProcessMaps>>, command: String) -> TracedProcess {
        TracedProcess {
            maps,
            command,
            exited: false,
            runtime: None,
            runtime_generation: None,
            rss_anon_at_attach: rss_anon_bytes(pid),
            rss_growth: None,
            cgroup: cgroup_path(pid),
            maps_reread_ns: 0,
        }
    }

    /// Growth mode: its resident growth since attach as /proc shows it.
    fn rss_growth(&self, growth_mode: bool) -> Option<i64> {
        if growth_mode { self.rss_growth } else { None }
    }
}

/// Everything the daemon keeps about the traced processes.
pub(super) struct Tracer {
    targets: Targets,
    pub kernel: KernelProbes,
    /// What was probed for `run` and `--pid` (`--all` keeps its own list).
    objects: Vec<ProbedObject>,
    /// The processes traced by pid: their probes, and the children
    /// followed.
    pub(super) children: Children,
    pub pipeline: Pipeline,
    processes: BTreeMap<u32, TracedProcess>,
    /// Which objects hold a Python interpreter, each file read once.
    python: PythonCache,
    /// Which objects are Go binaries, each file read once.
    go: GoCache,
    /// Go processes' heap profiles (allocations mode).
    go_heap: GoHeap,
    /// The Python processes whose frames the kernel walks, and their code
    /// objects.
    python_frames: PythonFrames,
    /// Python processes whose frames could not be walked (one warning).
    python_warnings: u64,
    /// Exact object mode: the object allocators probed, the by-type view.
    pub python_objects: PythonObjects,
    /// The Go processes, and their goroutines by creation site.
    pub goroutines: GoGoroutines,
    symbolizer: Symbolizer,
    /// Each site's outstanding bytes at every interval.
    growth: GrowthTracker,
    /// Growth mode: faults to check for transparent huge pages.
    huge_pages: HugePageCheck,
    /// Growth mode: where the next paced look for pages given back starts.
    given_back_resume: given_back::Resume,
    /// Each process's and top site's bytes since attach, bounded, for the
    /// page.
    history: History,
    /// The last report made for the page, and when: its script asks for
    /// the series, the tables and the flamegraph at once, and one report
    /// serves all three.
    page_report: Option<(Instant, std::rc::Rc<report::Report>)>,
    /// Reports made (each symbolizes every site), for serve's /metrics.
    reports_built: u64,
    /// The unwinder's tables, in `--stack-mode dwarf` (shared with the
    /// child thread of `run`, which loads them at the command's entry).
    pub unwind_tables: Arc<Mutex<Option<UnwindTables>>>,
    /// Unwind-table warnings not printed (one is enough to know).
    unwind_warnings: u64,
    /// Processes that exited under `--all`.
    exited_processes: u64,
    /// `CLOCK_MONOTONIC` ns when the ring buffer was last found empty:
    /// every record made before it has been read (or was lost).
    drained_ns: u64,
    /// Entries of the kernel's set of sampled blocks at the last sweep,
    /// and when it was made.
    kernel_sampled_blocks: Option<u64>,
    last_sweep: Option<Instant>,
    started: Instant,
    /// When tracing began, for the page's clock.
    started_wall: std::time::SystemTime,
    pub options: ReportOptions,
}

impl Tracer {
    pub(super) fn new(
        targets: Targets,
        kernel: KernelProbes,
        objects: Vec<ProbedObject>,
        children: Children,
        unwind_tables: Option<UnwindTables>,
        options: ReportOptions,
    ) -> Tracer {
        let mut unwind_tables = unwind_tables;
        // Under --all a new binary's tables are built off the event loop
        // (`kernel::unwind_builder`); without a thread, on it.
        if matches!(targets, Targets::All(_))
            && let Some(tables) = unwind_tables.as_mut()
            && let Err(err) = tables.build_in_background()
        {
            eprintln!("leaktrace: warning: {err:#}: unwind tables are built on the event loop");
        }
        Tracer {
            targets,
            kernel,
            objects,
            children,
            pipeline: Pipeline {
                table: HeapTable::with_epoch(monotonic_ns()).with_cap(options.max_allocations),
                ..Pipeline::default()
            },
            processes: BTreeMap::new(),
            python: PythonCache::default(),
            go: GoCache::default(),
            go_heap: GoHeap::new(options.go_heap_sampling),
            python_frames: PythonFrames::default(),
            python_warnings: 0,
            python_objects: PythonObjects::default(),
            goroutines: GoGoroutines::default(),
            symbolizer: Symbolizer::default(),
            growth: GrowthTracker::default(),
            huge_pages: HugePageCheck::new(options.growth()),
            given_back_resume: given_back::Resume::default(),
            history: History::default(),
            page_report: None,
            reports_built: 0,
            unwind_tables: Arc::new(Mutex::new(unwind_tables)),
            unwind_warnings: 0,
            exited_processes: 0,
            drained_ns: 0,
            kernel_sampled_blocks: None,
            last_sweep: None,
            started: Instant::now(),
            started_wall: std::time::SystemTime::now(),
            options,
        }
    }

    /// Arms the probes attached after the tracer was made (`--pid`, whose
    /// tables are loaded first): the trace, and its elapsed time, start now.
    pub(super) fn arm(&mut self) -> Result<()> {
        self.kernel.arm()?;
        self.started = Instant::now();
        Ok(())
    }

    /// Starts keeping `pid` with mappings shared with someone else (`run`).
    pub(super) fn adopt(&mut self, pid: u32, maps: Arc<Mutex<ProcessMaps>>, command: String) {
        self.processes
            .insert(pid, TracedProcess::new(pid, maps, command));
    }

    /// Starts keeping `pid` (if new) and reads its mappings, loading the
    /// unwind tables of objects it maps.
    pub(super) fn track(&mut self, pid: u32) {
        self.process(pid);
        self.refresh_mappings(pid);
        self.update_runtime(pid);
    }

    /// The process `pid`, kept from its first record on.
    fn process(&mut self, pid: u32) -> &TracedProcess {
        self.processes.entry(pid).or_insert_with(|| {
            TracedProcess::new(
                pid,
                Arc::new(Mutex::new(ProcessMaps::new(pid))),
                command_line(pid),
            )
        })
    }

    /// Applies the records waiting in the ring buffer, at most `limit` of
    /// them: under `--all` on a busy host records can arrive as fast as
    /// they are read, and an unbounded drain would never let the loop
    /// report, answer HTTP or stop. Returns how many were applied.
    pub(super) fn drain(
        &mut self,
        ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
        limit: usize,
    ) -> usize {
        let mut applied = 0;
        let before = monotonic_ns();
        while applied < limit {
            let Some(item) = ring.next() else {
                // Empty now: whatever was made before the drain began
                // was read.
                self.drained_ns = before;
                break;
            };
            self.ingest(&item);
            applied += 1;
        }
        applied
    }

    fn ingest(&mut self, bytes: &[u8]) {
        if self.in_file_mapping(bytes) {
            return;
        }
        match self.pipeline.ingest(bytes) {
            Ingested::Applied => {}
            // Make sure the new stack's code is in the mappings we know,
            // while the process is still there to ask.
            Ingested::NewSite { pid, stack, python } => {
                let maps = self.process(pid).maps.clone();
                let covered = {
                    let maps = maps.lock().expect("maps lock");
                    stack.iter().all(|&a| maps.covers(a.saturating_sub(1)))
                };
                let now = monotonic_ns();
                if !covered
                    && let Some(process) = self.processes.get_mut(&pid)
                    && now.saturating_sub(process.maps_reread_ns) >= MAPS_REREAD_NS
                {
                    process.maps_reread_ns = now;
                    self.refresh_mappings(pid);
                }
                // The interpreter may have been mapped since the last look
                // (`run`'s command at its entry point).
                self.update_runtime(pid);
                self.python_frames.prefetch(pid, python);
            }
            // The old image's sites are gone, and with them any use for
            // its mappings: a fresh history keeps them from hiding the new
            // image's (same addresses, other objects).
            Ingested::Exec(forgotten) => {
                let pid = forgotten.pid;
                self.let_go(forgotten);
                let command = command_line(pid);
                if let Some(process) = self.processes.get_mut(&pid) {
                    process.command = command;
                    process.cgroup = cgroup_path(pid).or(process.cgroup.take());
                    *process.maps.lock().expect("maps lock") = ProcessMaps::new(pid);
                    process.runtime = None;
                    process.runtime_generation = None;
                }
                self.python_frames.exec(pid);
                self.goroutines.forget(pid);
                self.go_heap.forget(pid);
                self.track(pid);
                if let Targets::All(system) = &mut self.targets {
                    system.exec_seen(pid);
                } else {
                    self.exec_seen_by_pid(pid);
                }
            }
            Ingested::Exit(pid) => self.exited(pid),
            Ingested::Fork {
                parent,
                child,
                traced,
                timestamp_ns,
            } => self.fork(parent, child, traced, timestamp_ns),
        }
    }

    /// Lets go of an earlier process whose pid `pid` now names another (a
    /// child followed, its pid reused): their tables must not mix.
    pub(super) fn forget_exited(&mut self, pid: u32) {
        if self.processes.get(&pid).is_some_and(|p| p.exited) {
            let forgotten = self.pipeline.forget_process(pid);
            self.let_go(forgotten);
            self.python_frames.forget(&mut self.kernel, pid);
            self.goroutines.forget(pid);
            self.processes.remove(&pid);
        }
    }

    /// Adds objects probed since the start to the report's list.
    pub(super) fn add_objects(&mut self, objects: Vec<ProbedObject>) {
        for object in objects {
            if !self
                .objects
                .iter()
                .any(|o| o.display_path == object.display_path)
            {
                self.objects.push(object);
            }
        }
    }

    /// Drops what was kept for blocks and sites the pipeline forgot.
    fn let_go(&mut self, forgotten: Forgotten) {
        self.growth.forget(&forgotten.sites);
        self.history.forget_sites(&forgotten.sites);
        if self.options.sample_mean() != 0 {
            self.kernel
                .forget_sampled(forgotten.pid, forgotten.blocks.into_iter());
        }
    }

    /// `pid` exited. Under `--all` everything about it goes; a process named
    /// by `--pid` (or `run`'s command) keeps its table for the report.
    fn exited(&mut self, pid: u32) {
        if let Some(tables) = self.unwind_tables.lock().expect("unwind lock").as_mut() {
            tables.forget_process(pid);
        }
        if let Targets::All(_) = self.targets {
            let forgotten = self.pipeline.forget_process(pid);
            self.let_go(forgotten);
            self.python_frames.forget(&mut self.kernel, pid);
            self.python_objects.forget(pid);
            self.goroutines.forget(pid);
            self.go_heap.forget(pid);
            self.history.forget_process(pid);
            if self.processes.remove(&pid).is_some() {
                self.exited_processes += 1;
            }
        } else {
            // Its table stays for the report, but its blocks leave the
            // kernel's set now: their frees will never come, and its pid
            // may serve another process (the sweep takes the rest).
            if self.options.sample_mean() != 0 {
                let blocks: Vec<u64> = self.pipeline.table.blocks_of(pid).map(|(a, _)| a).collect();
                self.kernel.forget_sampled(pid, blocks.into_iter());
            }
            self.python_frames.stop(&mut self.kernel, pid);
            self.children.exited(&mut self.kernel, pid);
            if let Some(process) = self.processes.get_mut(&pid) {
                process.exited = true;
            }
        }
    }

    /// Periodic work beyond draining: probes the allocators of processes
    /// that exec'd, and under `--all` lets go of processes whose exit
    /// record was lost.
    pub(super) fn housekeeping(&mut self, full: bool) {
        self.go_heap.watch();
        if let Some(tables) = self.unwind_tables.lock().expect("unwind lock").as_mut() {
            tables.poll();
        }
        let Targets::All(system) = &mut self.targets else {
            self.inspect_execs();
            // `run`'s command reached its entry point (its mappings
            // changed): what runtime it runs, from its start, even when no
            // allocator probe fires (a Go program). A look is a compare
            // when nothing changed.
            let pids: Vec<u32> = self.processes.keys().copied().collect();
            for pid in pids {
                self.update_runtime(pid);
            }
            return;
        };
        let (inspected, added) = system.inspect_due(&mut self.kernel);
        if !added.is_empty() {
            self.progress(&format!("now also probing {}", added.join(", ")));
        }
        for pid in inspected {
            self.track(pid);
        }
        if full {
            let gone: Vec<u32> = self
                .processes
                .keys()
                .copied()
                .filter(|&pid| !process_exists(pid))
                .collect();
            for pid in gone {
                self.exited(pid);
            }
        }
    }

    /// Rereads `pid`'s mappings and hands new executable ones to the
    /// unwinder (libraries loaded with dlopen, a new image after exec).
    fn refresh_mappings(&mut self, pid: u32) {
        let shared = self.process(pid).maps.clone();
        let mut maps = shared.lock().expect("maps lock");
        if !maps.refresh() {
            return;
        }
        let mut tables = self.unwind_tables.lock().expect("unwind lock");
        if let Some(tables) = tables.as_mut()
            && let Err(err) = tables.load_process(pid, maps.current(), maps.root())
        {
            if self.unwind_warnings == 0 {
                eprintln!(
                    "leaktrace: warning: unwind tables not updated for pid {pid}: {err:#} (its stacks fall back to frame pointers; further warnings are counted)"
                );
            }
            self.unwind_warnings += 1;
        }
    }

    /// One line for progress: what the unwind tables cost so far.
    pub(super) fn unwind_summary(&self) -> Option<String> {
        self.unwind_tables
            .lock()
            .expect("unwind lock")
            .as_ref()
            .map(UnwindTables::summary)
    }

    /// The probed objects, for reports and progress.
    fn objects(&self) -> &[ProbedObject] {
        match &self.targets {
            Targets::All(system) => &system.objects,
            _ => &self.objects,
        }
    }

    pub(super) fn object_list(&self) -> String {
        self.objects()
            .iter()
            .map(|o| format!("{} ({} functions)", o.display_path, o.functions.len()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The traced processes, for messages.
    pub(super) fn process_count(&self) -> usize {
        self.processes.len()
    }

    pub(super) fn progress(&self, message: &str) {
        if !self.options.quiet {
            eprintln!("leaktrace: {message}");
        }
    }
}

/// `CLOCK_MONOTONIC` in ns, the clock of `bpf_ktime_get_ns`.
pub(super) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
