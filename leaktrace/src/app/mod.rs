//! The application: the command line, and what runs one trace from attach
//! to final report.
//!
//! - [`cli`]: the options, parsed and explained (`--help`);
//! - [`start`]: loads the kernel side and attaches the probes to the
//!   processes named, to every process, or to a command it starts;
//! - [`tracer`]: everything the daemon keeps while it traces, and the
//!   reports made from it;
//! - [`event_loop`]: drains the ring buffer as records arrive, reports at
//!   each interval and at the end, answers HTTP requests;
//! - [`report_requests`]: reports symbolized off the loop, and who waits
//!   for them;
//! - [`children`]: following the processes a traced process forks, and
//!   what is probed for each process traced by pid;
//! - [`exit_watch`]: when the traced processes are gone (pidfds);
//! - [`run_hooks`]: `run`'s hooks at its command's entry and exit stops;
//! - [`system_wide`]: `--all`, every process on the host, and
//!   [`object_inspector`]: the file work it does off the event loop;
//! - [`http`]: `serve`'s routes, request heads and responses;
//! - [`connections`]: `serve`'s connections, their limits and counters;
//! - [`output`]: report files replaced whole, devices written in place.
mod children;
pub mod cli;
mod connections;
mod event_loop;
mod exit_watch;
mod go_goroutines;
mod go_heap;
pub(crate) mod http;
mod object_inspector;
mod output;
mod python_frames;
mod python_objects;
mod report_requests;
mod run_hooks;
mod start;
mod system_wide;
mod tracer;

use anyhow::{Context as _, Result, bail};
use tokio::net::TcpListener;

use self::cli::{Cli, Command, ReportOptions, SERVE_SAMPLE_BYTES, TraceMode};

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
            choose_mode(&mut options, targets.all)?;
            runtime.block_on(start::trace_targets(targets, options, None))
        }
        Command::Serve {
            targets,
            listen,
            allow_remote,
            refresh,
            mut options,
        } => {
            http::check_listen_address(listen, allow_remote)?;
            if refresh.is_zero() {
                bail!("--refresh must be longer than 0s");
            }
            options.page_refresh = refresh;
            choose_mode(&mut options, true)?;
            runtime.block_on(async move {
                let listener = TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("listening on {listen}"))?;
                let address = listener.local_addr()?;
                if !options.quiet {
                    eprintln!(
                        "leaktrace: serving on http://{address}/ (/debug/pprof/heap, /metrics, /api/series)"
                    );
                }
                start::trace_targets(targets, options, Some(listener)).await
            })
        }
        Command::Run {
            mut options,
            command,
        } => {
            choose_mode(&mut options, false)?;
            runtime.block_on(start::run_command(command, options))
        }
        Command::Diff { old, new, format } => crate::diff::run(&old, &new, format),
    }
}

/// Settles `--mode` and what goes with it. Where leaktrace is left running
/// (`serve`, `trace --all`) growth mode is the default, unless an option
/// that counts allocations asks for them (`--sample-bytes`,
/// `--python-objects`); elsewhere, allocations. In allocations mode the
/// long-running commands sample by default.
fn choose_mode(options: &mut ReportOptions, long_running: bool) -> Result<()> {
    let counts_allocations = options.python_objects || options.sample_bytes.is_some();
    let default = if long_running && !counts_allocations {
        TraceMode::Growth
    } else {
        TraceMode::Allocations
    };
    match *options.mode.get_or_insert(default) {
        TraceMode::Growth => {
            if options.python_objects {
                bail!("--python-objects counts object allocations: it needs --mode allocations");
            }
            if options.sample_bytes.is_some() {
                bail!(
                    "--sample-bytes samples allocator calls: it needs --mode allocations (growth mode probes no allocator)"
                );
            }
        }
        TraceMode::Allocations => {
            if options.sample_pages.is_some() {
                bail!("--sample-pages samples growth mode's pages: it needs --mode growth");
            }
            if long_running && !options.python_objects {
                options.sample_bytes.get_or_insert(SERVE_SAMPLE_BYTES);
            }
        }
    }
    Ok(())
}
