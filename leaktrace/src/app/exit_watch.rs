//! When the traced processes are gone: a pidfd per process named by
//! `--pid` and per child followed, the launcher's word for `run`, never for
//! `--all`.
//!
//! With `--pid`, tracing ends once the processes named and the children
//! followed have all exited: a pre-forking master that exits (or re-execs)
//! leaves workers that still hold the leaks being looked for. `run` ends
//! with its command, as a shell does: children it leaves behind are traced
//! until then, and their tables are in the report.
use std::os::fd::OwnedFd;

use anyhow::{Context as _, Result};
use tokio::{io::unix::AsyncFd, sync::mpsc};

use crate::target::launch;

/// Tells when the traced processes are gone.
pub(crate) enum ExitWatch {
    /// `--pid`: one pidfd per process (named, or a child followed); the
    /// pids arrive as they exit.
    Pids {
        exits: mpsc::UnboundedReceiver<u32>,
        /// For the pidfds of children followed later.
        sender: mpsc::UnboundedSender<u32>,
        remaining: usize,
    },
    /// `run`: the launcher reports the command's exit status.
    Child(tokio::sync::oneshot::Receiver<launch::ExitStatus>),
    /// `--all`: runs until stopped.
    Never,
}

/// What a watch saw.
pub(crate) enum Exit {
    /// A process watched by pidfd exited: see [`ExitWatch::is_done`].
    One(u32),
    /// Everything traced is gone.
    All(Option<launch::ExitStatus>),
}

impl ExitWatch {
    /// Watches `pids` through pidfds (each one stays open, inside its
    /// `AsyncFd`, until it fires).
    pub(crate) fn pids(pidfds: Vec<(u32, OwnedFd)>) -> Result<ExitWatch> {
        let (sender, exits) = mpsc::unbounded_channel();
        let mut watch = ExitWatch::Pids {
            exits,
            sender,
            remaining: 0,
        };
        for (pid, pidfd) in pidfds {
            watch.add(pid, pidfd)?;
        }
        Ok(watch)
    }

    /// Also waits for `pid` (a child followed) under `--pid`; `run` and
    /// `--all` do not wait for children, and the pidfd is closed.
    pub(crate) fn add(&mut self, pid: u32, pidfd: OwnedFd) -> Result<()> {
        let ExitWatch::Pids {
            sender, remaining, ..
        } = self
        else {
            return Ok(());
        };
        // SAFETY: the OwnedFd stays open, and the same fd, inside the
        // AsyncFd.
        let pidfd = unsafe { AsyncFd::register(pidfd) }
            .map_err(std::io::Error::from)
            .context("watching a pidfd")?;
        let sender = sender.clone();
        tokio::spawn(async move {
            let _: Result<_, _> = pidfd.readable().await;
            let _: Result<_, _> = sender.send(pid);
        });
        *remaining += 1;
        Ok(())
    }

    /// Every process watched by pidfd has exited (never true for `run` or
    /// `--all`, which say so through [`Exit::All`] or not at all).
    pub(crate) fn is_done(&self) -> bool {
        matches!(self, ExitWatch::Pids { remaining: 0, .. })
    }

    pub(crate) async fn wait(&mut self) -> Exit {
        match self {
            ExitWatch::Pids {
                exits, remaining, ..
            } => match exits.recv().await {
                Some(pid) => {
                    *remaining -= 1;
                    Exit::One(pid)
                }
                None => std::future::pending().await,
            },
            ExitWatch::Child(rx) => Exit::All(rx.await.ok()),
            ExitWatch::Never => std::future::pending().await,
        }
    }
}

/// A pidfd for a traced pid, a missing process being the user's error.
pub(crate) fn pidfd_open(pid: u32) -> Result<OwnedFd> {
    launch::pidfd_open(pid).map_err(|err| {
        if err.raw_os_error() == Some(libc::ESRCH) {
            anyhow::anyhow!("no such process: {pid}")
        } else {
            anyhow::Error::new(err).context("pidfd_open")
        }
    })
}
