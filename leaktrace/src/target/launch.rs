//! Launch: start a command that is traced from its first allocation.
//!
//! The child is forked and held before exec until every probe is attached
//! to it; uprobes follow its pid through exec, so nothing it allocates is
//! missed. The parent thread also ptrace-seizes the child, for two stops:
//! - at its entry point (a one-shot int3 planted at `AT_ENTRY` when it
//!   execs): the dynamic linker has mapped every library by then, and
//!   `at_entry` loads their unwind tables before main runs;
//! - at its exit (`PTRACE_O_TRACEEXIT`), while its address space still
//!   exists, so `at_exit` can read its mappings for the report of a program
//!   that exits before anyone could look at it.
//!
//! Signals are passed through unchanged; if leaktrace dies, the kernel
//! detaches it.
use std::{
    ffi::{CString, OsString},
    os::unix::ffi::OsStrExt as _,
    path::Path,
    sync::mpsc,
    thread,
};

use anyhow::{Context as _, Result, anyhow, bail};

/// How the launched command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl ExitStatus {
    /// The shell's convention: the code, or 128 + signal.
    pub(crate) fn as_exit_code(self) -> i32 {
        match self {
            ExitStatus::Code(code) => code,
            ExitStatus::Signal(signal) => 128 + signal,
        }
    }
}

/// A forked child waiting for `start` before it execs.
pub(crate) struct HeldChild {
    pub pid: u32,
    go: mpsc::Sender<()>,
    started: mpsc::Receiver<Result<()>>,
}

/// Forks `program` with `args` (args[0] included), held before exec. The
/// returned receiver yields the exit status. `at_exit` runs while the child
/// is stopped at its exit, before its address space is torn down.
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
    let (pid_tx, pid_rx) = mpsc::channel::<Result<u32>>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (started_tx, started_rx) = mpsc::channel::<Result<()>>();
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
            let _: Result<_, _> = pid_tx.send(Ok(child.pid));
            if go_rx.recv().is_err() {
                // The tracer gave up before starting it.
                // SAFETY: our own child.
                unsafe { libc::kill(child.pid as i32, libc::SIGKILL) };
                let _: Result<_, _> = started_tx.send(Err(anyhow!("not started")));
                wait_plain(child.pid);
                return;
            }
            let pid = child.pid;
            let _: Result<_, _> = started_tx.send(child.release());
            let _: Result<_, _> = exit_tx.send(wait_traced(pid, at_entry, at_exit));
        })
        .context("starting the child-watching thread")?;
    let pid = pid_rx.recv().context("child thread died")??;
    Ok((
        HeldChild {
            pid,
            go: go_tx,
            started: started_rx,
        },
        exit_rx,
    ))
}

impl HeldChild {
    /// Lets the child exec; fails if the exec failed.
    pub(crate) fn start(self) -> Result<()> {
        self.go.send(()).map_err(|_| anyhow!("child thread died"))?;
        self.started.recv().context("child thread died")?
    }
}

struct Forked {
    pid: u32,
    gate_write: libc::c_int,
    error_read: libc::c_int,
}

fn pipe_cloexec() -> Result<[libc::c_int; 2]> {
    let mut fds = [0; 2];
    // SAFETY: valid out-array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("pipe2: {}", std::io::Error::last_os_error());
    }
    Ok(fds)
}

fn fork_held(path: &CString, argv: &[CString]) -> Result<Forked> {
    let gate = pipe_cloexec()?;
    let error = pipe_cloexec()?;
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    // SAFETY: the child only calls async-signal-safe functions (close, read,
    // execv, write, _exit) on memory prepared before the fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        bail!("fork: {}", std::io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: in the forked child: only async-signal-safe calls, on fds
        // and memory prepared before the fork; it never returns (execv or
        // _exit).
        unsafe {
            libc::close(gate[1]);
            libc::close(error[0]);
            let mut byte = 0u8;
            // Blocks until the tracer is ready; EOF means it went away.
            if libc::read(gate[0], (&raw mut byte).cast(), 1) != 1 {
                libc::_exit(127);
            }
            libc::execv(path.as_ptr(), argv_ptrs.as_ptr());
            let errno = *libc::__errno_location();
            libc::write(
                error[1],
                (&raw const errno).cast(),
                size_of::<libc::c_int>(),
            );
            libc::_exit(127);
        }
    }
    // SAFETY: closing our copies of the child's ends.
    unsafe {
        libc::close(gate[0]);
        libc::close(error[1]);
    }
    let pid = pid as u32;
    // SAFETY: seizing our own, held child; only the exit stop is requested.
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
        gate_write: gate[1],
        error_read: error[0],
    })
}

impl Forked {
    fn release(self) -> Result<()> {
        let byte = 1u8;
        // SAFETY: valid fds we own.
        unsafe {
            libc::write(self.gate_write, (&raw const byte).cast(), 1);
            libc::close(self.gate_write);
        }
        let mut errno: libc::c_int = 0;
        // SAFETY: reads at most one int; EOF (0) means exec succeeded.
        let n = unsafe {
            libc::read(
                self.error_read,
                (&raw mut errno).cast(),
                size_of::<libc::c_int>(),
            )
        };
        // SAFETY: our own fd, closed once.
        unsafe { libc::close(self.error_read) };
        if n > 0 {
            bail!(
                "cannot execute the command: {}",
                std::io::Error::from_raw_os_error(errno)
            );
        }
        Ok(())
    }
}

fn wait_plain(pid: u32) {
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid as i32, &raw mut status, libc::__WALL) };
}

/// The program's entry point, from the auxiliary vector the kernel gave it.
fn entry_point(pid: u32) -> Option<u64> {
    let auxv = std::fs::read(format!("/proc/{pid}/auxv")).ok()?;
    auxv.chunks_exact(16).find_map(|pair| {
        let key = u64::from_ne_bytes(pair[..8].try_into().ok()?);
        let value = u64::from_ne_bytes(pair[8..].try_into().ok()?);
        (key == libc::AT_ENTRY).then_some(value)
    })
}

/// A one-shot int3 planted at the entry point.
struct EntryBreakpoint {
    address: u64,
    original: libc::c_long,
}

impl EntryBreakpoint {
    /// Plants it; None if the text cannot be read or written.
    fn plant(pid: u32) -> Option<EntryBreakpoint> {
        let address = entry_point(pid)?;
        // SAFETY: ptrace on our stopped tracee; errors are checked via errno.
        unsafe {
            *libc::__errno_location() = 0;
            let original = libc::ptrace(libc::PTRACE_PEEKTEXT, pid as i32, address, 0);
            if original == -1 && *libc::__errno_location() != 0 {
                return None;
            }
            let with_int3 = (original & !0xff) | 0xcc;
            if libc::ptrace(libc::PTRACE_POKETEXT, pid as i32, address, with_int3) != 0 {
                return None;
            }
            Some(EntryBreakpoint { address, original })
        }
    }

    /// If the tracee stopped on it: restores the instruction, rewinds rip
    /// onto it and returns true.
    fn hit(&self, pid: u32) -> bool {
        // SAFETY: ptrace on our stopped tracee with a valid regs buffer.
        unsafe {
            let mut regs: libc::user_regs_struct = std::mem::zeroed();
            if libc::ptrace(libc::PTRACE_GETREGS, pid as i32, 0, &mut regs) != 0
                || regs.rip != self.address + 1
            {
                return false;
            }
            libc::ptrace(
                libc::PTRACE_POKETEXT,
                pid as i32,
                self.address,
                self.original,
            );
            regs.rip = self.address;
            libc::ptrace(libc::PTRACE_SETREGS, pid as i32, 0, &regs);
        }
        true
    }
}

/// Waits for the seized child, passing every signal through; runs
/// `at_entry` when it reaches its entry point and `at_exit` at its exit stop.
fn wait_traced(pid: u32, at_entry: impl FnOnce(), at_exit: impl FnOnce()) -> ExitStatus {
    let mut at_entry = Some(at_entry);
    let mut at_exit = Some(at_exit);
    let mut breakpoint: Option<EntryBreakpoint> = None;
    loop {
        let mut status = 0;
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::waitpid(pid as i32, &raw mut status, libc::__WALL) };
        if r < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return ExitStatus::Code(-1);
        }
        if libc::WIFEXITED(status) {
            return ExitStatus::Code(libc::WEXITSTATUS(status));
        }
        if libc::WIFSIGNALED(status) {
            return ExitStatus::Signal(libc::WTERMSIG(status));
        }
        if !libc::WIFSTOPPED(status) {
            continue;
        }
        let event = (status >> 16) & 0xff;
        let signal = libc::WSTOPSIG(status);
        // SAFETY: ptrace requests on our stopped tracee.
        unsafe {
            if event == libc::PTRACE_EVENT_EXEC {
                if at_entry.is_some() && breakpoint.is_none() {
                    breakpoint = EntryBreakpoint::plant(pid);
                    if breakpoint.is_none()
                        && let Some(f) = at_entry.take()
                    {
                        // No breakpoint: load what can be loaded now.
                        f();
                    }
                }
                libc::ptrace(libc::PTRACE_CONT, pid as i32, 0, 0);
            } else if signal == libc::SIGTRAP
                && event == 0
                && breakpoint.as_ref().is_some_and(|b| b.hit(pid))
            {
                breakpoint = None;
                if let Some(f) = at_entry.take() {
                    f();
                }
                libc::ptrace(libc::PTRACE_CONT, pid as i32, 0, 0);
            } else if event == libc::PTRACE_EVENT_EXIT {
                if let Some(f) = at_exit.take() {
                    f();
                }
                libc::ptrace(libc::PTRACE_CONT, pid as i32, 0, 0);
            } else if event == libc::PTRACE_EVENT_STOP {
                if matches!(
                    signal,
                    libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU
                ) {
                    // Group stop: stay stopped like an untraced process would.
                    libc::ptrace(libc::PTRACE_LISTEN, pid as i32, 0, 0);
                } else {
                    libc::ptrace(libc::PTRACE_CONT, pid as i32, 0, 0);
                }
            } else {
                // Signal-delivery stop: deliver the signal unchanged.
                libc::ptrace(libc::PTRACE_CONT, pid as i32, 0, libc::c_long::from(signal));
            }
        }
    }
}
