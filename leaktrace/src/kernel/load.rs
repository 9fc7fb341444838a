//! Loading the kernel side: the eBPF object with its settings (fixed
//! before verification), the uprobe programs (not attached yet), the pool
//! of sampling gaps, the process-lifecycle tracepoints and, in growth mode,
//! the page-fault ones; the maps userspace keeps are taken out here.
use anyhow::{Context as _, Result};
use aya::{
    EbpfLoader,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::{RawTracePoint, UProbe},
};
use leaktrace_common::{STACK_MODE_DWARF, STACK_MODE_FP, Settings};

use super::{
    Detacher, KernelOptions, KernelProbes, MapData, attach::Program, btf, features, growth,
    multi_uprobe, program_name, sample_gaps, unwind_tables::UnwindTables,
};

impl KernelProbes {
    /// Loads the programs, their settings and the exec and exit
    /// tracepoints; no uprobe is attached yet (see [`KernelProbes::attach`]).
    /// With `trace_all`, the tracepoints report every process on the host
    /// but leaktrace itself. Returns the ring buffer the records arrive in.
    pub(crate) fn load(
        options: &KernelOptions,
        trace_all: bool,
    ) -> Result<(KernelProbes, RingBuf<MapData>, Option<UnwindTables>)> {
        features::check_environment(options.growth.is_some())?;
        features::raise_memlock_limit();
        raise_open_files_limit();
        let sample_seed = options.sample_seed.unwrap_or_else(sample_gaps::clock_seed);
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
        // before 6.6, or hidden by a test), perf links.
        let multi = if features::hidden("uprobe_multi") {
            Vec::new()
        } else {
            multi_uprobe::load(object, &ebpf, &loaded).unwrap_or_default()
        };
        if options.sample_mean != 0 {
            let mut gaps: Array<_, u32> = Array::try_from(
                ebpf.map_mut("EXPONENTIALS")
                    .context("EXPONENTIALS map missing")?,
            )?;
            for (index, gap) in sample_gaps::exponential_gaps(options.sample_mean, sample_seed)
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
                multi_pid_filter: multi_uprobe::pid_filter_is_sound(&multi_uprobe::kernel_release()),
            },
            events,
            unwind_tables,
        ))
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
}
