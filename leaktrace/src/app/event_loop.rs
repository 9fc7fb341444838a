//! The event loop: drains the ring buffer into the tracer as records
//! arrive (and every 20 ms below the kernel's wake-up mark), samples growth,
//! reports at each interval, answers HTTP requests, forwards signals to
//! `run`'s command, and drains what is left before the final report.
//! Reports are symbolized on a thread (`report_requests`): the loop keeps
//! draining while they are.
use std::os::fd::OwnedFd;

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use tokio::{
    io::unix::AsyncFd,
    net::TcpListener,
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use super::{
    connections,
    exit_watch::{Exit, ExitWatch},
    report_requests::ReportRequests,
    tracer::Tracer,
};
use crate::{
    symbolize::worker::{self, SymbolAnswers},
    target::launch,
};

/// Why tracing stopped.
pub(crate) enum Stop {
    Exited(Option<launch::ExitStatus>),
    DurationElapsed,
    Signal(&'static str),
}

/// How often site growth is sampled without --interval.
const GROWTH_PERIOD: std::time::Duration = std::time::Duration::from_secs(10);

/// How often the ring buffer is drained when the kernel has not woken us.
const DRAIN_PERIOD: std::time::Duration = std::time::Duration::from_millis(20);

/// Records applied per drain before the loop looks at its timers, signals
/// and requests again (tens of milliseconds of work at most).
const DRAIN_BATCH: usize = 1 << 16;

/// Records applied after the stop, before the final report: what the ring
/// buffer holds (16 MiB of records of 96 bytes and more is under 200,000),
/// bounded so that processes that keep allocating under `--all` cannot hold
/// the final report back.
const FINAL_DRAIN: usize = 1 << 22;

/// `run`'s command at its exit stop: the sender to answer once what it
/// left in the ring buffer has been applied.
pub(super) type ExitStops = mpsc::UnboundedReceiver<std::sync::mpsc::Sender<()>>;

/// Drains events until a stop condition, then drains the rest and writes
/// the final report. `launched` is the command leaktrace started: the
/// pidfd to forward SIGINT/SIGTERM through (never to a reused pid) (the command decides when to stop), and its
/// exit stops.
pub(super) async fn trace_loop(
    (mut tracer, ring): (Tracer, RingBuf<MapData>),
    mut watch: ExitWatch,
    launched: Option<(OwnedFd, ExitStops)>,
    listener: Option<TcpListener>,
) -> Result<Stop> {
    let (child, mut exit_stops) = launched.unzip();
    // SAFETY: the ring buffer's map fd stays open, and the same fd, inside
    // the AsyncFd.
    let mut ring = unsafe { AsyncFd::register(ring) }
        .map_err(std::io::Error::from)
        .context("watching the ring buffer")?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let deadline = tracer
        .options
        .duration
        .map(|d| tokio::time::Instant::now() + d);
    let interval = tracer.options.interval;
    let mut next_report = interval.map(|i| tokio::time::Instant::now() + i);
    // The kernel wakes us only past a fill mark (see the eBPF side); this
    // timer drains what waits below it.
    let mut drain_timer = tokio::time::interval(DRAIN_PERIOD);
    drain_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Growth is sampled at every interval, or every 10 s without one.
    let mut growth_timer = tokio::time::interval(interval.unwrap_or(GROWTH_PERIOD));
    growth_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Connections are accepted, read and written by tasks of their own;
    // only the pages they ask for come through here, so no client holds up
    // draining, and at most PAGE_QUEUE wait (the others are answered 503).
    let http_counters = std::sync::Arc::new(connections::Counters::default());
    let (pages_tx, mut pages) = mpsc::channel(connections::PAGE_QUEUE);
    if let Some(listener) = listener {
        tokio::spawn(connections::serve(
            listener,
            pages_tx,
            http_counters.clone(),
        ));
    } else {
        drop(pages_tx);
    }
    // Reports are symbolized on a thread of their own, the loop draining
    // meanwhile (without it, on the loop as before).
    let (jobs, mut answers) = match worker::start() {
        Ok((jobs, answers)) => (Some(jobs), Some(answers)),
        Err(err) => {
            tracer.progress(&format!("{err:#}: symbolizing on the event loop"));
            (None, None)
        }
    };
    let mut requests = ReportRequests::new(jobs);
    let mut forwarded = 0;
    let stop = loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                // A full batch may have left records behind: stay ready.
                if tracer.drain(guard.get_inner_mut(), DRAIN_BATCH) < DRAIN_BATCH {
                    guard.clear_ready();
                }
            }
            _ = drain_timer.tick() => {
                tracer.drain(ring.get_mut(), DRAIN_BATCH);
                tracer.housekeeping(false);
            }
            _ = growth_timer.tick() => {
                tracer.drain(ring.get_mut(), DRAIN_BATCH);
                tracer.housekeeping(true);
                tracer.record_growth();
            }
            Some(request) = pages.recv(), if requests.takes_pages() => {
                tracer.drain(ring.get_mut(), DRAIN_BATCH);
                if requests.page(&mut tracer, request, &http_counters)? {
                    next_report = interval.map(|i| tokio::time::Instant::now() + i);
                }
            }
            resolved = next_answer(answers.as_mut()) => {
                let written = if let Some(resolved) = resolved {
                    requests.resolved(&mut tracer, resolved, &http_counters)?
                } else {
                    answers = None;
                    requests.worker_gone(&mut tracer, &http_counters)?
                };
                if written {
                    next_report = interval.map(|i| tokio::time::Instant::now() + i);
                }
            }
            Some(done) = next_exit_stop(exit_stops.as_mut()) => {
                tracer.drain(ring.get_mut(), FINAL_DRAIN);
                tracer.read_live_state();
                // The launcher may have given up waiting: nothing to do then.
                let _: Result<_, _> = done.send(());
            }
            exit = watch.wait() => match exit {
                Exit::One(pid) => {
                    // It may have forked just before it exited: the
                    // children are followed (and watched) before the
                    // watch is asked whether anything is left.
                    tracer.drain(ring.get_mut(), FINAL_DRAIN);
                    watch_children(&mut tracer, &mut watch)?;
                    if watch.is_done() {
                        break Stop::Exited(None);
                    }
                    tracer.progress(&format!("pid {pid} exited; still tracing the others"));
                }
                Exit::All(status) => break Stop::Exited(status),
            },
            () = sleep_until(deadline) => break Stop::DurationElapsed,
            () = sleep_until(next_report) => {
                tracer.drain(ring.get_mut(), DRAIN_BATCH);
                // The next interval counts from when this report is out.
                next_report = None;
                if requests.interval(&mut tracer, &http_counters)? {
                    next_report = interval.map(|i| tokio::time::Instant::now() + i);
                }
            }
            _ = interrupt.recv() => match &child {
                Some(pidfd) if forwarded == 0 => {
                    forwarded += 1;
                    tracer.progress("interrupted: passing SIGINT to the command, reporting when it exits (again to stop now)");
                    // Already gone: its exit is on its way.
                    let _: std::io::Result<()> = launch::pidfd_signal(pidfd, libc::SIGINT);
                }
                _ => break Stop::Signal("SIGINT"),
            },
            _ = terminate.recv() => match &child {
                Some(pidfd) if forwarded == 0 => {
                    forwarded += 1;
                    tracer.progress("terminated: passing SIGTERM to the command, reporting when it exits");
                    // Already gone: its exit is on its way.
                    let _: std::io::Result<()> = launch::pidfd_signal(pidfd, libc::SIGTERM);
                }
                _ => break Stop::Signal("SIGTERM"),
            },
        }
        watch_children(&mut tracer, &mut watch)?;
    };
    tracer.drain(ring.get_mut(), FINAL_DRAIN);
    match &stop {
        // Said once, as the error `run` ends with.
        Stop::Exited(Some(launch::ExitStatus::Lost(_))) => {}
        Stop::Exited(Some(status)) => tracer.progress(&format!("the command exited ({status:?})")),
        Stop::Exited(None) => tracer.progress("the traced processes exited"),
        Stop::DurationElapsed => tracer.progress("duration elapsed"),
        Stop::Signal(name) => tracer.progress(&format!("stopped by {name}")),
    }
    requests
        .final_report(&mut tracer, answers.as_mut(), DRAIN_PERIOD, &mut |tracer| {
            tracer.drain(ring.get_mut(), DRAIN_BATCH);
        })
        .await?;
    Ok(stop)
}

/// Hands the pidfds of the children followed since the last call to the
/// exit watch.
fn watch_children(tracer: &mut Tracer, watch: &mut ExitWatch) -> Result<()> {
    for (pid, pidfd) in tracer.children.take_pidfds() {
        watch.add(pid, pidfd)?;
    }
    Ok(())
}

/// The symbolizer thread's next answer, or never without one.
async fn next_answer(answers: Option<&mut SymbolAnswers>) -> Option<crate::symbolize::Resolved> {
    match answers {
        Some(answers) => answers.next().await,
        None => std::future::pending().await,
    }
}

/// The next exit stop of `run`'s command, or never without one.
async fn next_exit_stop(stops: Option<&mut ExitStops>) -> Option<std::sync::mpsc::Sender<()>> {
    match stops {
        Some(stops) => stops.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
