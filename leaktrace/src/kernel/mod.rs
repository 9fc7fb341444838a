//! Kernel: loads the eBPF object (see `load`), attaches the planned uprobes
//! (to chosen processes, or to every process mapping an object), and hands
//! out the ring buffer and the loss counters.
//!
//! Every probe is held by an fd (a multi link per program and object, or a
//! perf link where the kernel has none, see `probe_links`): when leaktrace
//! exits, however it exits (SIGKILL included), the kernel closes the fds
//! and removes the probes, so the traced process never keeps paying for a
//! dead tracer.
pub(crate) mod attach;
pub(crate) mod btf;
mod entry_stop;
pub(crate) mod features;
mod growth;
mod load;
mod map_batch;
mod multi_uprobe;
mod probe_links;
mod sample_gaps;
pub(crate) mod unwind_builder;
pub(crate) mod unwind_tables;

use std::sync::atomic::Ordering;

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, PerCpuArray},
};
use leaktrace_common::{LOSS_COUNTERS, LossCounter, PythonProcess, SampledKey};

pub(crate) use self::features::check_environment;
pub(crate) use self::probe_links::ProbeLink;
use self::{
    attach::{Attachment, Program},
    probe_links::Detacher,
};

/// Counts of what the kernel side had to drop, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct KernelLosses {
    pub ring_buffer_full: u64,
    pub entry_slot_collisions: u64,
    pub stack_capture_failed: u64,
    pub return_without_entry: u64,
    pub sampled_map_full: u64,
    pub abandoned_calls: u64,
    pub releases_lost: u64,
}

/// How to load the kernel side.
#[derive(Clone, Copy, Debug)]
pub(crate) struct KernelOptions {
    pub ring_buffer_bytes: u32,
    /// Unwind with .`eh_frame` tables (rows in a map of `unwind_rows` entries)
    /// instead of frame pointers only.
    pub dwarf: bool,
    pub unwind_rows: u32,
    /// Attach programs that return at once: the cost floor of the probes.
    pub empty_programs: bool,
    /// Mean bytes between samples; 0 records every call.
    pub sample_mean: u32,
    /// Room for outstanding sampled blocks in the kernel.
    pub sampled_blocks: u32,
    /// Seed of the sampling gaps (the pool userspace draws and the kernel's
    /// picks among it); None: one from the clock.
    pub sample_seed: Option<u64>,
    /// `task_struct.thread.fsbase` (from BTF), for the Python frame walk;
    /// 0 when unknown, and then no Python frames are walked.
    pub task_fsbase_offset: u32,
    /// Growth mode: the page-fault and memory-syscall tracepoints record
    /// resident growth (no allocator is probed).
    pub growth: Option<GrowthOptions>,
    /// Follow the children of traced processes: the offsets of `pid` and
    /// `tgid` in `task_struct` (from BTF), with which the fork tracepoint
    /// tells a new process from a new thread. None: children are not
    /// followed (`--no-children`, `--all`, or a kernel without BTF).
    pub follow_children: Option<(u32, u32)>,
}

/// What growth mode's tracepoints need.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GrowthOptions {
    /// One page in 2^shift is kept, chosen by address.
    pub page_sample_shift: u32,
}

/// The loaded programs and their maps. Dropping it detaches everything.
pub(crate) struct KernelProbes {
    /// Owns the programs and their links (more are attached as `--all`
    /// finds new allocators).
    ebpf: Ebpf,
    losses: PerCpuArray<MapData, u64>,
    /// Sampled blocks, with the time each entered (`CLOCK_MONOTONIC` ns).
    sampled: HashMap<MapData, SampledKey, u64>,
    /// How to walk each traced Python process's frames, by pid.
    python: HashMap<MapData, u32, PythonProcess>,
    empty_programs: bool,
    armed: bool,
    /// Uprobes attached and not detached.
    pub attached: usize,
    detacher: Detacher,
    /// The uprobe programs loaded for multi links; empty where the kernel
    /// has none (perf links then).
    multi: Vec<multi_uprobe::MultiProgram>,
    /// Multi links attached, and how many probes each holds.
    multi_links: std::collections::HashMap<u64, (std::os::fd::OwnedFd, usize)>,
    next_multi_link: u64,
    /// Whether multi links may be scoped to a pid on this kernel (see
    /// `multi_uprobe::pid_filter_is_sound`).
    multi_pid_filter: bool,
}

/// The program a probe runs (`--empty-programs`: the do-nothing ones).
fn program_name(empty_programs: bool, program: Program) -> &'static str {
    match (empty_programs, program) {
        (false, program) => program.name(),
        (true, Program::AllocReturn) => "empty_return",
        (true, _) => "empty_entry",
    }
}

/// Which processes the uprobes of one `attach` call fire for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// One process: all its threads, and its image after an exec.
    Process(u32),
    /// Every process that maps the object, now or later (`--all`).
    AllProcesses,
}

impl KernelProbes {
    /// Attaches `plan` (see `probes::plan`) for `scope`. Probes attached
    /// while others are live (a new allocator found under `--all`, a child
    /// followed) may see returns of calls that began before them: those are
    /// not counted as losses. All or nothing: when one probe fails, those
    /// this call attached are detached (half a plan, say malloc without
    /// free, would report wrong leaks). Returns the links, to detach them
    /// when their process is gone.
    pub(crate) fn attach(&mut self, plan: &[Attachment], scope: Scope) -> Result<Vec<ProbeLink>> {
        let was_armed = self.armed;
        self.set_armed(false)?;
        let mut links = Vec::with_capacity(plan.len());
        self.detacher.attaching.fetch_add(1, Ordering::AcqRel);
        let attached = self.attach_each(plan, scope, &mut links);
        self.detacher.attaching.fetch_sub(1, Ordering::AcqRel);
        if attached.is_err() {
            self.detach(std::mem::take(&mut links));
        }
        self.set_armed(was_armed)?;
        attached.map(|()| links)
    }

    /// Makes the exec and exit tracepoints report `pid` (the uprobes are
    /// scoped by `attach`), and the fork tracepoint follow its children.
    /// The exit tracepoint takes it out of the set when it ends.
    pub(crate) fn trace_pid(&mut self, pid: u32) -> Result<()> {
        let mut traced: HashMap<_, u32, u8> = HashMap::try_from(
            self.ebpf
                .map_mut("TRACED_PIDS")
                .context("TRACED_PIDS map missing")?,
        )?;
        traced
            .insert(pid, 1, 0)
            .context("too many processes to trace (at most 4096)")
    }

    /// Every probe is live: from now on a return without entry is a loss.
    pub(crate) fn arm(&mut self) -> Result<()> {
        self.set_armed(true)
    }

    fn set_armed(&mut self, armed: bool) -> Result<()> {
        let mut flag: Array<_, u32> =
            Array::try_from(self.ebpf.map_mut("ARMED").context("ARMED map missing")?)?;
        flag.set(0, u32::from(armed), 0)?;
        self.armed = armed;
        Ok(())
    }

    /// Removes `pid`'s blocks at `addresses` from the kernel's set of
    /// sampled blocks: the process is gone (or exec'd), and their frees
    /// will never come.
    pub(crate) fn forget_sampled(&mut self, pid: u32, addresses: impl Iterator<Item = u64>) {
        for addr in addresses {
            let key = SampledKey {
                pid,
                _padding: 0,
                addr,
            };
            // A block may have left the set already (its free raced the
            // exit): nothing to do then.
            let _: Result<_, _> = self.sampled.remove(&key);
        }
    }

    /// Drops from the kernel's set of sampled blocks every entry for which
    /// `drop(pid, addr, entered_ns)` says so, and returns how many entries
    /// are left. Walks the whole map (one syscall per entry): for a
    /// periodic sweep, not per record.
    pub(crate) fn sweep_sampled(&mut self, drop: impl Fn(u32, u64, u64) -> bool) -> u64 {
        let mut doomed = Vec::new();
        let mut left = 0u64;
        let mut seen = rustc_hash::FxHashSet::default();
        for entry in &self.sampled {
            // An entry removed while the walk goes on (a free) makes the
            // kernel start again from the first key: the walk ends at the
            // first key seen twice, and what is left waits for the next
            // sweep.
            let Ok((key, entered_ns)) = entry else { break };
            if !seen.insert((key.pid, key.addr)) {
                break;
            }
            if drop(key.pid, key.addr, entered_ns) {
                doomed.push(key);
            } else {
                left += 1;
            }
        }
        for key in doomed {
            // Freed meanwhile: nothing to do.
            let _: Result<_, _> = self.sampled.remove(&key);
        }
        left
    }

    /// Has the kernel walk `pid`'s Python frames as `process` says, from
    /// its next allocation on.
    pub(crate) fn walk_python(&mut self, pid: u32, process: &PythonProcess) -> Result<()> {
        self.python
            .insert(pid, process, 0)
            .with_context(|| format!("telling the kernel how to walk pid {pid}'s Python frames"))
    }

    /// Stops walking `pid`'s Python frames (it exited, or exec'd).
    pub(crate) fn forget_python(&mut self, pid: u32) {
        // Never registered, or already gone: nothing to do.
        let _: Result<_, _> = self.python.remove(&pid);
    }

    /// Reads the kernel's loss counters.
    pub(crate) fn losses(&self) -> Result<KernelLosses> {
        let mut totals = [0u64; LOSS_COUNTERS as usize];
        for (index, total) in totals.iter_mut().enumerate() {
            let per_cpu = self.losses.get(&(index as u32), 0)?;
            *total = per_cpu.iter().sum();
        }
        Ok(KernelLosses {
            ring_buffer_full: totals[LossCounter::RingBufferFull as usize],
            entry_slot_collisions: totals[LossCounter::EntrySlotCollision as usize],
            stack_capture_failed: totals[LossCounter::StackCaptureFailed as usize],
            return_without_entry: totals[LossCounter::ReturnWithoutEntry as usize],
            sampled_map_full: totals[LossCounter::SampledMapFull as usize],
            abandoned_calls: totals[LossCounter::AbandonedCall as usize],
            releases_lost: totals[LossCounter::ReleaseLost as usize],
        })
    }
}
