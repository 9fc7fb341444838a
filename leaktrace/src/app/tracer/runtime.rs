//! The tracer's look at what runs in each process and what only a live
//! process can tell: the language runtime it runs (a Python interpreter,
//! whose frames the kernel then walks and, in exact object mode, whose
//! object allocator is probed), the types of its outstanding Python
//! objects, its resident growth as `/proc` counts it, which faulting
//! addresses lie in its file mappings, and which made a huge page resident.
use leaktrace_common::AllocFn;

use super::{Tracer, monotonic_ns};
use crate::{
    app::cli::ProbePlacement,
    daemon::{
        decode::{self, Record},
        python_walks::PythonWalks,
    },
    report::RuntimeReport,
    runtime::{go::detect::GoFound, python::PythonFound},
    target::procfs::rss_anon_bytes,
};

impl Tracer {
    /// Growth mode: whether a record is a page fault at an address in one
    /// of the process's file mappings, which is not anonymous growth (the
    /// kernel sends every write fault of a traced process; see
    /// leaktrace-ebpf's `growth`). A fault kept is noted for the huge-page
    /// check.
    pub(super) fn in_file_mapping(&mut self, bytes: &[u8]) -> bool {
        let Ok(Record::Alloc(event, ..)) = decode::decode(bytes) else {
            return false;
        };
        if event.header.func != AllocFn::PageFault as u32 {
            return false;
        }
        let (pid, addr) = (event.header.pid, event.args[0]);
        let maps = self.process(pid).maps.clone();
        let maps = maps.lock().expect("maps lock");
        let in_file = maps
            .current()
            .iter()
            .any(|m| (m.start..m.end).contains(&addr));
        if !in_file {
            self.huge_pages.note_fault(pid, addr, monotonic_ns());
        }
        in_file
    }

    /// Looks for the runtime `pid` runs when its mappings changed since the
    /// last look (each file is read once, so a look is a stat per object),
    /// and warns once per object whose interpreter version is unreadable.
    /// What is traced does not change: this only names the runtime.
    pub(super) fn update_runtime(&mut self, pid: u32) {
        let Some(process) = self.processes.get_mut(&pid) else {
            return;
        };
        let shared = process.maps.clone();
        let maps = shared.lock().expect("maps lock");
        let generation = maps.generation();
        if generation == 0 || process.runtime_generation == Some(generation) {
            return;
        }
        let found = self.python.detect(maps.root(), maps.current());
        if let Some(warning) = self.python.first_warning(&found) {
            eprintln!("leaktrace: warning: {warning}");
        }
        // The Go release and object from the binary's build info; the
        // goroutine reader registers the process on its own; the heap is
        // read from the runtime's profile in allocations mode.
        let goroutines = self.goroutines.detect(pid, maps.current());
        let go = match found {
            PythonFound::NotPython => self.go.detect(maps.root(), maps.current()),
            _ => None,
        };
        process.runtime = runtime_report(&found)
            .or_else(|| go.as_ref().map(go_report))
            .or(goroutines);
        if let Some(go) = &go
            && !self.options.growth()
        {
            self.go_heap.attach(pid, go, maps.root(), maps.current());
        }
        process.runtime_generation = Some(generation);
        let PythonFound::Python(interpreter) = &found else {
            return;
        };
        if let Err(err) =
            self.python_frames
                .start(&mut self.kernel, pid, interpreter, maps.current())
        {
            if self.python_warnings == 0 {
                eprintln!(
                    "leaktrace: warning: pid {pid}'s Python frames will not be named: {err:#} (its stacks stay native; further warnings are counted)"
                );
            }
            self.python_warnings += 1;
        }
        if self.options.python_objects {
            match self.python_objects.attach(
                &mut self.kernel,
                &mut self.python_frames,
                pid,
                interpreter,
                maps.current(),
                self.options.probe_placement == ProbePlacement::Auto,
            ) {
                Ok(Some(done)) if !self.options.quiet => eprintln!("leaktrace: {done}"),
                Ok(_) => {}
                Err(err) => {
                    eprintln!("leaktrace: warning: pid {pid}: no exact object counts: {err:#}");
                }
            }
        }
    }

    /// Reads what only a live process can tell, before a report and at
    /// `run`'s exit stop (while the command's memory is still there): the
    /// types of its Python objects (exact object mode) and its resident
    /// growth (growth mode).
    pub(in crate::app) fn read_live_state(&mut self) {
        self.read_python_types();
        self.read_goroutines();
        for pid in self.go_heap.pids() {
            if self.processes.get(&pid).is_some_and(|p| !p.exited) {
                self.go_heap.read(pid);
            }
        }
        if self.options.growth() {
            self.find_given_back(super::given_back::Look::Complete);
            for (&pid, process) in &mut self.processes {
                if !process.exited
                    && let (Some(start), Some(now)) =
                        (process.rss_anon_at_attach, rss_anon_bytes(pid))
                {
                    process.rss_growth = Some(now.cast_signed() - start.cast_signed());
                }
            }
        }
    }

    /// Reads the goroutines of every Go process still there, after a look
    /// at what each runs (`run`'s command may not have been looked at yet
    /// when it reaches its exit stop).
    fn read_goroutines(&mut self) {
        let live: Vec<u32> = self
            .processes
            .iter()
            .filter(|(_, p)| !p.exited)
            .map(|(&pid, _)| pid)
            .collect();
        for &pid in &live {
            self.update_runtime(pid);
        }
        for pid in self.goroutines.pids() {
            if live.contains(&pid) {
                self.goroutines.read(pid);
            }
        }
    }

    /// Exact object mode: reads the Python type of every outstanding object
    /// block of the processes still there.
    fn read_python_types(&mut self) {
        if !self.options.python_objects {
            return;
        }
        let table = &self.pipeline.table;
        let now_ms = u64::from(table.ms_since_epoch(monotonic_ns()));
        let min_age_ms = self.options.min_age.as_millis() as u64;
        for pid in self.python_objects.pids() {
            if self.processes.get(&pid).is_some_and(|p| !p.exited) {
                self.python_objects.read_types(
                    pid,
                    table,
                    &self.pipeline.sites,
                    now_ms,
                    min_age_ms,
                );
            }
        }
    }
}

/// What a report says of the runtime found (None: no runtime).
fn runtime_report(found: &PythonFound) -> Option<RuntimeReport> {
    let (version, display_path) = match found {
        PythonFound::NotPython => return None,
        PythonFound::Python(interpreter) => (
            Some(interpreter.version.to_string()),
            &interpreter.display_path,
        ),
        PythonFound::VersionUnreadable { display_path, .. } => (None, display_path),
    };
    Some(RuntimeReport {
        kind: "python".into(),
        version,
        object: display_path.clone(),
        walks: PythonWalks::default(),
        go_heap: None,
    })
}

/// What a report says of a Go binary: "go go1.22.12 (server)", or
/// "version unreadable" when `.go.buildinfo` could not be read.
fn go_report(found: &GoFound) -> RuntimeReport {
    RuntimeReport {
        kind: "go".into(),
        version: found.build.version.clone(),
        object: found.display_path.clone(),
        walks: PythonWalks::default(),
        go_heap: None,
    }
}
