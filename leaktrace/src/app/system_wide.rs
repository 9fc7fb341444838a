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
use std::{
    collections::{HashMap, HashSet},
    fs,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use super::go_goroutines::is_go_file;
use crate::{
    kernel::{KernelProbes, Scope, attach},
    target::{self, ProbedObject, SymbolCache, procfs},
};

/// How long after its exec a process is first inspected: its dynamic
/// linker maps its libraries in about a millisecond.
pub(super) const FIRST_INSPECTION: Duration = Duration::from_millis(30);
/// Later attempts, for a process whose allocator was not mapped yet.
pub(super) const RETRY_INSPECTION: Duration = Duration::from_millis(200);
pub(super) const INSPECTIONS: u32 = 5;

/// A process that exec'd, waiting to be inspected.
struct Pending {
    pid: u32,
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
    pending: Vec<Pending>,
    cache: SymbolCache,
    /// `--probe-placement auto`.
    placed: bool,
    /// Allocations mode: probe allocators. In growth mode nothing is
    /// probed (the kernel's tracepoints see every process) and processes
    /// are only tracked.
    probes: bool,
    /// Executables with no allocator, by file: Go or not (a Go process is
    /// tracked all the same, for its goroutines).
    go_files: HashMap<(u64, u64), bool>,
}

impl SystemWide {
    pub(super) fn new(placed: bool, probes: bool) -> SystemWide {
        SystemWide {
            probed: HashSet::new(),
            objects: Vec::new(),
            pending: Vec::new(),
            cache: SymbolCache::default(),
            placed,
            probes,
            go_files: HashMap::new(),
        }
    }

    /// Whether `pid` runs a Go executable (each file read once).
    fn runs_go(&mut self, pid: u32) -> bool {
        let exe = format!("/proc/{pid}/exe");
        let Some(identity) = procfs::file_identity(std::path::Path::new(&exe)) else {
            return false;
        };
        *self
            .go_files
            .entry(identity)
            .or_insert_with(|| is_go_file(std::path::Path::new(&exe)))
    }

    /// Probes the allocator of every process running now. Returns the pids
    /// whose allocator was found (kernel threads, and programs with no
    /// malloc such as Go's, have none).
    pub(super) fn attach_running(&mut self, kernel: &mut KernelProbes) -> Result<Vec<u32>> {
        if !self.probes {
            // Every user-space process (kernel threads have no executable).
            return Ok(running_pids()
                .into_iter()
                .filter(|pid| fs::read_link(format!("/proc/{pid}/exe")).is_ok())
                .collect());
        }
        let mut found = Vec::new();
        for pid in running_pids() {
            if let Ok(objects) = target::objects_for_pid_cached(pid, &mut self.cache) {
                self.probe(objects, kernel);
                found.push(pid);
            } else if self.runs_go(pid) {
                // No malloc: tracked for its goroutines.
                found.push(pid);
            }
        }
        if self.objects.is_empty() {
            bail!("no process on this host has an allocator leaktrace can probe");
        }
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

    /// A process exec'd: inspect it soon.
    pub(super) fn exec_seen(&mut self, pid: u32) {
        self.pending.retain(|p| p.pid != pid);
        self.pending.push(Pending {
            pid,
            due: Instant::now() + FIRST_INSPECTION,
            attempts: 0,
        });
    }

    /// Inspects the processes whose time has come, probing allocators not
    /// probed yet. Returns the pids inspected successfully (their mappings
    /// are worth reading now) and the objects newly probed.
    pub(super) fn inspect_due(&mut self, kernel: &mut KernelProbes) -> (Vec<u32>, Vec<String>) {
        let now = Instant::now();
        let known = self.objects.len();
        let mut inspected = Vec::new();
        let mut retry = Vec::new();
        for mut pending in std::mem::take(&mut self.pending) {
            if pending.due > now {
                retry.push(pending);
                continue;
            }
            if !procfs::process_exists(pending.pid) {
                continue;
            }
            if !self.probes {
                inspected.push(pending.pid);
                continue;
            }
            match target::objects_for_pid_cached(pending.pid, &mut self.cache) {
                Ok(objects) => {
                    self.probe(objects, kernel);
                    inspected.push(pending.pid);
                }
                // A Go program has no malloc: tracked for its goroutines.
                Err(_) if self.runs_go(pending.pid) => inspected.push(pending.pid),
                // Its libraries may not be mapped yet; or it has no
                // allocator at all (then it is given up on).
                Err(_) if pending.attempts + 1 < INSPECTIONS => {
                    pending.attempts += 1;
                    pending.due = now + RETRY_INSPECTION;
                    retry.push(pending);
                }
                Err(_) => {}
            }
        }
        self.pending = retry;
        let added = self.objects[known..]
            .iter()
            .map(|o| o.display_path.clone())
            .collect();
        (inspected, added)
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
