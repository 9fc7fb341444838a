//! Following children: the processes that a traced process forks after
//! attach (pre-forking servers: gunicorn, uwsgi, celery, multiprocessing),
//! and theirs in turn, each traced as if named by `--pid`.
//!
//! Why it takes work: uprobes are attached per process (their filter is the
//! process's address space), and a forked child has an address space of its
//! own, so the parent's probes do not fire in it. The kernel's fork
//! tracepoint puts a new child process (never a thread) in the set of traced
//! processes at once, so its exec and exit are reported from its first
//! instruction, and wakes the daemon with a fork record; here the daemon
//! reads the child's objects, attaches the plan for it, and tracks it
//! (mappings, unwind tables, Python walking instructions). What the child
//! allocates between its fork and that attach is not seen (the gap, tens of
//! milliseconds, is printed with each child followed); the blocks it
//! inherited from its parent are not its allocations, and freeing them
//! counts as a release of a block from before tracing, never as a loss.
//!
//! A child that shares its parent's address space (vfork, until it execs)
//! is seen by its parent's probes as well as by its own once attached: a
//! call it makes then is recorded twice, at one address, which the heap
//! table counts as a replaced block, not as more memory. A vfork child
//! normally execs within microseconds, long before its own probes exist.
//!
//! The same bookkeeping serves every process traced by pid (named by
//! `--pid`, `run`'s command, children): what was attached for each, so that
//! an exec whose new image needs probes on other objects (a program linked
//! with jemalloc) gets only the missing ones (a probe attached twice would
//! count every call twice), and so that a process's probes are detached
//! when it exits (each costs file descriptors).
use std::{
    collections::{HashMap, HashSet},
    os::fd::OwnedFd,
    time::{Duration, Instant},
};

use anyhow::{Result, anyhow};

use super::{
    exit_watch::pidfd_open,
    system_wide::{FIRST_INSPECTION, INSPECTIONS, RETRY_INSPECTION},
    tracer::{Tracer, monotonic_ns},
};
use crate::{
    kernel::{
        KernelProbes, ProbeLink, Scope,
        attach::{self, Attachment, Program},
    },
    target::{self, ProbedObject, SymbolCache, procfs},
};

/// A probe as the kernel keys it: file (device, inode), offset, program.
type ProbeKey = (u64, u64, u64, Program);

/// What is attached for one process.
#[derive(Default)]
struct Probes {
    keys: HashSet<ProbeKey>,
    links: Vec<ProbeLink>,
    /// The objects probed for it, handed to a child whose own objects
    /// cannot be read yet (it exec'd before the daemon got to it).
    objects: Vec<ProbedObject>,
}

/// A process that exec'd, to inspect once its dynamic linker has mapped
/// its libraries.
struct Pending {
    pid: u32,
    due: Instant,
    attempts: u32,
}

/// What became of a fork record.
pub(super) enum Fork {
    /// Probes attached, `gap` after the fork; `added`: objects that got
    /// probes for it.
    Followed {
        gap: Duration,
        added: Vec<ProbedObject>,
    },
    /// The child ended before it could be attached: nothing to trace.
    Gone,
    /// The kernel's set of traced processes was full: the child is not
    /// followed. `first`: no child was left out before.
    SetFull { first: bool },
}

/// The processes traced by pid: their probes, their parents, the exec'd
/// ones to inspect, and the new children's pidfds for the exit watch.
pub(super) struct Children {
    /// Whether forked children are followed (not with `--no-children`,
    /// `--all`, or a kernel whose BTF cannot be read).
    pub(super) enabled: bool,
    /// `--probe-placement auto`.
    placed: bool,
    /// Allocations mode: probe each process's allocator. Growth mode
    /// probes none (its tracepoints see every traced process, children
    /// included, from the fork on): children are only tracked.
    allocators: bool,
    /// Objects' symbols, read once per file for every process traced.
    pub(super) cache: SymbolCache,
    probes: HashMap<u32, Probes>,
    /// Each followed child's parent, for reports (kept after they exit).
    parents: HashMap<u32, u32>,
    pending: Vec<Pending>,
    /// Pidfds of the children followed since the event loop last took them.
    pidfds: Vec<(u32, OwnedFd)>,
    /// Children not followed because the kernel's set was full.
    pub(super) not_followed: u64,
}

impl Children {
    pub(super) fn new(enabled: bool, placed: bool, allocators: bool) -> Children {
        Children {
            enabled,
            placed,
            allocators,
            cache: SymbolCache::default(),
            probes: HashMap::new(),
            parents: HashMap::new(),
            pending: Vec::new(),
            pidfds: Vec::new(),
            not_followed: 0,
        }
    }

    /// Attaches, for `pid`, the probes of `objects` not attached for it
    /// yet. Returns the objects that got new probes.
    pub(super) fn attach(
        &mut self,
        kernel: &mut KernelProbes,
        pid: u32,
        objects: Vec<ProbedObject>,
    ) -> Result<Vec<ProbedObject>> {
        let probes = self.probes.entry(pid).or_default();
        if !self.allocators {
            return Ok(Vec::new());
        }
        let mut keyed: Vec<(ProbeKey, Attachment)> = Vec::new();
        let mut added = Vec::new();
        for object in objects {
            let identity = procfs::file_identity(&object.path)
                .ok_or_else(|| anyhow!("{} is gone", object.display_path))?;
            let fresh: Vec<(ProbeKey, Attachment)> =
                attach::plan(std::slice::from_ref(&object), self.placed)
                    .into_iter()
                    .map(|a| ((identity.0, identity.1, a.file_offset, a.program), a))
                    .filter(|(key, _)| !probes.keys.contains(key))
                    .collect();
            if !fresh.is_empty() {
                keyed.extend(fresh);
                added.push(object);
            }
        }
        if keyed.is_empty() {
            return Ok(added);
        }
        // The plan's order (releases, returns, entries) across objects.
        keyed.sort_by_key(|(_, a)| attach::order(a.program));
        let plan: Vec<Attachment> = keyed.iter().map(|(_, a)| a.clone()).collect();
        let links = kernel.attach(&plan, Scope::Process(pid))?;
        probes.links.extend(links);
        probes.keys.extend(keyed.into_iter().map(|(key, _)| key));
        for object in &added {
            if !probes
                .objects
                .iter()
                .any(|o| o.display_path == object.display_path)
            {
                probes.objects.push(object.clone());
            }
        }
        Ok(added)
    }

    /// Follows `child`, forked by `parent` at `forked_ns`: reads its
    /// objects (its parent's, if it exec'd before its libraries are
    /// mapped), attaches them and opens its pidfd.
    fn follow(
        &mut self,
        kernel: &mut KernelProbes,
        parent: u32,
        child: u32,
        forked_ns: u64,
    ) -> Result<Fork> {
        let pidfd = match pidfd_open(child) {
            Ok(pidfd) => pidfd,
            Err(_) if !procfs::is_running(child) => return Ok(Fork::Gone),
            Err(err) => return Err(err),
        };
        let objects = if self.allocators {
            match target::objects_for_pid_cached(child, &mut self.cache) {
                Ok(objects) => objects,
                Err(_) if !procfs::is_running(child) => return Ok(Fork::Gone),
                // It exec'd and its dynamic linker has not mapped the libraries
                // yet: what its parent had is the best guess now, and the exec
                // inspection adds what the new image needs.
                Err(err) => self
                    .probes
                    .get(&parent)
                    .map(|p| p.objects.clone())
                    .filter(|objects| !objects.is_empty())
                    .ok_or(err)?,
            }
        } else {
            Vec::new()
        };
        let added = match self.attach(kernel, child, objects) {
            Ok(added) => added,
            Err(err) => {
                self.probes.remove(&child);
                return if procfs::is_running(child) {
                    Err(err)
                } else {
                    Ok(Fork::Gone)
                };
            }
        };
        let gap = Duration::from_nanos(monotonic_ns().saturating_sub(forked_ns));
        self.parents.insert(child, parent);
        self.pidfds.push((child, pidfd));
        Ok(Fork::Followed { gap, added })
    }

    /// `pid` exec'd: inspect it soon for objects its new image needs.
    fn exec_seen(&mut self, pid: u32) {
        if !self.probes.contains_key(&pid) {
            return;
        }
        self.pending.retain(|p| p.pid != pid);
        self.pending.push(Pending {
            pid,
            due: Instant::now() + FIRST_INSPECTION,
            attempts: 0,
        });
    }

    /// `pid` exited: its probes go, in the background (its parent link
    /// stays, for reports).
    pub(super) fn exited(&mut self, kernel: &mut KernelProbes, pid: u32) {
        self.pending.retain(|p| p.pid != pid);
        if let Some(probes) = self.probes.remove(&pid) {
            kernel.detach(probes.links);
        }
    }

    /// The traced process that forked `pid`, when `pid` was followed.
    pub(super) fn parent(&self, pid: u32) -> Option<u32> {
        self.parents.get(&pid).copied()
    }

    /// The pidfds of the children followed since the last call.
    pub(super) fn take_pidfds(&mut self) -> Vec<(u32, OwnedFd)> {
        std::mem::take(&mut self.pidfds)
    }
}

impl Tracer {
    /// A fork record: follows the child (see the module's doc) and says so.
    pub(super) fn fork(&mut self, parent: u32, child: u32, traced: bool, forked_ns: u64) {
        if !self.children.enabled {
            return;
        }
        let outcome = if traced {
            self.children
                .follow(&mut self.kernel, parent, child, forked_ns)
        } else {
            self.children.not_followed += 1;
            Ok(Fork::SetFull {
                first: self.children.not_followed == 1,
            })
        };
        match outcome {
            Ok(Fork::Followed { gap, added }) => {
                self.add_objects(added);
                self.forget_exited(child);
                self.track(child);
                self.progress(&format!(
                    "following child {child} of {parent} (probes live {:.1} ms after its fork)",
                    gap.as_secs_f64() * 1000.0
                ));
            }
            Ok(Fork::Gone) => {
                self.progress(&format!(
                    "child {child} of {parent} exited before it could be followed"
                ));
            }
            Ok(Fork::SetFull { first }) => {
                if first {
                    eprintln!(
                        "leaktrace: warning: the kernel's set of traced processes is full (4096): child {child} of {parent} and later ones are not followed while it is (the report counts them)"
                    );
                }
            }
            Err(err) => {
                eprintln!("leaktrace: warning: child {child} of {parent} not followed: {err:#}");
            }
        }
    }

    /// A process traced by pid exec'd: its new image is inspected shortly.
    pub(super) fn exec_seen_by_pid(&mut self, pid: u32) {
        self.children.exec_seen(pid);
    }

    /// Inspects the exec'd processes whose time has come, attaching the
    /// probes their new image needs and they do not have yet.
    pub(super) fn inspect_execs(&mut self) {
        let now = Instant::now();
        let pending = std::mem::take(&mut self.children.pending);
        let mut retry = Vec::new();
        for mut pending in pending {
            if pending.due > now {
                retry.push(pending);
                continue;
            }
            if !procfs::is_running(pending.pid) {
                continue;
            }
            let pid = pending.pid;
            let added = target::objects_for_pid_cached(pid, &mut self.children.cache)
                .and_then(|objects| self.children.attach(&mut self.kernel, pid, objects));
            match added {
                Ok(added) => {
                    if !added.is_empty() {
                        let names: Vec<&str> =
                            added.iter().map(|o| o.display_path.as_str()).collect();
                        self.progress(&format!(
                            "pid {pid} exec'd: now also probing {} for it",
                            names.join(", ")
                        ));
                        self.add_objects(added);
                    }
                    self.track(pid);
                }
                // Its libraries may not be mapped yet.
                Err(_) if pending.attempts + 1 < INSPECTIONS => {
                    pending.attempts += 1;
                    pending.due = now + RETRY_INSPECTION;
                    retry.push(pending);
                }
                Err(err) => eprintln!(
                    "leaktrace: warning: pid {pid} exec'd and its new image's allocator could not be probed: {err:#}"
                ),
            }
        }
        retry.append(&mut self.children.pending);
        self.children.pending = retry;
    }
}
