//! Launch: start a command that is traced from its first allocation.
//!
//! The child is forked and held before exec until every probe is attached
//! to it; uprobes follow its pid through exec, so nothing it allocates is
//! missed. The launcher thread also ptrace-seizes the child, for two stops
//! (see `launch_wait`): at its entry point, once the dynamic loader has
//! mapped every library (`at_entry` loads their unwind tables before main
//! runs), and at its exit, while its address space still exists (`at_exit`
//! reads its mappings for the report of a program that exits before anyone
//! could look at it).
//!
//! Nothing is ever written into the command: the entry stop is a uprobe
//! that asks for a signal whose default action is to ignore it (see
//! `launch_wait`). If leaktrace dies, however it dies, the kernel removes
//! the uprobe and detaches the command, which runs on untouched.
//!
//! Every fd is owned (`OwnedFd`), so no path leaks one, and the command is
//! signalled through a pidfd, never by a pid that may have been reused.
use std::{
    ffi::{CString, OsString},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
    sync::mpsc,
    thread,
};

use anyhow::{Context as _, Result, anyhow, bail};

use super::launch_wait::{Handshake, Hooks, wait_traced};

/// The signal the entry stop sends: ignored by default, so that a command
/// whose tracer died while it was pending does nothing with it (exec resets
/// handlers; a disposition of "ignore" survives exec, and is as harmless).
pub(crate) const ENTRY_SIGNAL: i32 = libc::SIGURG;

/// How the launched command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ExitStatus {
    Code(i32),
    Signal(i32),
    /// Waiting for it failed (the errno): its status is unknown.
    Lost(i32),
}

impl ExitStatus {
    /// The shell's convention: the code, or 128 + signal; an error when the
    /// status is unknown (never 0: a lost status is not a success).
    pub(crate) fn as_exit_code(self) -> Result<i32> {
        match self {
            ExitStatus::Code(code) => Ok(code),
            ExitStatus::Signal(signal) => Ok(128 + signal),
            ExitStatus::Lost(errno) => bail!(
                "lost track of the command: waitpid: {}",
                std::io::Error::from_raw_os_error(errno)
            ),
        }
    }
}

/// Where the command's entry point is, for the entry stop's uprobe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct EntryPoint {
    /// `AT_ENTRY`, in the command's address space.
    pub address: u64,
    /// The file mapped there, as a /proc magic link to exactly that file.
    pub object: PathBuf,
    pub file_offset: u64,
}

/// A forked child waiting for `start` before it execs.
pub(crate) struct HeldChild {
    pub pid: u32,
    /// A pidfd of the child: signals reach it, or nobody.
    pub pidfd: OwnedFd,
    go: mpsc::Sender<()>,
    started: mpsc::Receiver<Result<()>>,
    exec_stop: mpsc::Receiver<EntryPoint>,
    armed: mpsc::Sender<bool>,
}

/// Forks `program` with `args` (args[0] included), held before exec. The
/// returned receiver yields the exit status. `at_entry` runs while the
/// child is stopped at its entry point (or at its exec when no entry stop
/// could be armed), `at_exit` while it is stopped at its exit, before its
/// address space is torn down. A panic in either is caught: the command
/// goes on, and its exit status still arrives.
pub(crate) fn spawn_held(
    program: &Path,
    args: &[OsString],
    at_entry: impl FnOnce() + Send + 'static,
    at_exit: impl FnOnce() + Send + 'static,
) -> Result<(HeldChild, tokio::sync::oneshot::Receiver<ExitStatus>)> {
    let path =
        CString::new(program.as_os_str().as_bytes()).context("program path has a NUL byte")?;
    let argv: Vec<CString> = args
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .context("an argument has a NUL byte")?;
    let (pid_tx, pid_rx) = mpsc::channel::<Result<(u32, OwnedFd)>>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (started_tx, started_rx) = mpsc::channel::<Result<()>>();
    let (exec_stop_tx, exec_stop_rx) = mpsc::channel::<EntryPoint>();
    let (armed_tx, armed_rx) = mpsc::channel::<bool>();
    let (exit_tx, exit_rx) = tokio::sync::oneshot::channel();
    // ptrace requests must come from the thread that seized the child, so
    // one thread forks it, releases it and waits for it.
    thread::Builder::new()
        .name("leaktrace-child".into())
        .spawn(move || {
            let child = match fork_held(&path, &argv) {
                Ok(child) => child,
                Err(err) => {
                    let _: Result<_, _> = pid_tx.send(Err(err));
                    return;
                }
            };
            let pidfd = child.pidfd.try_clone().context("duplicating the pidfd");
            let _: Result<_, _> = pid_tx.send(pidfd.map(|fd| (child.pid, fd)));
            if go_rx.recv().is_err() {
                // The tracer gave up before starting it.
                child.give_up();
                let _: Result<_, _> = started_tx.send(Err(anyhow!("not started")));
                return;
            }
            let (pid, traced) = (child.pid, child.traced);
            let _: Result<_, _> = started_tx.send(child.release());
            // Not traced: no exec stop will come, start() must not wait.
            let handshake = traced.then_some(Handshake {
                exec_stop: exec_stop_tx,
                armed: armed_rx,
            });
            let hooks = Hooks {
                at_entry: Some(Box::new(at_entry)),
                at_exit: Some(Box::new(at_exit)),
            };
            let _: Result<_, _> = exit_tx.send(wait_traced(pid, hooks, handshake));
        })
        .context("starting the child-watching thread")?;
    let (pid, pidfd) = pid_rx.recv().context("child thread died")??;
    Ok((
        HeldChild {
            pid,
            pidfd,
            go: go_tx,
            started: started_rx,
            exec_stop: exec_stop_rx,
            armed: armed_tx,
        },
        exit_rx,
    ))
}

impl HeldChild {
    /// Lets the child exec; fails if the exec failed. While the child is
    /// held at its exec, `arm` is given its entry point, to attach the
    /// entry stop's uprobe; if `arm` fails, the entry hook runs at the exec.
    pub(crate) fn start(self, arm: impl FnOnce(&EntryPoint) -> Result<()>) -> Result<()> {
        self.go.send(()).map_err(|_| anyhow!("child thread died"))?;
        self.started.recv().context("child thread died")??;
        // No exec stop (not traced, or already gone): nothing to arm.
        if let Ok(entry) = self.exec_stop.recv() {
            let armed = arm(&entry)
                .inspect_err(|err| {
                    eprintln!(
                        "leaktrace: warning: no stop at the entry point ({err:#}); libraries the dynamic loader maps get their unwind tables later"
                    );
                })
                .is_ok();
            let _: Result<_, _> = self.armed.send(armed);
        }
        Ok(())
    }
}

/// The parent's side of a held child. Dropping it closes every fd.
pub(super) struct Forked {
    pub(super) pid: u32,
    pidfd: OwnedFd,
    gate_write: OwnedFd,
    error_read: OwnedFd,
    /// Whether the child is ptrace-seized (stops at its exec and exit).
    pub(super) traced: bool,
}

/// A pipe, both ends close-on-exec: (read, write).
fn pipe_cloexec() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: valid out-array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("pipe2: {}", std::io::Error::last_os_error());
    }
    // SAFETY: two fresh fds we own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A pidfd for `pid`.
pub(crate) fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscall; the fd returned is ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Sends `signal` to the process behind `pidfd` (never to a process that
/// reused its pid).
pub(crate) fn pidfd_signal(pidfd: &OwnedFd, signal: i32) -> std::io::Result<()> {
    // SAFETY: plain syscall on an fd we own; no siginfo.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

pub(super) fn fork_held(path: &CString, argv: &[CString]) -> Result<Forked> {
    let (gate_read, gate_write) = pipe_cloexec()?;
    let (error_read, error_write) = pipe_cloexec()?;
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let (gate_read_fd, error_write_fd) = (gate_read.as_raw_fd(), error_write.as_raw_fd());
    let gate_write_fd = gate_write.as_raw_fd();
    // SAFETY: the child only calls async-signal-safe functions (read,
    // execv, write, _exit) on memory prepared before the fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        bail!("fork: {}", std::io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: in the forked child: only async-signal-safe calls, on fds
        // and memory prepared before the fork; it never returns (execv or
        // _exit). The parent's ends are close-on-exec.
        unsafe {
            let mut byte = 0u8;
            // Its own copy of the gate's write end closed first: else,
            // with leaktrace killed, the read below would wait for ever
            // (the pipe still has a writer: this very process).
            libc::close(gate_write_fd);
            // Blocks until the tracer is ready; EOF means it went away.
            if libc::read(gate_read_fd, (&raw mut byte).cast(), 1) != 1 {
                libc::_exit(127);
            }
            libc::execv(path.as_ptr(), argv_ptrs.as_ptr());
            let errno = *libc::__errno_location();
            libc::write(
                error_write_fd,
                (&raw const errno).cast(),
                size_of::<libc::c_int>(),
            );
            libc::_exit(127);
        }
    }
    // Our copies of the child's ends.
    drop((gate_read, error_write));
    let pid = pid as u32;
    // Our child, not reaped yet: the pid is still its own.
    let pidfd = match pidfd_open(pid) {
        Ok(pidfd) => pidfd,
        Err(err) => {
            // Closing the gate makes the child exit before exec.
            drop((gate_write, error_read));
            wait_plain(pid);
            bail!("pidfd_open: {err}");
        }
    };
    // SAFETY: seizing our own, held child; stops at exec and exit only.
    let seized = unsafe {
        libc::ptrace(
            libc::PTRACE_SEIZE,
            pid as libc::pid_t,
            0,
            libc::c_long::from(libc::PTRACE_O_TRACEEXIT | libc::PTRACE_O_TRACEEXEC),
        )
    };
    if seized != 0 {
        // Not fatal: only the final snapshot of mappings is lost.
        eprintln!(
            "leaktrace: warning: cannot ptrace the child ({}); symbols of a program that exits quickly may be missing",
            std::io::Error::last_os_error()
        );
    }
    Ok(Forked {
        pid,
        pidfd,
        gate_write,
        error_read,
        traced: seized == 0,
    })
}

impl Forked {
    /// Lets the child exec; Err if the exec failed. Closes the pipes.
    pub(super) fn release(self) -> Result<()> {
        let Forked {
            gate_write,
            error_read,
            ..
        } = self;
        let byte = 1u8;
        // SAFETY: valid fd we own, one byte.
        unsafe { libc::write(gate_write.as_raw_fd(), (&raw const byte).cast(), 1) };
        drop(gate_write);
        let mut errno: libc::c_int = 0;
        // SAFETY: reads at most one int; EOF (0) means exec succeeded.
        let n = unsafe {
            libc::read(
                error_read.as_raw_fd(),
                (&raw mut errno).cast(),
                size_of::<libc::c_int>(),
            )
        };
        if n > 0 {
            bail!(
                "cannot execute the command: {}",
                std::io::Error::from_raw_os_error(errno)
            );
        }
        Ok(())
    }

    /// The tracer gave up before starting the child: kills it (through its
    /// pidfd), reaps it and closes every fd.
    pub(super) fn give_up(self) {
        // Not started: it dies of SIGKILL (or of the closed gate).
        let _: std::io::Result<()> = pidfd_signal(&self.pidfd, libc::SIGKILL);
        let pid = self.pid;
        drop(self);
        wait_plain(pid);
    }
}

fn wait_plain(pid: u32) {
    let mut status = 0;
    // SAFETY: waiting for our own child.
    while unsafe { libc::waitpid(pid as i32, &raw mut status, libc::__WALL) } < 0
        && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
    {}
}

/// Test-only: `LEAKTRACE_TEST_PAUSE=exec|entry` stops leaktrace for good
/// at that point of the command's start (with the command held there), so
/// that tests can SIGKILL it there. Never set outside tests.
pub(super) fn test_pause(point: &str, pid: u32) {
    if std::env::var_os("LEAKTRACE_TEST_PAUSE").is_some_and(|p| p == point) {
        eprintln!("leaktrace: test pause at {point}: pid {pid}");
        loop {
            thread::park();
        }
    }
}

#[cfg(test)]
#[path = "launch_tests.rs"]
mod tests;
