//! Reports made without stalling the event loop. Symbolizing a report can
//! take seconds (every site's addresses in large debug binaries), and while
//! the loop waits the ring buffer fills and the kernel drops records. So a
//! report is made in steps: what the runtimes hold is read, the addresses
//! the symbolizer's cache lacks go to the symbolizer thread
//! (`symbolize::worker`), the loop keeps draining, and when the answer comes
//! (awaited in its `select!`) the report is built from the cache and
//! written (an interval report) or answers the pages that waited for it.
//! Sites that appeared meanwhile are sent again, a few rounds at most,
//! before the rest is symbolized in place.
use std::rc::Rc;

use anyhow::Result;

use super::{
    connections::{self, PageRequest},
    tracer::Tracer,
};
use crate::symbolize::{
    Resolved,
    worker::{SymbolAnswers, SymbolJobs},
};

/// Batches sent for one report before what is still missing (sites new
/// since the last batch) is symbolized on the loop.
const MAX_ROUNDS: u32 = 4;

/// The report being made, and who waits for it.
pub(super) struct ReportRequests {
    /// None: no worker (it could not start or is gone), reports are
    /// symbolized on the loop as before.
    jobs: Option<SymbolJobs>,
    /// A batch is with the worker (its answer comes before any later one).
    in_flight: bool,
    /// A report is being made: prepared, its symbols being resolved.
    making: bool,
    /// Batches sent for it.
    rounds: u32,
    /// An interval report waits for it.
    interval: bool,
    /// Page requests wait for it (at most `connections::PAGE_QUEUE`: the
    /// loop stops taking requests past that, and the HTTP side answers
    /// 503).
    pages: Vec<PageRequest>,
}

impl ReportRequests {
    pub(super) fn new(jobs: Option<SymbolJobs>) -> ReportRequests {
        ReportRequests {
            jobs,
            in_flight: false,
            making: false,
            rounds: 0,
            interval: false,
            pages: Vec::new(),
        }
    }

    /// Whether the loop may take another page request.
    pub(super) fn takes_pages(&self) -> bool {
        self.pages.len() < connections::PAGE_QUEUE
    }

    /// An interval report is due. True when it was written (at once: its
    /// symbols were all known).
    pub(super) fn interval(
        &mut self,
        tracer: &mut Tracer,
        http: &connections::Counters,
    ) -> Result<bool> {
        self.interval = true;
        self.begin(tracer, http)
    }

    /// A page is asked for: answered now from the kept report, or once a
    /// new one is made. True when an interval report was written.
    pub(super) fn page(
        &mut self,
        tracer: &mut Tracer,
        request: PageRequest,
        http: &connections::Counters,
    ) -> Result<bool> {
        if !tracer.page_needs_report(request.0) {
            answer(tracer, request, http);
            return Ok(false);
        }
        self.pages.push(request);
        self.begin(tracer, http)
    }

    /// The worker's answer to a batch. True when an interval report was
    /// written.
    pub(super) fn resolved(
        &mut self,
        tracer: &mut Tracer,
        resolved: Resolved,
        http: &connections::Counters,
    ) -> Result<bool> {
        tracer.symbols_resolved(resolved);
        self.in_flight = false;
        self.advance(tracer, http)
    }

    /// The worker is gone: what waits is symbolized on the loop.
    pub(super) fn worker_gone(
        &mut self,
        tracer: &mut Tracer,
        http: &connections::Counters,
    ) -> Result<bool> {
        tracer.progress("the symbolizer thread is gone: symbolizing on the event loop");
        self.jobs = None;
        self.in_flight = false;
        self.advance(tracer, http)
    }

    /// The final report, once the loop stopped: its symbols resolved on
    /// the worker too, while `drain` keeps being called every `period`
    /// (records still come from processes that live on). What waited for
    /// an interval report or a page gets nothing (the final report
    /// supersedes them; the clients' connections close).
    pub(super) async fn final_report(
        &mut self,
        tracer: &mut Tracer,
        mut answers: Option<&mut SymbolAnswers>,
        period: std::time::Duration,
        drain: &mut dyn FnMut(&mut Tracer),
    ) -> Result<()> {
        self.pages.clear();
        self.interval = false;
        self.making = false;
        tracer.prepare_report();
        let mut timer = tokio::time::interval(period);
        self.rounds = 0;
        loop {
            if !self.in_flight && !self.send_wanted(tracer) {
                break;
            }
            let Some(answers) = answers.as_deref_mut() else {
                break;
            };
            tokio::select! {
                resolved = answers.next() => match resolved {
                    Some(resolved) => {
                        tracer.symbols_resolved(resolved);
                        self.in_flight = false;
                    }
                    None => break,
                },
                _ = timer.tick() => drain(tracer),
            }
        }
        let report = tracer.assemble_report(true)?;
        tracer.write_report(&report)
    }

    /// Starts a report unless one is being made (the waiter joins it).
    fn begin(&mut self, tracer: &mut Tracer, http: &connections::Counters) -> Result<bool> {
        if self.making {
            return Ok(false);
        }
        self.making = true;
        self.rounds = 0;
        tracer.prepare_report();
        self.advance(tracer, http)
    }

    /// Sends what the report being made still lacks to the worker, or,
    /// when nothing is lacking (or rounds are spent, or there is no
    /// worker), makes it.
    fn advance(&mut self, tracer: &mut Tracer, http: &connections::Counters) -> Result<bool> {
        if !self.making || self.in_flight {
            return Ok(false);
        }
        if self.send_wanted(tracer) {
            return Ok(false);
        }
        self.finish(tracer, http)
    }

    /// Sends what the report being made lacks to the worker, as one more
    /// of its `MAX_ROUNDS`. False when nothing went: nothing lacking,
    /// rounds spent, or no worker (one found gone is let go).
    fn send_wanted(&mut self, tracer: &mut Tracer) -> bool {
        if self.rounds >= MAX_ROUNDS {
            return false;
        }
        let Some(jobs) = &self.jobs else {
            return false;
        };
        let wanted = tracer.symbols_wanted();
        if wanted.is_empty() {
            return false;
        }
        if !jobs.send(wanted.batch()) {
            self.jobs = None;
            return false;
        }
        self.in_flight = true;
        self.rounds += 1;
        true
    }

    /// Builds the report (its symbols now cached) and hands it to whoever
    /// waited. True when an interval report was written.
    fn finish(&mut self, tracer: &mut Tracer, http: &connections::Counters) -> Result<bool> {
        self.making = false;
        let interval = std::mem::take(&mut self.interval);
        let pages = std::mem::take(&mut self.pages);
        let report = match tracer.assemble_report(false) {
            Ok(report) => Rc::new(report),
            Err(err) => {
                if !pages.is_empty() {
                    tracer.progress(&format!("http: {err:#}"));
                }
                for (_, reply) in pages {
                    // The client may have gone: nothing to do then.
                    let _: Result<_, _> = reply.send(server_error(&err));
                }
                return if interval { Err(err) } else { Ok(false) };
            }
        };
        if !pages.is_empty() {
            tracer.keep_page_report(report.clone());
            for request in pages {
                answer(tracer, request, http);
            }
        }
        if interval {
            tracer.write_report(&report)?;
        }
        Ok(interval)
    }
}

/// Answers a page request (from the report kept, when it is new enough).
fn answer(tracer: &mut Tracer, (page, reply): PageRequest, http: &connections::Counters) {
    let response = tracer.page(page, http).unwrap_or_else(|err| {
        tracer.progress(&format!("http: {err:#}"));
        server_error(&err)
    });
    // The client may have gone: nothing to do then.
    let _: Result<_, _> = reply.send(response);
}

fn server_error(err: &anyhow::Error) -> super::http::Response {
    (
        "500 Internal Server Error",
        "text/plain",
        format!("{err:#}\n").into_bytes(),
    )
}
