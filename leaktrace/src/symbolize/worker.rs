//! Symbol resolution off the event loop: a report of a host full of large
//! debug binaries takes seconds to symbolize, and the ring buffer must be
//! drained meanwhile or the kernel drops records. The loop sends the
//! addresses its cache lacks ([`super::Symbolizer::wanted`]); this thread
//! resolves them with a [`Resolver`] of its own (blazesym's is not `Send`:
//! it lives and dies on this thread, and keeps what it parsed between
//! batches), and answers through a tokio channel the loop awaits in its
//! `select!`.
use std::sync::mpsc::{Sender, channel};

use anyhow::{Context as _, Result};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use super::resolve::{Batch, Resolved, Resolver};

/// Sends batches to the worker thread.
pub(crate) struct SymbolJobs(Sender<Batch>);

/// The worker thread's answers, one per batch, in the order sent (apart
/// from the jobs, so that the loop can await them in its `select!` while
/// its other arms send).
pub(crate) struct SymbolAnswers(UnboundedReceiver<Resolved>);

/// Starts the worker thread.
pub(crate) fn start() -> Result<(SymbolJobs, SymbolAnswers)> {
    let (jobs, inbox) = channel::<Batch>();
    let (outbox, done) = unbounded_channel::<Resolved>();
    std::thread::Builder::new()
        .name("symbolizer".into())
        .spawn(move || {
            let mut resolver = Resolver::default();
            // Ends when the loop (the jobs' sender) is gone.
            for batch in inbox {
                let resolved = resolver.resolve(batch);
                // Parsing an object's DWARF allocates and frees tens of
                // MiB in this thread's malloc arena, which glibc does not
                // give back by itself (measured: a 34 MiB arena, flat, in
                // `cargo xtask soak`); give back its free pages: 20.4 MiB
                // for the whole daemon then, 28 ms of trimming a minute.
                // SAFETY: malloc_trim has no preconditions.
                unsafe { libc::malloc_trim(0) };
                if outbox.send(resolved).is_err() {
                    break;
                }
            }
        })
        .context("starting the symbolizer thread")?;
    Ok((SymbolJobs(jobs), SymbolAnswers(done)))
}

impl SymbolJobs {
    /// Queues `batch`; false when the worker is gone.
    pub(crate) fn send(&self, batch: Batch) -> bool {
        self.0.send(batch).is_ok()
    }
}

impl SymbolAnswers {
    /// The next batch resolved; None when the worker is gone.
    pub(crate) async fn next(&mut self) -> Option<Resolved> {
        self.0.recv().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::symbolize::{ProcessMaps, Symbolizer, Wanted};

    /// Resolved on the thread and merged, a stack then reads the cache
    /// only: the same frames as symbolized in place, and nothing left
    /// wanted.
    #[tokio::test]
    async fn the_worker_resolves_what_the_cache_lacks() {
        let mut maps = ProcessMaps::new(std::process::id());
        assert!(maps.refresh());
        let stack = [
            start as *const () as u64 + 1,
            SymbolJobs::send as *const () as u64 + 1,
        ];
        let mut symbolizer = Symbolizer::default();
        let mut wanted = Wanted::default();
        symbolizer.wanted(&maps, &stack, false, &mut wanted);
        assert!(!wanted.is_empty());
        let (jobs, mut answers) = start().expect("a thread");
        assert!(jobs.send(wanted.batch()));
        let resolved = answers.next().await.expect("an answer");
        assert_eq!(resolved.len(), 2, "one entry per address");
        symbolizer.insert(resolved);
        let mut again = Wanted::default();
        symbolizer.wanted(&maps, &stack, false, &mut again);
        assert!(again.is_empty());
        let frames = symbolizer.symbolize_stack(&maps, &stack, 0, false);
        let in_place = Symbolizer::default().symbolize_stack(&maps, &stack, 0, false);
        assert_eq!(frames, in_place);
        assert!(
            frames
                .iter()
                .any(|f| f.function.ends_with("SymbolJobs::send")),
            "{frames:#?}"
        );
        assert!(
            frames.iter().any(|f| f.function.ends_with("worker::start")),
            "{frames:#?}"
        );
    }
}
