//! Kernel: loads the eBPF object, attaches the planned uprobes (to chosen
//! processes, or to every process mapping an object), and hands out the
//! ring buffer and the loss counters.
//!
//! Every probe is an fd-based perf link: when leaktrace exits, however it
//! exits (SIGKILL included), the kernel closes the fds and removes the
//! probes, so the traced process never keeps paying for a dead tracer.
pub(crate) mod attach;
pub(crate) mod btf;
mod entry_stop;
pub(crate) mod features;
mod growth;
mod map_batch;
mod multi_uprobe;
mod probe_links;
pub(crate) mod unwind_builder;
pub(crate) mod unwind_tables;

use std::{path::Path, sync::atomic::Ordering};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{RawTracePoint, UProbe},
};
use leaktrace_common::{
    EXPONENTIAL_POOL, GOLDEN_GAMMA, LOSS_COUNTERS, LossCounter, PythonProcess, STACK_MODE_DWARF,
    STACK_MODE_FP, SampledKey, Settings, mix64,
};

pub(crate) use self::probe_links::ProbeLink;
use self::{
    attach::{Attachment, Program},
    probe_links::Detacher,
    unwind_tables::UnwindTables,
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
}

/// The program a probe runs (`--empty-programs`: the do-nothing ones).
fn program_name(empty_programs: bool, program: Program) -> &'static str {
    match (empty_programs, program) {
        (false, program) => program.name(),
        (true, Program::AllocReturn) => "empty_return",
        (true, _) => "empty_entry",
    }
}

/// Where `sched_process_exit`'s record keeps `group_dead` (recent kernels
/// have it; older ones do not), from the tracepoint's format file.
fn group_dead_offset() -> Option<u32> {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .find_map(|root| {
            std::fs::read_to_string(format!("{root}/events/sched/sched_process_exit/format")).ok()
        })
        .and_then(|format| parse_field_offset(&format, "group_dead"))
}

/// The offset of `field` in a tracepoint format file's text.
fn parse_field_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let mut parts = line.trim().split(';');
        let declaration = parts.next()?.trim();
        if declaration.rsplit(' ').next()? != field {
            return None;
        }
        parts.next()?.trim().strip_prefix("offset:")?.parse().ok()
    })
}

/// Checks that this process may load BPF programs and the kernel has what
/// they need (see [`features`]; `growth`: growth mode's tracepoints too).
pub(crate) fn check_environment(growth: bool) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("leaktrace must run as root (it loads eBPF programs and uprobes): try sudo");
    }
    // Tracepoints are looked for in tracefs; probing creates a map, which
    // kernels before 5.11 charge to the memlock limit.
    ensure_tracefs();
    raise_memlock_limit();
    if let Some(refusal) = features::refusal(&features::probe(&features::required(growth))) {
        bail!(refusal);
    }
    Ok(())
}

/// The exec tracepoint is found through tracefs, which a minimal system may
/// not have mounted. Mounting it changes nothing else; a failure surfaces
/// later as a clear attach error.
fn ensure_tracefs() {
    let tracing = Path::new("/sys/kernel/tracing");
    if tracing.join("events").exists() || Path::new("/sys/kernel/debug/tracing/events").exists() {
        return;
    }
    // SAFETY: static NUL-terminated strings.
    unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            c"/sys/kernel/tracing".as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
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
    /// Loads the programs, their settings and the exec and exit
    /// tracepoints; no uprobe is attached yet (see [`KernelProbes::attach`]).
    /// With `trace_all`, the tracepoints report every process on the host
    /// but leaktrace itself. Returns the ring buffer the records arrive in.
    pub(crate) fn load(
        options: &KernelOptions,
        trace_all: bool,
    ) -> Result<(KernelProbes, RingBuf<MapData>, Option<UnwindTables>)> {
        check_environment(options.growth.is_some())?;
        raise_memlock_limit();
        raise_open_files_limit();
        let sample_seed = options.sample_seed.unwrap_or_else(clock_seed);
        // Only sampling keeps blocks in the kernel; unknown offsets (no
        // BTF) leave stale entries to the daemon's sweep.
        let (task_group_leader_offset, task_start_time_offset) = if options.sample_mean == 0 {
            (0, 0)
        } else {
            btf::task_start_offsets().unwrap_or((0, 0))
        };
        let settings = Settings {
            stack_mode: if options.dwarf {
                STACK_MODE_DWARF
            } else {
                STACK_MODE_FP
            },
            sample_mean: options.sample_mean,
            self_pid: std::process::id(),
            trace_all: u32::from(trace_all),
            group_dead_offset: group_dead_offset().unwrap_or(0),
            task_fsbase_offset: options.task_fsbase_offset,
            follow_children: u32::from(options.follow_children.is_some()),
            task_pid_offset: options.follow_children.map_or(0, |(pid, _)| pid),
            task_tgid_offset: options.follow_children.map_or(0, |(_, tgid)| tgid),
            page_sample_shift: options.growth.map_or(0, |g| g.page_sample_shift),
            task_group_leader_offset,
            task_start_time_offset,
            sample_seed,
        };
        let object: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/leaktrace"));
        let mut ebpf = EbpfLoader::new()
            // Before verification: the verifier treats the settings as
            // constants and skips the code they turn off.
            .override_global("SETTINGS", &settings, true)
            .map_max_entries("EVENTS", options.ring_buffer_bytes)
            .map_max_entries("SAMPLED", options.sampled_blocks.max(1))
            .map_max_entries(
                "UNWIND_ROWS",
                if options.dwarf {
                    options.unwind_rows
                } else {
                    1
                },
            )
            .load(object)
            .context("loading the eBPF programs")?;
        let programs = [
            Program::AllocEntry,
            Program::AllocReturn,
            Program::ReleaseEntry,
        ]
        .map(|program| program_name(options.empty_programs, program));
        let mut loaded = Vec::new();
        for name in programs {
            if loaded.contains(&name) {
                continue;
            }
            let uprobe: &mut UProbe = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the eBPF object"))?
                .try_into()?;
            uprobe
                .load()
                .with_context(|| format!("loading program {name}"))?;
            loaded.push(name);
        }
        // Before any map is taken out of `ebpf`. Without them (a kernel
        // before 6.6), perf links.
        let multi = multi_uprobe::load(object, &ebpf, &loaded).unwrap_or_default();
        if options.sample_mean != 0 {
            let mut gaps: Array<_, u32> = Array::try_from(
                ebpf.map_mut("EXPONENTIALS")
                    .context("EXPONENTIALS map missing")?,
            )?;
            for (index, gap) in exponential_gaps(options.sample_mean, sample_seed)
                .into_iter()
                .enumerate()
            {
                gaps.set(index as u32, gap, 0)?;
            }
        }
        for (name, category, event) in [
            ("on_exec", "sched", "sched_process_exec"),
            ("on_exit", "sched", "sched_process_exit"),
        ] {
            growth::attach_tracepoint(&mut ebpf, name, category, event)?;
        }
        if options.growth.is_some() {
            growth::attach(&mut ebpf)?;
        }
        if options.follow_children.is_some() {
            let fork: &mut RawTracePoint = ebpf
                .program_mut("on_fork")
                .context("program on_fork missing from the eBPF object")?
                .try_into()?;
            fork.load().context("loading program on_fork")?;
            fork.attach("sched_process_fork")
                .context("attaching to raw tracepoint sched_process_fork")?;
        }
        let unwind_tables = if options.dwarf {
            Some(UnwindTables::new(
                Array::try_from(
                    ebpf.take_map("UNWIND_ROWS")
                        .context("UNWIND_ROWS map missing")?,
                )?,
                HashMap::try_from(
                    ebpf.take_map("PROCESS_SLOTS")
                        .context("PROCESS_SLOTS map missing")?,
                )?,
                Array::try_from(
                    ebpf.take_map("PROCESS_MAPPINGS")
                        .context("PROCESS_MAPPINGS map missing")?,
                )?,
            ))
        } else {
            None
        };
        let events = RingBuf::try_from(ebpf.take_map("EVENTS").context("EVENTS map missing")?)?;
        let losses = PerCpuArray::try_from(ebpf.take_map("LOSSES").context("LOSSES map missing")?)?;
        let sampled = HashMap::try_from(ebpf.take_map("SAMPLED").context("SAMPLED map missing")?)?;
        let python = HashMap::try_from(
            ebpf.take_map("PYTHON_PROCESSES")
                .context("PYTHON_PROCESSES map missing")?,
        )?;
        Ok((
            KernelProbes {
                ebpf,
                losses,
                sampled,
                python,
                empty_programs: options.empty_programs,
                armed: false,
                attached: 0,
                detacher: Detacher::start(),
                multi,
                multi_links: std::collections::HashMap::new(),
                next_multi_link: 0,
            },
            events,
            unwind_tables,
        ))
    }

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

/// A seed for the sampling gaps when none is given: the clock.
fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(GOLDEN_GAMMA, |d| d.as_nanos() as u64)
}

/// `EXPONENTIAL_POOL` gaps between samples, exponentially distributed with
/// the given mean (inverse transform: -mean * ln(U), U uniform in (0, 1]),
/// from a generator seeded by `seed`: the same seed gives the same pool.
/// The kernel picks among them at random; with 4096 of them the
/// distribution's shape is kept.
pub(crate) fn exponential_gaps(mean: u32, seed: u64) -> Vec<u32> {
    // xorshift64* must not start at 0; mix64 is a bijection with mix64(0) = 0.
    let mut state = match mix64(seed) {
        0 => GOLDEN_GAMMA,
        mixed => mixed,
    };
    (0..EXPONENTIAL_POOL)
        .map(|_| {
            // xorshift64*: plenty for drawing sample gaps.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let bits = state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11;
            let uniform = (bits as f64 + 1.0) / (1u64 << 53) as f64;
            let gap = -f64::from(mean) * uniform.ln();
            gap.clamp(1.0, f64::from(u32::MAX)) as u32
        })
        .collect()
}

/// Each uprobe holds file descriptors (its perf event and its link), and
/// every process traced by pid gets its own: a few dozen children followed
/// reach the usual soft limit of 1024. The hard limit is ours to take.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls with valid pointers; failure leaves the limit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit);
        }
    }
}

/// Kernels before 5.11 charge BPF maps to `RLIMIT_MEMLOCK`.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer; failure is harmless here.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raw const unlimited) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracepoint_field_offsets_are_read_from_the_format_file() {
        let format = "name: sched_process_exit\nID: 369\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\n\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;\n\tfield:bool group_dead;\toffset:32;\tsize:1;\tsigned:0;\n";
        assert_eq!(parse_field_offset(format, "group_dead"), Some(32));
        assert_eq!(parse_field_offset(format, "pid"), Some(24));
        assert_eq!(parse_field_offset(format, "prio"), None);
    }

    #[test]
    fn exponential_gaps_have_the_mean_and_shape() {
        let gaps = exponential_gaps(512 * 1024, 1);
        assert_eq!(gaps.len(), EXPONENTIAL_POOL as usize);
        let mean = gaps.iter().map(|&g| f64::from(g)).sum::<f64>() / gaps.len() as f64;
        // Standard error of the mean of 4096 exponentials: mean / 64.
        assert!((mean / 524_288.0 - 1.0).abs() < 0.06, "mean {mean}");
        // P(gap > mean) = 1/e for an exponential.
        let above = gaps.iter().filter(|&&g| g > 512 * 1024).count() as f64 / 4096.0;
        assert!((above - (-1.0f64).exp()).abs() < 0.03, "{above}");
    }

    #[test]
    fn exponential_gaps_are_fixed_by_their_seed() {
        let gaps = exponential_gaps(4096, 42);
        assert_eq!(gaps, exponential_gaps(4096, 42));
        assert_ne!(gaps, exponential_gaps(4096, 43));
        // Seed 0 is a seed like any other (the generator cannot start at 0).
        assert_eq!(exponential_gaps(4096, 0), exponential_gaps(4096, 0));
        assert_ne!(exponential_gaps(4096, 0), gaps);
    }
}
