//! Unwind tables built off the event loop: under `--all` a new binary can
//! be large (hundreds of MiB, millions of rows), and reading it and
//! compiling its `.eh_frame` on the loop would stall draining while every
//! process on the host keeps sending records. One worker thread reads and
//! compiles each object; the loop only writes the finished rows into the
//! kernel (in batches) and republishes the mappings of the processes that
//! waited, whose stacks fall back to frame pointers (flagged) meanwhile.
use std::{
    path::{Path, PathBuf},
    sync::mpsc::{Receiver, Sender, channel},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use leaktrace_common::UnwindRow;

use crate::unwind;

/// An object's rows and segments, built and not yet in the kernel.
pub(crate) struct BuiltObject {
    pub table: Vec<UnwindRow>,
    /// (file offset, size, virtual address) of each loadable segment.
    pub segments: Vec<(u64, u64, u64)>,
    pub build_time: Duration,
}

/// Reads `path` (at most `target::elf::MAX_OBJECT_BYTES`) and compiles
/// its `.eh_frame` into rows.
pub(crate) fn build_object(path: &Path) -> Result<BuiltObject> {
    let data = crate::target::elf::read_object(path)?;
    let started = Instant::now();
    let table = unwind::build_table(&data)?;
    let build_time = started.elapsed();
    let segments = crate::target::elf::loadable_segments(&data)
        .context("parsing the ELF object's segments")?;
    Ok(BuiltObject {
        table,
        segments,
        build_time,
    })
}

/// An object to build: its file identity, the file, and the path the
/// process maps it by (for messages).
pub(crate) struct Job {
    pub identity: (u64, u64),
    pub file: PathBuf,
    pub display: String,
}

/// A finished job.
pub(crate) struct Done {
    pub identity: (u64, u64),
    pub display: String,
    pub built: Result<BuiltObject>,
}

/// The worker thread, fed jobs and polled for results.
pub(crate) struct Builder {
    jobs: Sender<Job>,
    done: Receiver<Done>,
}

impl Builder {
    pub(crate) fn start() -> Result<Builder> {
        let (jobs, inbox) = channel::<Job>();
        let (outbox, done) = channel::<Done>();
        std::thread::Builder::new()
            .name("unwind-builder".into())
            .spawn(move || {
                // Ends when the tables (the jobs' sender) are dropped.
                for job in inbox {
                    let built = build_object(&job.file);
                    let done = Done {
                        identity: job.identity,
                        display: job.display,
                        built,
                    };
                    if outbox.send(done).is_err() {
                        break;
                    }
                }
            })
            .context("starting the unwind table builder")?;
        Ok(Builder { jobs, done })
    }

    /// Queues `job`; false when the worker is gone.
    pub(crate) fn send(&self, job: Job) -> bool {
        self.jobs.send(job).is_ok()
    }

    /// The jobs finished since the last call.
    pub(crate) fn finished(&self) -> Vec<Done> {
        self.done.try_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worker_builds_what_it_is_sent_and_says_what_failed() {
        let builder = Builder::start().expect("a thread");
        let exe = std::fs::read_link("/proc/self/exe").expect("our executable");
        let not_elf =
            std::env::temp_dir().join(format!("leaktrace-not-elf-{}", std::process::id()));
        std::fs::write(&not_elf, b"#!/bin/sh\n").unwrap();
        for (identity, file) in [((0, 1), exe.clone()), ((0, 2), not_elf.clone())] {
            assert!(builder.send(Job {
                identity,
                file,
                display: String::new(),
            }));
        }
        let deadline = Instant::now() + Duration::from_mins(1);
        let mut done = Vec::new();
        while done.len() < 2 && Instant::now() < deadline {
            done.extend(builder.finished());
            std::thread::sleep(Duration::from_millis(10));
        }
        std::fs::remove_file(&not_elf).unwrap();
        done.sort_by_key(|d| d.identity);
        let [ours, script] = &done[..] else {
            panic!("{} of 2 jobs finished", done.len());
        };
        let ours = ours.built.as_ref().expect("our own tables");
        assert!(ours.table.len() > 1000, "{} rows", ours.table.len());
        assert!(!ours.segments.is_empty());
        assert!(script.built.is_err());
    }
}
