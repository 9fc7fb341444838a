//! The file work of `--all`'s new processes, off the event loop: finding a
//! new process's allocator reads the symbols of every object it maps that
//! was not read before and scans their `.text` for branch targets (probe
//! placement), and telling a Go program from one with no allocator reads
//! its executable whole. A new binary can be hundreds of MiB (a debug
//! build): done on the loop, that stalled draining the ring buffer while
//! every process on the host kept sending records, and the kernel dropped
//! them. One worker thread does it; the loop only hands it a pid and, when
//! the answer is polled, attaches the uprobes (attaching needs the kernel
//! probes, which stay with the loop).
use std::{
    collections::HashMap,
    panic::AssertUnwindSafe,
    path::Path,
    sync::mpsc::{Receiver, Sender, channel},
};

use anyhow::{Context as _, Result};

use super::go_goroutines::is_go_file;
use crate::target::{self, ProbedObject, SymbolCache, procfs};

/// What a process's objects say.
#[derive(Debug)]
pub(super) enum Found {
    /// Its allocator (and mmap's object) to probe.
    Allocators(Vec<ProbedObject>),
    /// A Go program with no malloc: tracked for its goroutines.
    Go,
    /// No allocator (yet: its libraries may not be mapped).
    Nothing,
}

/// Reads objects, each file (device, inode) once: most processes map the
/// same C library, whose symbols take milliseconds to read.
#[derive(Default)]
pub(super) struct ObjectReader {
    cache: SymbolCache,
    /// Executables with no allocator, by file: Go or not.
    go_files: HashMap<(u64, u64), bool>,
}

impl ObjectReader {
    /// What `pid`'s objects say, reading those not read yet.
    pub(super) fn inspect(&mut self, pid: u32) -> Found {
        match target::objects_for_pid_cached(pid, &mut self.cache) {
            Ok(objects) => Found::Allocators(objects),
            Err(_) if self.runs_go(pid) => Found::Go,
            Err(_) => Found::Nothing,
        }
    }

    /// Whether `pid` runs a Go executable (each file read once).
    fn runs_go(&mut self, pid: u32) -> bool {
        let exe = format!("/proc/{pid}/exe");
        let Some(identity) = procfs::file_identity(Path::new(&exe)) else {
            return false;
        };
        *self
            .go_files
            .entry(identity)
            .or_insert_with(|| is_go_file(Path::new(&exe)))
    }
}

/// A process to inspect; `generation` tells an answer about an image the
/// process has since replaced (it exec'd again) from the current one.
pub(super) struct Job {
    pub pid: u32,
    pub generation: u64,
}

pub(super) struct Answer {
    pub pid: u32,
    pub generation: u64,
    pub found: Found,
}

/// The worker thread, fed pids and polled for answers.
pub(super) struct Inspector {
    jobs: Sender<Job>,
    answers: Receiver<Answer>,
}

impl Inspector {
    /// Starts the worker with what `reader` has read already (the first
    /// pass, at start).
    pub(super) fn start(mut reader: ObjectReader) -> Result<Inspector> {
        let (jobs, inbox) = channel::<Job>();
        let (outbox, answers) = channel::<Answer>();
        std::thread::Builder::new()
            .name("object-inspector".into())
            .spawn(move || {
                // Ends when the inspector (the jobs' sender) is dropped.
                for job in inbox {
                    // Reading hostile files must not panic; if it does
                    // anyway, that process goes untraced and the others
                    // still are.
                    let found =
                        std::panic::catch_unwind(AssertUnwindSafe(|| reader.inspect(job.pid)))
                            .unwrap_or(Found::Nothing);
                    let answer = Answer {
                        pid: job.pid,
                        generation: job.generation,
                        found,
                    };
                    if outbox.send(answer).is_err() {
                        break;
                    }
                }
            })
            .context("starting the object inspector")?;
        Ok(Inspector { jobs, answers })
    }

    /// Queues `job`; false when the worker is gone.
    pub(super) fn send(&self, job: Job) -> bool {
        self.jobs.send(job).is_ok()
    }

    /// The answers that came since the last call.
    pub(super) fn answers(&self) -> Vec<Answer> {
        self.answers.try_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// This test process has an allocator (the C library's, or its own
    /// when linked statically); pid 0 names no process.
    #[test]
    fn the_worker_answers_each_pid_with_its_allocator_or_nothing() {
        let inspector = Inspector::start(ObjectReader::default()).expect("a thread");
        for (pid, generation) in [(std::process::id(), 7), (0, 8)] {
            assert!(inspector.send(Job { pid, generation }));
        }
        let deadline = Instant::now() + Duration::from_mins(1);
        let mut answers = Vec::new();
        while answers.len() < 2 && Instant::now() < deadline {
            answers.extend(inspector.answers());
            std::thread::sleep(Duration::from_millis(10));
        }
        answers.sort_by_key(|a| a.generation);
        let [ours, none] = &answers[..] else {
            panic!("{} of 2 answers came", answers.len());
        };
        assert_eq!((ours.pid, none.pid), (std::process::id(), 0));
        let Found::Allocators(objects) = &ours.found else {
            panic!("no allocator found in this process: {:?}", ours.found);
        };
        let malloc = objects
            .iter()
            .flat_map(|o| &o.functions)
            .filter(|f| f.func == leaktrace_common::AllocFn::Malloc)
            .count();
        assert_eq!(malloc, 1, "{objects:?}");
        assert!(matches!(none.found, Found::Nothing), "{:?}", none.found);
    }

    /// A program with no allocator is told Go or not from its section
    /// headers (the Go toolchain's own `go` is a Go program; this test is
    /// not).
    #[test]
    fn a_go_program_is_told_from_others_by_its_headers() {
        let go = Path::new("/usr/lib/go-1.19/bin/go");
        assert!(
            go.exists(),
            "prerequisite missing: {} (Debian's golang-1.19-go)",
            go.display()
        );
        assert!(is_go_file(go));
        let ours = std::fs::read_link("/proc/self/exe").expect("our executable");
        assert!(!is_go_file(&ours));
    }
}
