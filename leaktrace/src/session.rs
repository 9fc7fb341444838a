//! Session: runs one trace from attach to final report.
//!
//! Wires the stages together: attaches the probes, drains the ring buffer
//! into the heap table as events arrive, reports at each interval and at
//! the end (duration elapsed, Ctrl-C or SIGTERM, or the process exited:
//! whatever the ring buffer still holds is drained before the last report).
use std::{
    ffi::OsString,
    fs,
    io::Write as _,
    os::fd::{FromRawFd as _, OwnedFd},
    path::Path,
    sync::{Arc, Mutex},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use aya::maps::{MapData, RingBuf};
use tokio::{
    io::unix::AsyncFd,
    net::{TcpListener, TcpStream},
    signal::unix::{SignalKind, signal},
};

use crate::{
    aggregate,
    cli::{Cli, Command, ProbePlacement, ReportOptions, SERVE_SAMPLE_BYTES, StackMode},
    growth::GrowthTracker,
    heap::HeapTable,
    kernel::{self, KernelOptions, KernelProbes},
    launch,
    pipeline::{Ingested, Pipeline},
    probes,
    report::{self, Format, Losses, ReportInput},
    serve::{self, Page},
    symbolize::{ProcessMaps, Symbolizer},
    target::{self, ProbedObject},
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
        Command::Trace { pid, options } => runtime.block_on(trace_pid(pid, options, None)),
        Command::Serve {
            pid,
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
                trace_pid(pid, options, Some(listener)).await
            })
        }
        Command::Run { options, command } => runtime.block_on(run_command(command, options)),
        Command::Diff { old, new, format } => report::diff::run(&old, &new, format),
    }
}

/// CLOCK_MONOTONIC in ns, the clock of bpf_ktime_get_ns.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Everything the daemon keeps about one traced process.
struct Engine {
    pid: u32,
    command: Option<Vec<String>>,
    objects: Vec<ProbedObject>,
    pipeline: Pipeline,
    maps: Arc<Mutex<ProcessMaps>>,
    symbolizer: Symbolizer,
    /// Each site's outstanding bytes at every interval.
    growth: GrowthTracker,
    /// The unwinder's tables, in `--stack-mode dwarf` (shared with the
    /// child thread of `run`, which loads them at the command's entry).
    unwind_tables: Arc<Mutex<Option<UnwindTables>>>,
    started: Instant,
    options: ReportOptions,
}

impl Engine {
    /// Applies every record waiting in the ring buffer.
    fn drain(&mut self, ring: &mut RingBuf<MapData>) {
        while let Some(item) = ring.next() {
            self.ingest(&item);
        }
    }

    fn ingest(&mut self, bytes: &[u8]) {
        let refresh = match self.pipeline.ingest(bytes) {
            Ingested::Applied => false,
            // Make sure the new stack's code is in the mappings we know,
            // while the process is still there to ask.
            Ingested::NewSite(stack) => {
                let maps = self.maps.lock().expect("maps lock");
                !stack.iter().all(|&a| maps.covers(a.saturating_sub(1)))
            }
            // The mapping history is kept: the newest mapping of an address
            // wins.
            Ingested::Exec(_) => true,
        };
        if refresh {
            self.refresh_mappings();
        }
    }

    /// Rereads the process's mappings and hands new executable ones to the
    /// unwinder (libraries loaded with dlopen, a new image after exec).
    fn refresh_mappings(&mut self) {
        let mut maps = self.maps.lock().expect("maps lock");
        if maps.refresh()
            && let Some(tables) = self.unwind_tables.lock().expect("unwind lock").as_mut()
            && let Err(err) = tables.load_process(self.pid, maps.current(), maps.root())
        {
            eprintln!("leaktrace: warning: unwind tables not updated: {err:#}");
        }
    }

    fn report(&mut self, kernel: &KernelProbes, is_final: bool) -> Result<report::Report> {
        let now_ns = monotonic_ns();
        let min_age = self.options.min_age;
        let pipeline = &self.pipeline;
        let totals = aggregate::outstanding_by_site(
            &pipeline.table,
            now_ns,
            min_age.as_nanos() as u64,
            u64::from(self.options.sample_mean()),
        );
        let losses = Losses::new(
            kernel.losses()?,
            pipeline.decode_errors,
            pipeline.table.stats.dropped_at_cap,
        );
        let maps = self.maps.lock().expect("maps lock").clone();
        Ok(report::build(
            ReportInput {
                pids: vec![self.pid],
                command: self.command.clone(),
                allocator_objects: self
                    .objects
                    .iter()
                    .map(|o| o.display_path.clone())
                    .collect(),
                elapsed: self.started.elapsed(),
                is_final,
                min_age,
                sample_bytes: u64::from(self.options.sample_mean()),
                stats: pipeline.table.stats,
                events: pipeline.events,
                execs: pipeline.execs,
                losses,
                totals: &totals,
                sites: &pipeline.sites,
                growth: &self.growth,
            },
            &maps,
            &mut self.symbolizer,
        ))
    }

    /// Writes a report where the options say.
    fn emit(&mut self, kernel: &KernelProbes, is_final: bool) -> Result<()> {
        let report = self.report(kernel, is_final)?;
        let options = &self.options;
        let rendered = report::render_bytes(&report, options.format, options.top);
        match &options.output {
            Some(path) => write_atomically(path, &rendered)?,
            None => {
                let mut stdout = std::io::stdout().lock();
                let separator = if options.format == Format::Text && !is_final {
                    "\n"
                } else {
                    ""
                };
                stdout.write_all(&rendered)?;
                stdout.write_all(separator.as_bytes())?;
                stdout.flush()?;
            }
        }
        if is_final && let Some(path) = &options.folded {
            write_atomically(path, report::render(&report, Format::Folded, 0))?;
        }
        if is_final && !options.quiet {
            eprintln!(
                "leaktrace: {} bytes outstanding in {} allocations at {} call sites; {}",
                report.totals.outstanding_bytes,
                report.totals.outstanding_allocations,
                report.totals.call_sites,
                report.losses.summary()
            );
            let usage = own_usage();
            eprintln!(
                "leaktrace: the daemon used {} ms of CPU and {} MiB of memory at most",
                usage.cpu_ms, usage.max_rss_mib
            );
        }
        Ok(())
    }

    /// Samples every site's outstanding bytes for the growth ranking.
    fn record_growth(&mut self) {
        let totals = aggregate::outstanding_by_site(
            &self.pipeline.table,
            monotonic_ns(),
            0,
            u64::from(self.options.sample_mean()),
        );
        self.growth
            .record(self.started.elapsed().as_secs_f64(), &totals);
    }

    /// Answers one HTTP request with the current report (serve).
    async fn answer(&mut self, mut stream: TcpStream, kernel: &KernelProbes) -> Result<()> {
        let request = serve::read_request_line(&mut stream).await?;
        let page = serve::route(&request);
        let (status, content_type, body) = match page {
            Page::NotFound => ("404 Not Found", "text/plain", b"not found\n".to_vec()),
            Page::BadMethod => (
                "405 Method Not Allowed",
                "text/plain",
                b"GET only\n".to_vec(),
            ),
            Page::Index | Page::Heap | Page::Metrics => {
                let report = self.report(kernel, false)?;
                match page {
                    Page::Index => (
                        "200 OK",
                        "text/html; charset=utf-8",
                        report::html::render(&report, self.options.top).into_bytes(),
                    ),
                    Page::Heap => (
                        "200 OK",
                        "application/octet-stream",
                        report::pprof::render(&report),
                    ),
                    _ => (
                        "200 OK",
                        "text/plain; version=0.0.4",
                        report::metrics::render(&report, report::metrics::own_rss_bytes())
                            .into_bytes(),
                    ),
                }
            }
        };
        serve::respond(&mut stream, status, content_type, &body).await
    }

    fn progress(&self, message: &str) {
        if !self.options.quiet {
            eprintln!("leaktrace: {message}");
        }
    }
}

/// What leaktrace itself cost: CPU time and peak resident memory.
struct OwnUsage {
    cpu_ms: u64,
    max_rss_mib: u64,
}

fn own_usage() -> OwnUsage {
    // SAFETY: getrusage fills the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let ms = |t: libc::timeval| t.tv_sec as u64 * 1000 + t.tv_usec as u64 / 1000;
    OwnUsage {
        cpu_ms: ms(usage.ru_utime) + ms(usage.ru_stime),
        max_rss_mib: usage.ru_maxrss as u64 / 1024,
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

/// A future that resolves when the traced process is gone.
enum ExitWatch {
    Pidfd(AsyncFd<OwnedFd>),
    Child(tokio::sync::oneshot::Receiver<launch::ExitStatus>),
}

impl ExitWatch {
    async fn wait(&mut self) -> Option<launch::ExitStatus> {
        match self {
            ExitWatch::Pidfd(fd) => {
                let _ = fd.readable().await;
                None
            }
            ExitWatch::Child(rx) => rx.await.ok(),
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
    }
}

async fn trace_pid(pid: u32, options: ReportOptions, listener: Option<TcpListener>) -> Result<i32> {
    kernel::check_environment()?;
    target::check_pid(pid)?;
    let pidfd = pidfd_open(pid)?;
    let objects = target::objects_for_pid(pid)?;
    let plan = probes::plan(&objects, options.probe_placement == ProbePlacement::Auto);
    let (kernel, ring, unwind_tables) =
        KernelProbes::attach(pid, &plan, &kernel_options(&options))?;
    let mut engine = Engine::new(pid, None, objects, ProcessMaps::new(pid), options);
    *engine.unwind_tables.lock().expect("unwind lock") = unwind_tables;
    engine.refresh_mappings();
    if let Some(tables) = engine.unwind_tables.lock().expect("unwind lock").as_ref() {
        engine.progress(&tables.summary());
    }
    let kernel = (kernel, ring);
    engine.progress(&format!(
        "tracing pid {pid} ({}): {} probes on {}",
        fs::read_link(format!("/proc/{pid}/exe"))
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        kernel.0.attached,
        engine.object_list()
    ));
    // SAFETY: the OwnedFd stays open, and the same fd, inside the AsyncFd.
    let pidfd = unsafe { AsyncFd::register(pidfd) }.map_err(std::io::Error::from)?;
    let watch = ExitWatch::Pidfd(pidfd);
    let (stop, _) = trace_loop(engine, kernel, watch, None, listener).await?;
    Ok(match stop {
        Stop::Exited(_) | Stop::DurationElapsed | Stop::Signal(_) => 0,
    })
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
    let (kernel, ring, unwind_tables) =
        KernelProbes::attach(pid, &plan, &kernel_options(&options))?;
    let kernel = (kernel, ring);
    let words: Vec<String> = command
        .iter()
        .map(|w| w.to_string_lossy().into_owned())
        .collect();
    let mut engine = Engine::new(
        pid,
        Some(words.clone()),
        objects,
        ProcessMaps::new(pid),
        options,
    );
    engine.maps = maps;
    *unwind_slot.lock().expect("unwind lock") = unwind_tables;
    engine.unwind_tables = unwind_slot;
    engine.pipeline.launch_exec_pending = true;
    child.start()?;
    engine.progress(&format!(
        "tracing pid {pid} ({}): {} probes on {}",
        words.join(" "),
        kernel.0.attached,
        engine.object_list()
    ));
    let (stop, _) = trace_loop(engine, kernel, ExitWatch::Child(exit), Some(pid), None).await?;
    Ok(match stop {
        Stop::Exited(Some(status)) => status.as_exit_code(),
        _ => 0,
    })
}

impl Engine {
    fn new(
        pid: u32,
        command: Option<Vec<String>>,
        objects: Vec<ProbedObject>,
        maps: ProcessMaps,
        options: ReportOptions,
    ) -> Engine {
        Engine {
            pid,
            command,
            objects,
            pipeline: Pipeline {
                table: HeapTable::with_epoch(monotonic_ns()).with_cap(options.max_allocations),
                ..Pipeline::default()
            },
            maps: Arc::new(Mutex::new(maps)),
            symbolizer: Symbolizer::default(),
            unwind_tables: Arc::new(Mutex::new(None)),
            growth: GrowthTracker::default(),
            started: Instant::now(),
            options,
        }
    }

    fn object_list(&self) -> String {
        self.objects
            .iter()
            .map(|o| format!("{} ({} functions)", o.display_path, o.functions.len()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// How often site growth is sampled without --interval.
const GROWTH_PERIOD: std::time::Duration = std::time::Duration::from_secs(10);

/// How often the ring buffer is drained when the kernel has not woken us.
const DRAIN_PERIOD: std::time::Duration = std::time::Duration::from_millis(20);

/// Drains events until a stop condition, then drains the rest and writes
/// the final report. `child` is the pid to forward SIGINT/SIGTERM to when
/// leaktrace launched it (the command decides when to stop).
async fn trace_loop(
    mut engine: Engine,
    kernel: (KernelProbes, RingBuf<MapData>),
    mut watch: ExitWatch,
    child: Option<u32>,
    listener: Option<TcpListener>,
) -> Result<(Stop, Engine)> {
    let (kernel, ring) = kernel;
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
    let mut forwarded = 0;
    let stop = loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                engine.drain(guard.get_inner_mut());
                guard.clear_ready();
            }
            _ = drain_timer.tick() => engine.drain(ring.get_mut()),
            _ = growth_timer.tick() => {
                engine.drain(ring.get_mut());
                engine.record_growth();
            }
            accepted = accept(listener.as_ref()) => match accepted {
                Ok((stream, _)) => {
                    engine.drain(ring.get_mut());
                    if let Err(err) = engine.answer(stream, &kernel).await {
                        engine.progress(&format!("http: {err:#}"));
                    }
                }
                Err(err) => engine.progress(&format!("http: accepting a connection: {err}")),
            },
            status = watch.wait() => break Stop::Exited(status),
            _ = sleep_until(deadline) => break Stop::DurationElapsed,
            _ = sleep_until(next_report) => {
                engine.drain(ring.get_mut());
                engine.emit(&kernel, false)?;
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
        Stop::Exited(None) => engine.progress(&format!("pid {} exited", engine.pid)),
        Stop::DurationElapsed => engine.progress("duration elapsed"),
        Stop::Signal(name) => engine.progress(&format!("stopped by {name}")),
    }
    engine.emit(&kernel, true)?;
    Ok((stop, engine))
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
