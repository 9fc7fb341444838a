//! When to turn a Go program's own heap sampling on, and when to turn it
//! back off: the decisions alone, on the values of `runtime.MemProfileRate`
//! the daemon reads (the reads and the one write are in `app::go_heap`).
//!
//! Why this mechanism: the runtime samples its heap itself (one sample per
//! `MemProfileRate` bytes allocated, frees known from the GC's sweep: what
//! `/debug/pprof/heap` reports), but the linker turns it off in binaries
//! that never reference `runtime.MemProfile` (Go ≥1.17): the runtime
//! writes 0 into `MemProfileRate` at start. Writing a rate back turns the
//! sampler on for the allocations made from then on (every `mcache`'s next
//! sample point was computed as 0 with the rate at 0, so the next
//! allocation on each P is sampled and draws a real next point). It costs
//! what it costs every program that imports pprof: nothing measurable
//! (`cargo xtask bench-go`), where an entry probe on `runtime.mallocgc`
//! would trap on every allocation.
//!
//! The rules, so that the program is never fought nor left changed:
//! - only 0 is ever replaced: a rate the program chose is kept, and a
//!   program that puts 0 back after leaktrace's write is not overridden
//!   more than [`MAX_WRITES`] times;
//! - the runtime writes its 0 at start (`schedinit` since 1.21, the
//!   runtime's package init before), after `run` has attached at the entry
//!   point: the rate is watched for [`WATCH_NS`] after attach, and at each
//!   report;
//! - at the end, 0 goes back only where the value is still leaktrace's.

/// How long after attach the rate is watched for the runtime's own 0.
pub(crate) const WATCH_NS: u64 = 5_000_000_000;
/// At most this many writes per process.
pub(crate) const MAX_WRITES: u32 = 3;

/// One process's sampling switch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SamplingSwitch {
    rate: u64,
    watch_until_ns: u64,
    writes: u32,
    /// The program replaced leaktrace's rate with 0 once too often.
    refused: bool,
}

impl SamplingSwitch {
    /// A switch that turns sampling on at `rate` bytes, for a process
    /// attached at `now_ns`.
    pub(crate) fn new(rate: u64, now_ns: u64) -> SamplingSwitch {
        SamplingSwitch {
            rate,
            watch_until_ns: now_ns.saturating_add(WATCH_NS),
            writes: 0,
            refused: false,
        }
    }

    /// Whether the rate should still be read between reports.
    pub(crate) fn watching(&self, now_ns: u64) -> bool {
        !self.refused && now_ns < self.watch_until_ns
    }

    /// The rate to write, having read `current`, if any.
    pub(crate) fn observe(&mut self, current: i64) -> Option<u64> {
        if current != 0 || self.refused {
            return None;
        }
        if self.writes >= MAX_WRITES {
            self.refused = true;
            return None;
        }
        self.writes += 1;
        Some(self.rate)
    }

    /// Whether leaktrace's rate was written at least once.
    pub(crate) fn wrote(&self) -> bool {
        self.writes > 0
    }

    /// Whether `current` is the rate leaktrace wrote (so a report says
    /// the profile covers allocations since then only).
    pub(crate) fn is_ours(&self, current: i64) -> bool {
        self.wrote() && u64::try_from(current) == Ok(self.rate)
    }

    /// At the end: whether 0 goes back, the value read being `current`.
    pub(crate) fn restore(&self, current: i64) -> bool {
        self.is_ours(current)
    }

    /// Why sampling stayed off, when the program kept turning it off.
    pub(crate) fn refused(&self) -> bool {
        self.refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_zero_is_replaced_and_a_program_that_insists_wins() {
        let mut switch = SamplingSwitch::new(524_288, 0);
        // `run` at the entry point: the static initial value (1.21+).
        assert_eq!(switch.observe(524_288), None);
        assert!(!switch.wrote());
        // The runtime's 0 from schedinit.
        assert_eq!(switch.observe(0), Some(524_288));
        assert!(switch.is_ours(524_288));
        // A rate the program chose is kept and is not ours.
        let mut chosen = SamplingSwitch::new(524_288, 0);
        assert_eq!(chosen.observe(4096), None);
        assert!(!chosen.is_ours(4096) && !chosen.restore(4096));
        // The program puts 0 back again and again: three writes, then no.
        assert_eq!(switch.observe(0), Some(524_288));
        assert_eq!(switch.observe(0), Some(524_288));
        assert_eq!(switch.observe(0), None);
        assert!(switch.refused());
        assert_eq!(switch.observe(0), None);
    }

    #[test]
    fn watched_for_a_while_and_restored_only_when_still_ours() {
        let mut switch = SamplingSwitch::new(1, 1_000);
        assert!(switch.watching(1_000 + WATCH_NS - 1));
        assert!(!switch.watching(1_000 + WATCH_NS));
        assert!(!switch.restore(0), "nothing written: nothing to restore");
        assert_eq!(switch.observe(0), Some(1));
        assert!(switch.restore(1));
        assert!(!switch.restore(0));
        assert!(!switch.restore(2), "the program changed it since");
    }
}
