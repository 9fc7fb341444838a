//! Session: runs one trace from attach to final report.
//!
//! Wires the stages together: loads the kernel side and attaches the
//! probes (to the processes named, to every process, or to a command it
//! starts), drains the ring buffer into the engine as records arrive,
//! reports at each interval and at the end (duration elapsed, Ctrl-C or
//! SIGTERM, or the traced processes exited: whatever the ring buffer still
//! holds is drained before the last report).
use std::{
    ffi::OsString,
    fs,
    os::fd::{FromRawFd as _, OwnedFd},
    path::Path,
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, Result, bail};
use aya::maps::{MapData, RingBuf};
use tokio::{
    io::unix::AsyncFd,
    net::{TcpListener, TcpStream},
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use crate::{
    cli::{Cli, Command, ProbePlacement, ReportOptions, SERVE_SAMPLE_BYTES, StackMode, Targets},
    engine::{self, Engine},
    kernel::{self, KernelOptions, KernelProbes, Scope},
    launch, probes,
    report::{self},
    serve,
    symbolize::ProcessMaps,
    system::SystemWide,
    target,
    unwind_maps::UnwindTables,
};

/// Runs the parsed command line; returns the process exit code.
pub fn main(cli: Cli) -> Result<i32> {
    if let Command::Trace { options, .. } | Command::Run { options, .. } = &cli.command
        && options.format.is_binary()
        && options.output.is_none()
    {
        bail!("--format pprof is binary and cannot go to a terminal: give --output PATH");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match cli.command {
        Command::Trace {
            targets,
            mut options,
        } => {
            if targets.all {
                options.sample_bytes.get_or_insert(SERVE_SAMPLE_BYTES);
            }
            runtime.block_on(trace_targets(targets, options, None))
        }
        Command::Serve {
            targets,
            listen,
            allow_remote,
            mut options,
        } => {
            serve::check_listen_address(listen, allow_remote)?;
            options.sample_bytes.get_or_insert(SERVE_SAMPLE_BYTES);
            runtime.block_on(async move {
                let listener = TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("listening on {listen}"))?;
                let address = listener.local_addr()?;
                if !options.quiet {
                    eprintln!(
                        "leaktrace: serving on http://{address}/ (/debug/pprof/heap, /metrics)"
                    );
                }
                trace_targets(targets, options, Some(listener)).await
            })
        }
        Command::Run { options, command } => runtime.block_on(run_command(command, options)),
        Command::Diff { old, new, format } => report::diff::run(&old, &new, format),
    }
}

/// Writes a report to `path`. A regular file (or a new one) is replaced
/// through a temporary file and a rename, so a reader never sees a
/// half-written report. Anything else (/dev/null, /dev/stdout, a FIFO, a
/// terminal) is written in place: renaming a file over it would replace the
/// device itself, for every process on the machine. (It did: `--output
/// /dev/null` once turned this machine's /dev/null into a plain file.)
pub fn write_atomically(path: &Path, contents: impl AsRef<[u8]>) -> Result<()> {
    let special = fs::metadata(path).is_ok_and(|m| !m.file_type().is_file());
    if special {
        return fs::write(path, contents).with_context(|| format!("writing {}", path.display()));
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    fs::write(&tmp, contents).with_context(|| format!("writing {}", Path::new(&tmp).display()))?;
    fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// Why tracing stopped.
enum Stop {
    Exited(Option<launch::ExitStatus>),
    DurationElapsed,
    Signal(&'static str),
}

/// Tells when the traced processes are gone.
enum ExitWatch {
    /// `--pid`: one pidfd per process; the pids arrive as they exit.
    Pids {
        exits: mpsc::UnboundedReceiver<u32>,
        remaining: usize,
    },
    /// `run`: the launcher reports the command's exit status.
    Child(tokio::sync::oneshot::Receiver<launch::ExitStatus>),
    /// `--all`: runs until stopped.
    Never,
}

/// What a watch saw.
enum Exit {
    /// One of several processes exited; others remain.
    One(u32),
    /// Everything traced is gone.
    All(Option<launch::ExitStatus>),
}

impl ExitWatch {
    /// Watches `pids` through pidfds (each one stays open, inside its
    /// AsyncFd, until it fires).
    fn pids(pidfds: Vec<(u32, OwnedFd)>) -> Result<ExitWatch> {
        let (sender, exits) = mpsc::unbounded_channel();
        let remaining = pidfds.len();
        for (pid, pidfd) in pidfds {
            // SAFETY: the OwnedFd stays open, and the same fd, inside the
            // AsyncFd.
            let pidfd = unsafe { AsyncFd::register(pidfd) }
                .map_err(std::io::Error::from)
                .context("watching a pidfd")?;
            let sender = sender.clone();
            tokio::spawn(async move {
                let _ = pidfd.readable().await;
                let _ = sender.send(pid);
            });
        }
        Ok(ExitWatch::Pids { exits, remaining })
    }

    async fn wait(&mut self) -> Exit {
        match self {
            ExitWatch::Pids { exits, remaining } => match exits.recv().await {
                Some(pid) => {
                    *remaining -= 1;
                    if *remaining == 0 {
                        Exit::All(None)
                    } else {
                        Exit::One(pid)
                    }
                }
                None => std::future::pending().await,
            },
            ExitWatch::Child(rx) => Exit::All(rx.await.ok()),
            ExitWatch::Never => std::future::pending().await,
        }
    }
}

fn pidfd_open(pid: u32) -> Result<OwnedFd> {
    // SAFETY: plain syscall; the fd returned is ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ESRCH) {
            bail!("no such process: {pid}");
        }
        return Err(err).context("pidfd_open");
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn kernel_options(options: &ReportOptions) -> KernelOptions {
    KernelOptions {
        ring_buffer_bytes: options.ring_buffer_mib << 20,
        dwarf: options.stack_mode == StackMode::Dwarf,
        unwind_rows: options.unwind_rows,
        empty_programs: options.empty_programs,
        sample_mean: options.sample_mean(),
        sampled_blocks: options.sampled_blocks,
        sample_seed: None,
    }
}

/// `trace` and `serve`: the processes named by --pid, or every one (--all).
async fn trace_targets(
    targets: Targets,
    options: ReportOptions,
    listener: Option<TcpListener>,
) -> Result<i32> {
    kernel::check_environment()?;
    let placed = options.probe_placement == ProbePlacement::Auto;
    let (engine, watch) = if targets.all {
        let (mut kernel, ring, unwind_tables) =
            KernelProbes::load(&kernel_options(&options), true)?;
        let mut system = SystemWide::new(placed);
        let found = system.attach_running(&mut kernel)?;
        kernel.arm()?;
        let mut engine = Engine::new(
            engine::Targets::All(system),
            kernel,
            Vec::new(),
            unwind_tables,
            options,
        );
        engine.progress(&format!(
            "reading the mappings of {} processes{}",
            found.len(),
            if engine.unwind_summary().is_some() {
                " and loading their unwind tables"
            } else {
                ""
            }
        ));
        for pid in found {
            engine.track(pid);
        }
        if let Some(summary) = engine.unwind_summary() {
            engine.progress(&summary);
        }
        engine.progress(&format!(
            "tracing all processes ({} now, and those that start later): {} probes on {}",
            engine.process_count(),
            engine.kernel.attached,
            engine.object_list()
        ));
        ((engine, ring), ExitWatch::Never)
    } else {
        // A pid named twice would get its probes twice, and every call
        // counted twice.
        let mut pids = targets.pid;
        let mut seen = std::collections::HashSet::new();
        pids.retain(|pid| seen.insert(*pid));
        let several = pids.len() > 1;
        let mut pidfds = Vec::new();
        for &pid in &pids {
            target::check_pid(pid)?;
            pidfds.push((pid, pidfd_open(pid)?));
        }
        let (mut kernel, ring, unwind_tables) =
            KernelProbes::load(&kernel_options(&options), false)?;
        let mut objects: Vec<target::ProbedObject> = Vec::new();
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
            let plan = probes::plan(&found, placed);
            kernel.attach(&plan, Scope::Process(pid))?;
            kernel.trace_pid(pid)?;
            for object in found {
                if !objects
                    .iter()
                    .any(|o| o.display_path == object.display_path)
                {
                    objects.push(object);
                }
            }
        }
        kernel.arm()?;
        let mut engine = Engine::new(
            engine::Targets::Pids,
            kernel,
            objects,
            unwind_tables,
            options,
        );
        for &pid in &pids {
            engine.track(pid);
        }
        if let Some(summary) = engine.unwind_summary() {
            engine.progress(&summary);
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
        engine.progress(&format!(
            "tracing pid {}: {} probes on {}",
            described.join(", "),
            engine.kernel.attached,
            engine.object_list()
        ));
        ((engine, ring), ExitWatch::pids(pidfds)?)
    };
    trace_loop(engine, watch, None, listener).await?;
    Ok(0)
}

async fn run_command(command: Vec<OsString>, options: ReportOptions) -> Result<i32> {
    kernel::check_environment()?;
    let program = target::resolve_program(Path::new(&command[0]))?;
    let objects = target::objects_for_command(&program)?;
    let plan = probes::plan(&objects, options.probe_placement == ProbePlacement::Auto);
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
    let (child, exit) = launch::spawn_held(&program, &command, at_entry, move || {
        maps_at_exit.lock().expect("maps lock").refresh();
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
    let mut engine = Engine::new(
        engine::Targets::Command(words.clone()),
        kernel,
        objects,
        None,
        options,
    );
    engine.adopt(pid, maps, words.join(" "));
    *unwind_slot.lock().expect("unwind lock") = unwind_tables;
    engine.unwind_tables = unwind_slot;
    engine.pipeline.launch_exec_pending = true;
    child.start()?;
    engine.progress(&format!(
        "tracing pid {pid} ({}): {} probes on {}",
        words.join(" "),
        engine.kernel.attached,
        engine.object_list()
    ));
    let stop = trace_loop((engine, ring), ExitWatch::Child(exit), Some(pid), None).await?;
    Ok(match stop {
        Stop::Exited(Some(status)) => status.as_exit_code(),
        _ => 0,
    })
}

/// How often site growth is sampled without --interval.
const GROWTH_PERIOD: std::time::Duration = std::time::Duration::from_secs(10);

/// How often the ring buffer is drained when the kernel has not woken us.
const DRAIN_PERIOD: std::time::Duration = std::time::Duration::from_millis(20);

/// Drains events until a stop condition, then drains the rest and writes
/// the final report. `child` is the pid to forward SIGINT/SIGTERM to when
/// leaktrace launched it (the command decides when to stop).
async fn trace_loop(
    (mut engine, ring): (Engine, RingBuf<MapData>),
    mut watch: ExitWatch,
    child: Option<u32>,
    listener: Option<TcpListener>,
) -> Result<Stop> {
    // SAFETY: the ring buffer's map fd stays open, and the same fd, inside
    // the AsyncFd.
    let mut ring = unsafe { AsyncFd::register(ring) }
        .map_err(std::io::Error::from)
        .context("watching the ring buffer")?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let deadline = engine
        .options
        .duration
        .map(|d| tokio::time::Instant::now() + d);
    let interval = engine.options.interval;
    let mut next_report = interval.map(|i| tokio::time::Instant::now() + i);
    // The kernel wakes us only past a fill mark (see the eBPF side); this
    // timer drains what waits below it.
    let mut drain_timer = tokio::time::interval(DRAIN_PERIOD);
    drain_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Growth is sampled at every interval, or every 10 s without one.
    let mut growth_timer = tokio::time::interval(interval.unwrap_or(GROWTH_PERIOD));
    growth_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Connections are read and written by tasks of their own; only the
    // pages they ask for come through here, so no client holds up draining.
    let (pages_tx, mut pages) = mpsc::unbounded_channel();
    let mut forwarded = 0;
    let stop = loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                engine.drain(guard.get_inner_mut());
                guard.clear_ready();
            }
            _ = drain_timer.tick() => {
                engine.drain(ring.get_mut());
                engine.housekeeping(false);
            }
            _ = growth_timer.tick() => {
                engine.drain(ring.get_mut());
                engine.housekeeping(true);
                engine.record_growth();
            }
            accepted = accept(listener.as_ref()) => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(serve::handle(stream, pages_tx.clone()));
                }
                Err(err) => engine.progress(&format!("http: accepting a connection: {err}")),
            },
            Some((page, reply)) = pages.recv() => {
                engine.drain(ring.get_mut());
                let response = engine.page(page).unwrap_or_else(|err| {
                    engine.progress(&format!("http: {err:#}"));
                    ("500 Internal Server Error", "text/plain", format!("{err:#}\n").into_bytes())
                });
                // The client may have gone: nothing to do then.
                let _ = reply.send(response);
            }
            exit = watch.wait() => match exit {
                Exit::One(pid) => engine.progress(&format!("pid {pid} exited; still tracing the others")),
                Exit::All(status) => break Stop::Exited(status),
            },
            _ = sleep_until(deadline) => break Stop::DurationElapsed,
            _ = sleep_until(next_report) => {
                engine.drain(ring.get_mut());
                engine.emit(false)?;
                next_report = interval.map(|i| tokio::time::Instant::now() + i);
            }
            _ = interrupt.recv() => match child {
                Some(pid) if forwarded == 0 => {
                    forwarded += 1;
                    engine.progress("interrupted: passing SIGINT to the command, reporting when it exits (again to stop now)");
                    // SAFETY: signalling our own child.
                    unsafe { libc::kill(pid as i32, libc::SIGINT) };
                }
                _ => break Stop::Signal("SIGINT"),
            },
            _ = terminate.recv() => match child {
                Some(pid) if forwarded == 0 => {
                    forwarded += 1;
                    engine.progress("terminated: passing SIGTERM to the command, reporting when it exits");
                    // SAFETY: signalling our own child.
                    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
                }
                _ => break Stop::Signal("SIGTERM"),
            },
        }
    };
    engine.drain(ring.get_mut());
    match &stop {
        Stop::Exited(Some(status)) => engine.progress(&format!("the command exited ({status:?})")),
        Stop::Exited(None) => engine.progress("the traced processes exited"),
        Stop::DurationElapsed => engine.progress("duration elapsed"),
        Stop::Signal(name) => engine.progress(&format!("stopped by {name}")),
    }
    engine.emit(true)?;
    Ok(stop)
}

/// The next connection, or never without a listener.
async fn accept(
    listener: Option<&TcpListener>,
) -> std::io::Result<(TcpStream, std::net::SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::{io::Read as _, os::unix::fs::FileTypeExt as _};

    use super::*;

    #[test]
    fn reports_replace_regular_files_and_never_special_ones() {
        let dir = std::env::temp_dir().join(format!("leaktrace-write-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        // A regular file is replaced whole.
        let file = dir.join("report.txt");
        fs::write(&file, "old and longer").unwrap();
        write_atomically(&file, "new").unwrap();
        assert_eq!(fs::read_to_string(&file).unwrap(), "new");
        // A FIFO stays a FIFO, and its reader gets the report.
        let fifo = dir.join("fifo");
        let path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: plain syscall with a valid path.
        assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
        let reader_path = fifo.clone();
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            fs::File::open(reader_path)
                .unwrap()
                .read_to_string(&mut text)
                .unwrap();
            text
        });
        write_atomically(&fifo, "through the pipe").unwrap();
        assert_eq!(reader.join().unwrap(), "through the pipe");
        assert!(fs::metadata(&fifo).unwrap().file_type().is_fifo());
        // /dev/null stays a character device.
        write_atomically(Path::new("/dev/null"), "discarded").unwrap();
        assert!(
            fs::metadata("/dev/null")
                .unwrap()
                .file_type()
                .is_char_device()
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
