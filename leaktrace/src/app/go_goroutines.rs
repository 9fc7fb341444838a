//! The tracer's Go side: which traced processes run a Go binary, and their
//! goroutines by creation site, read from the live process at each report
//! (and at `run`'s exit stop, while the command's memory is still there),
//! in either mode. A process that exited keeps the view read last.
//!
//! Each executable is inspected once per file (device, inode): its
//! symbols, its DWARF's `runtime.g`, its wait reasons. A Go binary whose
//! goroutines cannot be read (stripped, today) gets a note in the report
//! saying why, not silence.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs,
    path::Path,
    sync::Arc,
};

use crate::{
    report::{
        CodeLocation, GoroutineGrowth, GoroutineReadReport, GoroutineSiteReport, RuntimeReport,
    },
    runtime::go::{
        detect::has_go_sections,
        go_wrapper,
        goroutine_source::{GoBinary, GoroutineSource, Origin, inspect},
        goroutines::{ProcessGoroutines, is_runtime_internal},
        goroutines_live::{BatchMemory as _, Limits, VmReader, read_goroutines},
    },
    symbolize::Frame,
    target::{
        elf::load_bias,
        procfs::{Mapping, file_identity},
    },
};

/// The largest executable read to look for Go in it.
const MAX_BINARY: u64 = 2 << 30;

/// What a report says of a process traced in allocations mode that has no
/// allocator (a pure Go program).
pub(crate) const HEAP_NOTE: &str =
    "no allocator to probe: its heap is read from the Go runtime's own profile";

/// One Go process.
struct GoProcess {
    version: Option<String>,
    /// How to read its goroutines, or why they are not read.
    source: Result<Arc<GoroutineSource>, String>,
    bias: u64,
    goroutines: ProcessGoroutines,
    /// Reads that found nothing at all (the process was going away).
    empty_reads: u64,
}

#[derive(Default)]
pub(super) struct GoGoroutines {
    /// Each executable inspected, by file.
    binaries: HashMap<(u64, u64), Arc<GoBinary>>,
    processes: BTreeMap<u32, GoProcess>,
    /// Go processes that map no code but their executable (no C library:
    /// no allocator to probe in allocations mode).
    heap_untraced: HashSet<u32>,
    /// The function each `go` wrapper calls, by (pid, wrapper entry).
    callees: std::sync::Mutex<HashMap<(u32, u64), Option<CodeLocation>>>,
}

/// Whether the executable at `path` is a Go binary (from its section
/// headers alone).
pub(crate) fn is_go_file(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.len() <= MAX_BINARY) && has_go_sections(path)
}

impl GoGoroutines {
    /// Looks at `pid`'s executable (once per file) and, when it is Go,
    /// starts keeping the process; returns what the report says of its
    /// runtime.
    pub(super) fn detect(&mut self, pid: u32, mappings: &[Mapping]) -> Option<RuntimeReport> {
        let exe = format!("/proc/{pid}/exe");
        let identity = file_identity(Path::new(&exe))?;
        let binary = self
            .binaries
            .entry(identity)
            .or_insert_with(|| {
                // Headers first: under `--all` every new program is looked
                // at here, on the event loop, and reading a big one whole
                // (a debug build of hundreds of MiB) to find it is not Go
                // stalled draining.
                Arc::new(match is_go_file(Path::new(&exe)).then(|| fs::read(&exe)) {
                    Some(Ok(data)) => inspect(&data),
                    _ => GoBinary::NotGo,
                })
            })
            .clone();
        let GoBinary::Go(source) = &*binary else {
            self.processes.remove(&pid);
            return None;
        };
        let display = fs::read_link(&exe)
            .map_or_else(|_| String::new(), |p| p.to_string_lossy().into_owned());
        let version = source.as_ref().ok().and_then(|s| s.version.clone());
        let alone = mappings
            .iter()
            .filter(|m| m.executable && m.path.starts_with('/'))
            .all(|m| *m.path == *display);
        if alone {
            self.heap_untraced.insert(pid);
        } else {
            self.heap_untraced.remove(&pid);
        }
        if let std::collections::btree_map::Entry::Vacant(slot) = self.processes.entry(pid) {
            let bias = source
                .as_ref()
                .ok()
                .map_or(0, |s| process_bias(s, &display, mappings));
            slot.insert(GoProcess {
                version: version.clone(),
                source: source.clone().map(Arc::new),
                bias,
                goroutines: ProcessGoroutines::default(),
                empty_reads: 0,
            });
            // The first read is the baseline "since attach" counts from.
            self.read(pid);
        }
        Some(RuntimeReport {
            kind: "go".into(),
            version,
            object: display,
            walks: crate::daemon::python_walks::PythonWalks::default(),
            go_heap: None,
        })
    }

    /// Reads `pid`'s goroutines now (the process must be there). A read
    /// that finds nothing (the process going away) keeps the view before.
    pub(super) fn read(&mut self, pid: u32) {
        let Some(process) = self.processes.get_mut(&pid) else {
            return;
        };
        let Ok(source) = &process.source else {
            return;
        };
        let snapshot = read_goroutines(&VmReader { pid }, source, process.bias, Limits::default());
        if snapshot.groups.is_empty() && snapshot.stats.failed_reads > 0 {
            process.empty_reads += 1;
            return;
        }
        process.goroutines.record(snapshot);
    }

    /// The Go processes kept.
    pub(super) fn pids(&self) -> Vec<u32> {
        self.processes.keys().copied().collect()
    }

    /// `pid` exec'd or is gone for good: its view goes.
    pub(super) fn forget(&mut self, pid: u32) {
        self.processes.remove(&pid);
        self.callees
            .get_mut()
            .expect("callees lock")
            .retain(|(p, _), _| *p != pid);
        self.heap_untraced.remove(&pid);
    }

    /// The function a site's goroutines start in: the one at `startpc`,
    /// or, when that is the wrapper a `go` statement with arguments gets,
    /// the function the wrapper calls (see `go_wrapper`). Wrappers are
    /// decoded once per process and address.
    fn start(
        &self,
        pid: u32,
        startpc: u64,
        created_at: &CodeLocation,
        symbolize: &mut dyn FnMut(u32, u64) -> Vec<Frame>,
    ) -> CodeLocation {
        // The entry itself: one past it, as a return address.
        let entry = location(symbolize(pid, startpc.wrapping_add(1)).last());
        let at_go_statement =
            entry.file.is_some() && entry.file == created_at.file && entry.line == created_at.line;
        if !go_wrapper::may_be_wrapper(&entry.function, at_go_statement) {
            return entry;
        }
        let mut cache = self.callees.lock().expect("callees lock");
        let callee = cache.entry((pid, startpc)).or_insert_with(|| {
            let mut code = [0u8; go_wrapper::WRAPPER_CODE];
            if !(VmReader { pid }).read(startpc, &mut code) {
                return None;
            }
            go_wrapper::call_targets(&code, startpc)
                .into_iter()
                .map(|target| location(symbolize(pid, target.wrapping_add(1)).last()))
                .find(|callee| !callee.function.starts_with("runtime."))
        });
        callee.clone().unwrap_or(entry)
    }

    /// The report's rows: every site of every Go process (the program's
    /// first, most goroutines first), named by `symbolize` (pid, address
    /// as a return address: looked up at address - 1), and how each
    /// process was read.
    pub(super) fn rows(
        &self,
        growth_mode: bool,
        symbolize: &mut dyn FnMut(u32, u64) -> Vec<Frame>,
    ) -> (Vec<GoroutineSiteReport>, Vec<GoroutineReadReport>) {
        let mut sites = Vec::new();
        let mut reads = Vec::new();
        for (&pid, process) in &self.processes {
            let stats = process.goroutines.last.stats;
            let mut notes = Vec::new();
            if let Err(why) = &process.source {
                notes.push(why.clone());
            }
            if !growth_mode && self.heap_untraced.contains(&pid) {
                notes.push(HEAP_NOTE.to_owned());
            }
            reads.push(GoroutineReadReport {
                pid,
                go_version: process.version.clone(),
                layout: process.source.as_ref().ok().map(|s| {
                    match s.layout_origin {
                        Origin::Binary => "dwarf",
                        Origin::ReleaseTable => "release table",
                    }
                    .to_owned()
                }),
                reads: process.goroutines.reads,
                listed: stats.listed,
                live: stats.live,
                dead: stats.dead,
                failed_reads: stats.failed_reads + process.empty_reads,
                torn: stats.torn,
                truncated: stats.truncated,
                note: (!notes.is_empty()).then(|| notes.join("; ")),
            });
            for (key, group, growth) in process.goroutines.rows() {
                // The traceback's "created by": the call before gopc.
                let created_at = location(symbolize(pid, key.gopc).first());
                let start = self.start(pid, key.startpc, &created_at, symbolize);
                sites.push(GoroutineSiteReport {
                    pid,
                    runtime_internal: is_runtime_internal(&start.function),
                    created_at,
                    start,
                    count: group.count,
                    wait_reasons: group.wait_reasons.clone(),
                    stack_bytes: group.stack_bytes,
                    growth: GoroutineGrowth {
                        since_previous: growth.since_previous,
                        since_attach: growth.since_attach,
                        only_grows: growth.only_grows,
                    },
                });
            }
        }
        sites.sort_by(|a, b| {
            a.runtime_internal
                .cmp(&b.runtime_internal)
                .then(b.count.cmp(&a.count))
                .then(a.pid.cmp(&b.pid))
        });
        (sites, reads)
    }
}

fn location(frame: Option<&Frame>) -> CodeLocation {
    frame.map_or_else(CodeLocation::default, |f| CodeLocation {
        function: f.function.clone(),
        file: f.file.clone(),
        line: f.line,
    })
}

/// Where the binary is loaded in the process: 0 for a fixed-address
/// executable, else from the mapping of its file that holds offset 0.
fn process_bias(source: &GoroutineSource, display: &str, mappings: &[Mapping]) -> u64 {
    if !source.position_independent {
        return 0;
    }
    mappings
        .iter()
        .filter(|m| &*m.path == display)
        .find_map(|m| load_bias(&source.segments, m))
        .unwrap_or(0)
}
