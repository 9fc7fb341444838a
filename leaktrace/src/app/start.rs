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
    cli::{ProbePlacement, ReportOptions, StackMode, Targets},
    event_loop::{Stop, trace_loop},
    exit_watch::{ExitWatch, pidfd_open},
    system_wide::SystemWide,
    tracer::{self, Tracer},
};
use crate::{
    kernel::{self, KernelOptions, KernelProbes, Scope, attach, unwind_tables::UnwindTables},
    symbolize::ProcessMaps,
    target::{self, launch, procfs},
};

fn kernel_options(options: &ReportOptions) -> KernelOptions {
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
    }
}

/// `trace` and `serve`: the processes named by --pid, or every one (--all).
pub(super) async fn trace_targets(
    targets: Targets,
    options: ReportOptions,
    listener: Option<TcpListener>,
) -> Result<i32> {
    kernel::check_environment()?;
    let placed = options.probe_placement == ProbePlacement::Auto;
    let (tracer, watch) = if targets.all {
        let (mut kernel, ring, unwind_tables) =
            KernelProbes::load(&kernel_options(&options), true)?;
        let mut system = SystemWide::new(placed);
        let found = system.attach_running(&mut kernel)?;
        kernel.arm()?;
        let mut tracer = Tracer::new(
            tracer::Targets::All(system),
            kernel,
            Vec::new(),
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
        let (kernel, ring, unwind_tables) = KernelProbes::load(&kernel_options(&options), false)?;
        let mut objects: Vec<target::ProbedObject> = Vec::new();
        let mut plans = Vec::new();
        // One cache: the processes' shared libraries are read once.
        let mut symbols = target::SymbolCache::default();
        for &pid in &pids {
            let context = || format!("pid {pid}");
            let found = target::objects_for_pid_cached(pid, &mut symbols);
            let found = if several {
                found.with_context(context)?
            } else {
                found?
            };
            plans.push((pid, attach::plan(&found, placed)));
            for object in found {
                if !objects
                    .iter()
                    .any(|o| o.display_path == object.display_path)
                {
                    objects.push(object);
                }
            }
        }
        let mut tracer = Tracer::new(
            tracer::Targets::Pids,
            kernel,
            objects,
            unwind_tables,
            options,
        );
        // Unwind tables and Python walks before the first probe: an
        // allocation recorded without them would keep a stack cut at the
        // first frame without frame pointers, and no Python frames (a few
        // hundred ms of a busy process's leaks, measured).
        for &pid in &pids {
            tracer.track(pid);
        }
        for (pid, plan) in plans {
            tracer.kernel.attach(&plan, Scope::Process(pid))?;
            tracer.kernel.trace_pid(pid)?;
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
    kernel::check_environment()?;
    let program = target::command::resolve_program(Path::new(&command[0]))?;
    let objects = target::command::objects_for_command(&program)?;
    let plan = attach::plan(&objects, options.probe_placement == ProbePlacement::Auto);
    let maps = Arc::new(Mutex::new(ProcessMaps::from_mappings(0, Vec::new())));
    let maps_at_exit = maps.clone();
    // Filled once the probes (and the unwinder's maps) exist; the child
    // thread loads the tables when the command reaches its entry point.
    let unwind_slot: Arc<Mutex<Option<UnwindTables>>> = Arc::new(Mutex::new(None));
    let (maps_at_entry, unwind_at_entry) = (maps.clone(), unwind_slot.clone());
    let quiet = options.quiet;
    let at_entry = move || {
        let mut maps = maps_at_entry.lock().expect("maps lock");
        if maps.refresh()
            && let Some(tables) = unwind_at_entry.lock().expect("unwind lock").as_mut()
        {
            match tables.load_process(maps.pid, maps.current(), maps.root()) {
                Ok(()) if !quiet => eprintln!("leaktrace: {}", tables.summary()),
                Ok(()) => {}
                Err(err) => eprintln!("leaktrace: warning: unwind tables not loaded: {err:#}"),
            }
        }
    };
    // At the command's exit stop its memory is still there: the event loop
    // drains what is left and reads the new sites' Python code objects
    // before the launcher lets it go (5 s at most).
    let (exit_stop_tx, exit_stops) = tokio::sync::mpsc::unbounded_channel();
    let (child, exit) = launch::spawn_held(&program, &command, at_entry, move || {
        maps_at_exit.lock().expect("maps lock").refresh();
        let (done_tx, done) = std::sync::mpsc::channel::<()>();
        if exit_stop_tx.send(done_tx).is_ok() {
            let _: Result<_, _> = done.recv_timeout(std::time::Duration::from_secs(5));
        }
    })?;
    let pid = child.pid;
    *maps.lock().expect("maps lock") = ProcessMaps::new(pid);
    // Probes first, then exec: nothing the command allocates is missed.
    // If attaching fails, dropping `child` kills the held child.
    let (mut kernel, ring, unwind_tables) = KernelProbes::load(&kernel_options(&options), false)?;
    kernel.attach(&plan, Scope::Process(pid))?;
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
        None,
        options,
    );
    tracer.adopt(pid, maps, words.join(" "));
    *unwind_slot.lock().expect("unwind lock") = unwind_tables;
    tracer.unwind_tables = unwind_slot;
    tracer.pipeline.launch_exec_pending = true;
    child.start()?;
    tracer.progress(&format!(
        "tracing pid {pid} ({}): {} probes on {}",
        words.join(" "),
        tracer.kernel.attached,
        tracer.object_list()
    ));
    let stop = trace_loop(
        (tracer, ring),
        ExitWatch::Child(exit),
        Some((pid, exit_stops)),
        None,
    )
    .await?;
    Ok(match stop {
        Stop::Exited(Some(status)) => status.as_exit_code(),
        _ => 0,
    })
}
