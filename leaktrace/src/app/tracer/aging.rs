//! Aging, for a daemon left running for days: call sites that held nothing
//! for `--forget-idle-sites` are let go, and the kernel's set of sampled
//! blocks is swept of blocks whose frees would match nothing here.
use std::time::Instant;

use super::Tracer;
use crate::daemon::aggregate;

/// Least time between two sweeps of the kernel's set of sampled blocks:
/// a sweep walks the whole map, a syscall or two per entry (about a second
/// for a million entries), where growth samples may come every
/// millisecond (`--interval`).
const SWEEP_PERIOD: std::time::Duration = std::time::Duration::from_secs(5);

impl Tracer {
    /// Lets go of the sites that held nothing for `--forget-idle-sites`
    /// (`totals`: every site holding memory now, Go heap sites included),
    /// with their growth and history series.
    pub(super) fn forget_idle_sites(&mut self, seconds: f64, totals: &[aggregate::SiteTotal]) {
        let holding: rustc_hash::FxHashSet<_> = totals.iter().map(|t| t.site).collect();
        let idle = self.options.forget_idle_sites.as_secs_f64();
        let forgotten = self
            .pipeline
            .sites
            .forget_idle(seconds, idle, |site| holding.contains(&site));
        if forgotten.is_empty() {
            return;
        }
        self.growth.forget(&forgotten);
        self.history.forget_sites(&forgotten);
        // The page's cached report names sites by id: its ids may serve
        // new sites from now on.
        self.page_report = None;
    }

    /// Sampling: drops from the kernel's set of sampled blocks those whose
    /// frees would match nothing here: blocks of processes that exited
    /// (their pid may serve another), and blocks entered before the ring
    /// buffer was last found empty that the table does not hold (their
    /// record was lost, or dropped at --max-allocations). Left there, they
    /// would stay until a free that may never come. A record is written
    /// microseconds after its block enters the set, so a second of slack
    /// keeps blocks whose record is on its way.
    pub(super) fn sweep_sampled(&mut self) {
        if self.options.sample_mean() == 0
            || self
                .last_sweep
                .is_some_and(|last| last.elapsed() < SWEEP_PERIOD)
        {
            return;
        }
        self.last_sweep = Some(Instant::now());
        let settled_ns = self.drained_ns.saturating_sub(1_000_000_000);
        let (table, processes) = (&self.pipeline.table, &self.processes);
        let left = self.kernel.sweep_sampled(|pid, addr, entered_ns| {
            processes.get(&pid).is_some_and(|p| p.exited)
                || (entered_ns < settled_ns && !table.holds_block(pid, addr))
        });
        self.kernel_sampled_blocks = Some(left);
    }
}
