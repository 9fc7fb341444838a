//! Starting a trace: loads the kernel side, attaches the plan of probes
//! (to the processes named, to every process, or to a command it starts
//! held at its entry point), and hands over to the event loop.
use std::{
    ffi::OsString,
    fs,
    path::Path,
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, Result};
use tokio::net::TcpListener;

use super::{
    children::Children,
    cli::{ProbePlacement, ReportOptions, StackMode, Targets},
    event_loop::trace_loop,
    exit_watch::{ExitWatch, pidfd_open},
    go_goroutines::is_go_file,
    python_objects::PythonObjects,
    run_hooks,
    system_wide::SystemWide,
    tracer::{self, Tracer},
};
use crate::{
    kernel::{self, GrowthOptions, KernelOptions, KernelProbes, unwind_tables::UnwindTables},
    symbolize::ProcessMaps,
    target::{self, launch, procfs},
};

/// Said of a Go program traced in allocations mode with no allocator.
const GO_ONLY: &str = "a Go program with no malloc: its heap is read from the runtime's own profile, its goroutines from the process";

/// How to load the kernel side; `all`: every process is traced (no
/// children to follow then).
fn kernel_options(options: &ReportOptions, all: bool) -> KernelOptions {
    let follow_children = if all || options.no_children {
        None
    } else {
        kernel::btf::task_id_offsets()
            .inspect_err(|err| {
                eprintln!(
                    "leaktrace: warning: child processes will not be followed (the fork tracepoint cannot tell them from threads): {err:#}"
                );
            })
            .ok()
    };
    KernelOptions {
        ring_buffer_bytes: options.ring_buffer_mib << 20,
        dwarf: options.stack_mode == StackMode::Dwarf,
        unwind_rows: options.unwind_rows,
        empty_programs: options.empty_programs,
        sample_mean: options.sample_mean(),
        sampled_blocks: options.sampled_blocks,
        sample_seed: options.sample_seed,
        task_fsbase_offset: kernel::btf::task_fsbase_offset().unwrap_or_else(|err| {
            eprintln!("leaktrace: warning: Python frames will not be walked: {err:#}");
            0
        }),
        follow_children,
        growth: options.growth().then_some(GrowthOptions {
            page_sample_shift: options.page_sample().trailing_zeros(),
        }),
    }
}

/// `trace` and `serve`: the processes named by --pid, or every one (--all).
pub(super) async fn trace_targets(
    targets: Targets,
    options: ReportOptions,
    listener: Option<TcpListener>,
) -> Result<i32> {
    kernel::check_environment(options.growth())?;
    let placed = options.probe_placement == ProbePlacement::Auto;
    let (tracer, watch) = if targets.all {
        let (mut kernel, ring, unwind_tables) =
            KernelProbes::load(&kernel_options(&options, true), true)?;
        let mut system = SystemWide::new(placed, !options.growth());
        let found = system.attach_running(&mut kernel)?;
        kernel.arm()?;
        let mut tracer = Tracer::new(
            tracer::Targets::All(system),
            kernel,
            Vec::new(),
            Children::new(false, placed, !options.growth()),
            unwind_tables,
            options,
        );
        tracer.progress(&format!(
            "reading the mappings of {} processes{}",
            found.len(),
            if tracer.unwind_summary().is_some() {
                " and loading their unwind tables"
            } else {
                ""
            }
        ));
        for pid in found {
            tracer.track(pid);
        }
        if let Some(summary) = tracer.unwind_summary() {
            tracer.progress(&summary);
        }
        tracer.progress(&format!(
            "tracing all processes ({} now, and those that start later): {} probes on {}",
            tracer.process_count(),
            tracer.kernel.attached,
            tracer.object_list()
        ));
        ((tracer, ring), ExitWatch::Never)
    } else {
        // A pid named twice would get its probes twice, and every call
        // counted twice.
        let mut pids = targets.pid;
        let mut seen = std::collections::HashSet::new();
        pids.retain(|pid| seen.insert(*pid));
        let several = pids.len() > 1;
        let mut pidfds = Vec::new();
        for &pid in &pids {
            procfs::check_pid(pid)?;
            pidfds.push((pid, pidfd_open(pid)?));
        }
        let kernel_options = kernel_options(&options, false);
        let (mut kernel, ring, unwind_tables) = KernelProbes::load(&kernel_options, false)?;
        let mut objects: Vec<target::ProbedObject> = Vec::new();
        // One symbol cache (the processes' shared libraries are read once),
        // kept for the children followed.
        let mut children = Children::new(
            kernel_options.follow_children.is_some(),
            placed,
            !options.growth(),
        );
        let mut plans = Vec::new();
        for &pid in &pids {
            kernel.trace_pid(pid)?;
            if options.growth() {
                // No allocator is probed: a program without malloc (Go's)
                // is traced all the same.
                continue;
            }
            let context = || format!("pid {pid}");
            let found = match target::objects_for_pid_cached(pid, &mut children.cache) {
                // A Go program has no malloc: its goroutines are read all
                // the same (the report says its heap is not traced).
                Err(_) if is_go_file(Path::new(&format!("/proc/{pid}/exe"))) => {
                    eprintln!("leaktrace: pid {pid}: {GO_ONLY}");
                    plans.push((pid, Vec::new()));
                    continue;
                }
                found => found,
            };
            let found = if several {
                found.with_context(context)?
            } else {
                found?
            };
            for object in &found {
                if !objects
                    .iter()
                    .any(|o| o.display_path == object.display_path)
                {
                    objects.push(object.clone());
                }
            }
            plans.push((pid, found));
        }
        let mut tracer = Tracer::new(
            tracer::Targets::Pids,
            kernel,
            objects,
            children,
            unwind_tables,
            options,
        );
        // Mappings, unwind tables and the Python walk first (and, in exact
        // object mode, the object allocator's probes), then the allocator's
        // probes: an allocation recorded without them would keep a stack
        // cut at the first frame without frame pointers, and no Python
        // frames (a few hundred ms of a busy process's leaks, measured); and
        // no arena pymalloc maps is recorded as a mapping of its own before
        // its objects are traced.
        for &pid in &pids {
            tracer.track(pid);
        }
        for (pid, found) in plans {
            tracer.children.attach(&mut tracer.kernel, pid, found)?;
        }
        tracer.arm()?;
        if let Some(summary) = tracer.unwind_summary() {
            tracer.progress(&summary);
        }
        let described: Vec<String> = pids
            .iter()
            .map(|pid| {
                let exe = fs::read_link(format!("/proc/{pid}/exe"))
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                format!("{pid} ({exe})")
            })
            .collect();
        tracer.progress(&format!(
            "tracing pid {}: {} probes on {}",
            described.join(", "),
            tracer.kernel.attached,
            tracer.object_list()
        ));
        ((tracer, ring), ExitWatch::pids(pidfds)?)
    };
    trace_loop(tracer, watch, None, listener).await?;
    Ok(0)
}

pub(super) async fn run_command(command: Vec<OsString>, options: ReportOptions) -> Result<i32> {
    kernel::check_environment(options.growth())?;
    let program = target::command::resolve_program(Path::new(&command[0]))?;
    let candidates = target::command::command_candidates(&program)?;
    // Growth mode probes no allocator: a program without malloc (Go's) runs
    // traced all the same.
    let objects = if options.growth() {
        Vec::new()
    } else {
        match target::allocator::choose_objects(&candidates) {
            // A Go program has no malloc: its goroutines are read all the
            // same (the report says its heap is not traced).
            Err(_) if is_go_file(&program) => {
                eprintln!("leaktrace: {GO_ONLY}");
                Vec::new()
            }
            chosen => chosen?,
        }
    };
    let placed = options.probe_placement == ProbePlacement::Auto;
    let maps = Arc::new(Mutex::new(ProcessMaps::from_mappings(0, Vec::new())));
    let maps_at_exit = maps.clone();
    // Filled once the probes (and the unwinder's maps) exist; the child
    // thread loads the tables when the command reaches its entry point.
    let unwind_slot: Arc<Mutex<Option<UnwindTables>>> = Arc::new(Mutex::new(None));
    let at_entry = run_hooks::at_entry(maps.clone(), unwind_slot.clone(), options.quiet);
    // At the command's exit stop its memory is still there: the event loop
    // drains what is left and reads the new sites' Python code objects
    // before the launcher lets it go (5 s at most).
    let (exit_stop_tx, exit_stops) = tokio::sync::mpsc::unbounded_channel();
    let (child, exit) = launch::spawn_held(&program, &command, at_entry, move || {
        run_hooks::refresh_at_exit(&maps_at_exit);
        let (done_tx, done) = std::sync::mpsc::channel::<()>();
        if exit_stop_tx.send(done_tx).is_ok() {
            let _: Result<_, _> = done.recv_timeout(std::time::Duration::from_secs(5));
        }
    })?;
    let pid = child.pid;
    *maps.lock().expect("maps lock") = ProcessMaps::new(pid);
    // Probes first, then exec: nothing the command allocates is missed.
    // If attaching fails, dropping `child` kills the held child.
    let kernel_options = kernel_options(&options, false);
    let (mut kernel, ring, unwind_tables) = KernelProbes::load(&kernel_options, false)?;
    let mut python_objects = PythonObjects::default();
    if options.python_objects {
        match python_objects.probe_command(&mut kernel, pid, &candidates, placed) {
            Ok(Some(done)) if !options.quiet => eprintln!("leaktrace: {done}"),
            Ok(_) => {}
            Err(err) => eprintln!("leaktrace: warning: no exact object counts: {err:#}"),
        }
    }
    let mut children = Children::new(
        kernel_options.follow_children.is_some(),
        placed,
        !options.growth(),
    );
    children.attach(&mut kernel, pid, objects.clone())?;
    kernel.trace_pid(pid)?;
    kernel.arm()?;
    let words: Vec<String> = command
        .iter()
        .map(|w| w.to_string_lossy().into_owned())
        .collect();
    let mut tracer = Tracer::new(
        tracer::Targets::Command(words.clone()),
        kernel,
        objects,
        children,
        None,
        options,
    );
    tracer.python_objects = python_objects;
    tracer.adopt(pid, maps, words.join(" "));
    *unwind_slot.lock().expect("unwind lock") = unwind_tables;
    tracer.unwind_tables = unwind_slot;
    tracer.pipeline.launch_exec_pending = true;
    let pidfd = child
        .pidfd
        .try_clone()
        .context("duplicating the command's pidfd")?;
    // Held at its exec, the command gets its entry stop's uprobe.
    child.start(|entry| {
        tracer
            .kernel
            .arm_entry_stop(pid, &entry.object, entry.file_offset, launch::ENTRY_SIGNAL)
    })?;
    tracer.progress(&format!(
        "tracing pid {pid} ({}): {} probes on {}",
        words.join(" "),
        tracer.kernel.attached,
        tracer.object_list()
    ));
    let stop = trace_loop(
        (tracer, ring),
        ExitWatch::Child(exit),
        Some((pidfd, exit_stops)),
        None,
    )
    .await?;
    run_hooks::exit_code(&stop)
}
