//! System-wide tracing (`--all`): probes the allocator of every process on
//! the host, once per object file, for every process that maps it.
//!
//! A uprobe attached without a pid fires in any process that maps the file,
//! including processes started later, so a new process that uses an
//! allocator already probed (the C library, nearly always) is traced from
//! its first call. A new process whose allocator is not probed yet (a static
//! binary, a program linked with jemalloc) is inspected shortly after its
//! exec, once its dynamic linker has mapped its libraries, and its
//! allocator is probed then: what it allocated before that is not seen
//! (its frees of those blocks count as releases of blocks from before
//! tracing).
//!
//! The file work (reading a new object's symbols, the placement scan) runs
//! on a worker thread (`object_inspector`): the loop hands it the pids due
//! and attaches the uprobes of the objects it answers with.
use std::{
    collections::HashSet,
    fs,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use super::object_inspector::{Answer, Found, Inspector, Job, ObjectReader};
use crate::{
    kernel::{KernelProbes, Scope, attach},
    target::{ProbedObject, procfs},
};

/// How long after its exec a process is first inspected: its dynamic
/// linker maps its libraries in about a millisecond.
pub(super) const FIRST_INSPECTION: Duration = Duration::from_millis(30);
/// Later attempts, for a process whose allocator was not mapped yet.
pub(super) const RETRY_INSPECTION: Duration = Duration::from_millis(200);
pub(super) const INSPECTIONS: u32 = 5;

/// A process that exec'd, waiting to be inspected or for the worker's
/// answer.
struct Pending {
    pid: u32,
    /// Which exec of `pid` this is (an answer about an earlier one only
    /// probes what it found).
    generation: u64,
    due: Instant,
    attempts: u32,
}

/// The allocators probed for every process, and the processes to inspect.
pub(super) struct SystemWide {
    /// (device, inode) of every object probed: a file probed twice would
    /// send every call twice.
    probed: HashSet<(u64, u64)>,
    /// What is probed, in the order it was found.
    pub objects: Vec<ProbedObject>,
    /// Waiting for their time.
    pending: Vec<Pending>,
    /// Sent to the worker, waiting for its answer.
    in_flight: Vec<Pending>,
    generations: u64,
    /// The first pass's reader, until the worker takes it over (boxed:
    /// only used at start).
    reader: Option<Box<ObjectReader>>,
    inspector: Option<Inspector>,
    /// The worker is gone (it never should be): said once.
    worker_lost: bool,
    /// `--probe-placement auto`.
    placed: bool,
    /// Allocations mode: probe allocators. In growth mode nothing is
    /// probed (the kernel's tracepoints see every process) and processes
    /// are only tracked.
    probes: bool,
}

impl SystemWide {
    pub(super) fn new(placed: bool, probes: bool) -> SystemWide {
        SystemWide {
            probed: HashSet::new(),
            objects: Vec::new(),
            pending: Vec::new(),
            in_flight: Vec::new(),
            generations: 0,
            reader: Some(Box::default()),
            inspector: None,
            worker_lost: false,
            placed,
            probes,
        }
    }

    /// Probes the allocator of every process running now. Returns the pids
    /// whose allocator was found (kernel threads, and programs with no
    /// malloc such as Go's, have none).
    ///
    /// This first pass reads on the caller's thread: nothing is drained
    /// yet. The worker then starts with what it read.
    pub(super) fn attach_running(&mut self, kernel: &mut KernelProbes) -> Result<Vec<u32>> {
        if !self.probes {
            // Every user-space process (kernel threads have no executable).
            return Ok(running_pids()
                .into_iter()
                .filter(|pid| fs::read_link(format!("/proc/{pid}/exe")).is_ok())
                .collect());
        }
        let mut reader = self.reader.take().unwrap_or_default();
        let mut found = Vec::new();
        for pid in running_pids() {
            match reader.inspect(pid) {
                Found::Allocators(objects) => {
                    self.probe(objects, kernel);
                    found.push(pid);
                }
                // No malloc: tracked for its goroutines.
                Found::Go => found.push(pid),
                Found::Nothing => {}
            }
        }
        if self.objects.is_empty() {
            bail!("no process on this host has an allocator leaktrace can probe");
        }
        self.inspector = Some(Inspector::start(*reader)?);
        Ok(found)
    }

    /// Probes whichever of `objects` is not probed yet. A file that cannot
    /// be probed is reported and skipped: the other processes are still
    /// traced.
    fn probe(&mut self, objects: Vec<ProbedObject>, kernel: &mut KernelProbes) {
        for object in objects {
            let Some(identity) = procfs::file_identity(&object.path) else {
                continue;
            };
            if !self.probed.insert(identity) {
                continue;
            }
            let plan = attach::plan(std::slice::from_ref(&object), self.placed);
            match kernel.attach(&plan, Scope::AllProcesses) {
                // The probes stay until leaktrace exits: no need for their
                // links.
                Ok(_links) => self.objects.push(object),
                Err(err) => eprintln!(
                    "leaktrace: warning: {} not traced: {err:#}",
                    object.display_path
                ),
            }
        }
    }

    /// A process exec'd: inspect it soon (an inspection of its previous
    /// image, waiting or under way, no longer counts).
    pub(super) fn exec_seen(&mut self, pid: u32) {
        self.pending.retain(|p| p.pid != pid);
        self.in_flight.retain(|p| p.pid != pid);
        self.generations += 1;
        self.pending.push(Pending {
            pid,
            generation: self.generations,
            due: Instant::now() + FIRST_INSPECTION,
            attempts: 0,
        });
    }

    /// Probes the allocators the worker found since the last call, and
    /// hands it the processes whose time has come. Returns the pids
    /// inspected successfully (their mappings are worth reading now) and
    /// the objects newly probed.
    pub(super) fn inspect_due(&mut self, kernel: &mut KernelProbes) -> (Vec<u32>, Vec<String>) {
        let now = Instant::now();
        let known = self.objects.len();
        let mut inspected = Vec::new();
        let answers = self
            .inspector
            .as_ref()
            .map(Inspector::answers)
            .unwrap_or_default();
        for answer in answers {
            self.answered(answer, now, kernel, &mut inspected);
        }
        let mut waiting = Vec::new();
        for pending in std::mem::take(&mut self.pending) {
            if pending.due > now {
                waiting.push(pending);
            } else if procfs::process_exists(pending.pid) {
                if self.probes {
                    self.dispatch(pending);
                } else {
                    inspected.push(pending.pid);
                }
            }
        }
        self.pending.append(&mut waiting);
        let added = self.objects[known..]
            .iter()
            .map(|o| o.display_path.clone())
            .collect();
        (inspected, added)
    }

    /// Hands `pending` to the worker.
    fn dispatch(&mut self, pending: Pending) {
        let job = Job {
            pid: pending.pid,
            generation: pending.generation,
        };
        if self.inspector.as_ref().is_some_and(|i| i.send(job)) {
            self.in_flight.push(pending);
        } else if !self.worker_lost {
            self.worker_lost = true;
            eprintln!(
                "leaktrace: warning: the object inspector is gone: allocators of processes started from now on are not probed"
            );
        }
    }

    /// What the worker found in a process.
    fn answered(
        &mut self,
        answer: Answer,
        now: Instant,
        kernel: &mut KernelProbes,
        inspected: &mut Vec<u32>,
    ) {
        let current = self
            .in_flight
            .iter()
            .position(|p| p.pid == answer.pid && p.generation == answer.generation)
            .map(|at| self.in_flight.swap_remove(at));
        match (answer.found, current) {
            // Probed even for an image since replaced: some process maps
            // that allocator, and a file is probed once however found.
            (Found::Allocators(objects), current) => {
                self.probe(objects, kernel);
                if current.is_some() {
                    inspected.push(answer.pid);
                }
            }
            // A Go program has no malloc: tracked for its goroutines.
            (Found::Go, Some(_)) => inspected.push(answer.pid),
            // Its libraries may not be mapped yet; or it has no allocator
            // at all (then it is given up on).
            (Found::Nothing, Some(mut pending)) if pending.attempts + 1 < INSPECTIONS => {
                pending.attempts += 1;
                pending.due = now + RETRY_INSPECTION;
                self.pending.push(pending);
            }
            (Found::Go | Found::Nothing, _) => {}
        }
    }
}

/// Every process now running but leaktrace.
fn running_pids() -> Vec<u32> {
    let own = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&pid| pid != own)
        .collect();
    pids.sort_unstable();
    pids
}
