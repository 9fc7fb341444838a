//! History: the bytes of each traced process and of its top call sites at
//! every growth sample since attach, for the page `leaktrace serve` keeps
//! drawing. A daemon left running for weeks must stay bounded, so:
//!
//! - every series shares one timeline of at most [`POINTS`] instants; when
//!   it is full, every other instant is dropped (the first and the latest
//!   stay), so the series always span the whole time since attach, the
//!   recent past in the most detail;
//! - at most [`PROCESSES`] processes (the largest) and [`SITES`] sites (each
//!   process's [`SITES_PER_PROCESS`] largest, then the largest overall) have
//!   a series; one that enters later starts then (null before);
//! - a process that exits under `--all` takes its series with it.
//!
//! At most (64 + 256) series of 256 points of 16 bytes: about 1.3 MiB.
use std::collections::HashMap;

use crate::daemon::sites::SiteId;

/// Instants kept on the timeline.
pub const POINTS: usize = 256;
/// Processes with a series.
pub const PROCESSES: usize = 64;
/// Call sites with a series, over all processes.
pub const SITES: usize = 256;
/// A process's largest sites that get a series.
pub const SITES_PER_PROCESS: usize = 10;

/// One sample: a site's outstanding bytes and the process it belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SiteBytes {
    pub site: SiteId,
    pub pid: u32,
    pub bytes: u64,
}

/// The bounded series of bytes over time.
#[derive(Debug, Default)]
pub struct History {
    /// Seconds since attach of each instant, oldest first.
    times: Vec<f64>,
    /// Each process's bytes at each instant (None: no series yet).
    processes: HashMap<u32, Vec<Option<u64>>>,
    /// Each site's bytes at each instant, and its process.
    sites: HashMap<SiteId, (u32, Vec<Option<u64>>)>,
}

impl History {
    /// Records the sites' bytes at `seconds` since attach (sites absent
    /// from `now` hold nothing), and each process's sum; a sample not
    /// later than the last one is left out (the timeline only goes
    /// forward).
    pub fn record(&mut self, seconds: f64, now: &[SiteBytes]) {
        if self.times.last().is_some_and(|&last| seconds <= last) {
            return;
        }
        if self.times.len() == POINTS {
            self.thin();
        }
        self.times.push(seconds);
        let len = self.times.len();

        let mut per_process: HashMap<u32, u64> = HashMap::new();
        for sample in now {
            *per_process.entry(sample.pid).or_default() += sample.bytes;
        }
        let mut largest: Vec<(u32, u64)> = per_process.iter().map(|(&p, &b)| (p, b)).collect();
        largest.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        for &(pid, _) in largest.iter().take(PROCESSES) {
            self.processes.entry(pid).or_default();
        }
        if self.processes.len() > PROCESSES {
            // The smallest now make room for larger newcomers.
            let mut kept: Vec<(u32, u64)> = self
                .processes
                .keys()
                .map(|pid| (*pid, per_process.get(pid).copied().unwrap_or(0)))
                .collect();
            kept.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            for (pid, _) in kept.drain(PROCESSES..) {
                self.processes.remove(&pid);
            }
        }
        for (pid, series) in &mut self.processes {
            series.resize(len - 1, None);
            series.push(Some(per_process.get(pid).copied().unwrap_or(0)));
        }

        let bytes: HashMap<SiteId, SiteBytes> = now.iter().map(|s| (s.site, *s)).collect();
        let mut ranked: Vec<&SiteBytes> = now.iter().filter(|s| s.bytes > 0).collect();
        ranked.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.site.cmp(&b.site)));
        let mut taken: HashMap<u32, usize> = HashMap::new();
        for sample in ranked {
            let rank = taken.entry(sample.pid).or_default();
            if *rank < SITES_PER_PROCESS {
                *rank += 1;
                self.sites
                    .entry(sample.site)
                    .or_insert((sample.pid, Vec::new()));
            }
        }
        if self.sites.len() > SITES {
            let mut kept: Vec<(SiteId, u64)> = self
                .sites
                .keys()
                .map(|site| (*site, bytes.get(site).map_or(0, |s| s.bytes)))
                .collect();
            kept.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            for (site, _) in kept.drain(SITES..) {
                self.sites.remove(&site);
            }
        }
        for (site, (_, series)) in &mut self.sites {
            series.resize(len - 1, None);
            series.push(Some(bytes.get(site).map_or(0, |s| s.bytes)));
        }
    }

    /// Drops every other instant, keeping the first and the latest.
    fn thin(&mut self) {
        let len = self.times.len();
        let keep = move |i: usize| i == 0 || (len - 1 - i).is_multiple_of(2);
        retain_indices(&mut self.times, keep);
        for series in self.processes.values_mut() {
            series.resize(len, None);
            retain_indices(series, keep);
        }
        for (_, series) in self.sites.values_mut() {
            series.resize(len, None);
            retain_indices(series, keep);
        }
    }

    /// Forgets `pid` and its sites (it exited under `--all`; its pid and
    /// site ids will serve others).
    pub fn forget_process(&mut self, pid: u32) {
        self.processes.remove(&pid);
        self.sites.retain(|_, (owner, _)| *owner != pid);
    }

    /// Forgets `sites` (their ids will serve new sites).
    pub fn forget_sites(&mut self, sites: &[SiteId]) {
        for site in sites {
            self.sites.remove(site);
        }
    }

    /// The timeline: seconds since attach, oldest first.
    pub fn times(&self) -> &[f64] {
        &self.times
    }

    /// `pid`'s bytes at each instant of the timeline, if it has a series.
    pub fn process(&self, pid: u32) -> Option<Vec<Option<u64>>> {
        self.processes.get(&pid).map(|s| self.padded(s))
    }

    /// The sum of `sites`' bytes at each instant (one reported site may be
    /// several: Python lines reached from several instructions), null
    /// where none of them had a series yet; None when none has one.
    pub fn sites(&self, sites: &[SiteId]) -> Option<Vec<Option<u64>>> {
        let mut sum: Option<Vec<Option<u64>>> = None;
        for series in sites.iter().filter_map(|s| self.sites.get(s)) {
            let series = self.padded(&series.1);
            sum = Some(match sum {
                None => series,
                Some(total) => total
                    .into_iter()
                    .zip(series)
                    .map(|(a, b)| match (a, b) {
                        (Some(a), Some(b)) => Some(a + b),
                        (a, b) => a.or(b),
                    })
                    .collect(),
            });
        }
        sum
    }

    /// A series as long as the timeline (one recorded before a site
    /// entered is shorter: null until then).
    fn padded(&self, series: &[Option<u64>]) -> Vec<Option<u64>> {
        let mut padded = series.to_vec();
        padded.resize(self.times.len(), None);
        padded
    }
}

/// Keeps the values whose index `keep` accepts.
fn retain_indices<T>(values: &mut Vec<T>, keep: impl Fn(usize) -> bool) {
    let mut index = 0;
    values.retain(|_| {
        index += 1;
        keep(index - 1)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(pid: u32, site: SiteId, bytes: u64) -> SiteBytes {
        SiteBytes { site, pid, bytes }
    }

    #[test]
    fn processes_and_their_top_sites_over_time() {
        let mut history = History::default();
        history.record(0.0, &[at(1, 10, 100), at(2, 20, 5)]);
        history.record(10.0, &[at(1, 10, 300), at(1, 11, 50), at(2, 20, 5)]);
        history.record(20.0, &[at(1, 11, 70), at(2, 20, 6)]);
        history.record(20.0, &[at(1, 11, 1)]);
        history.record(19.0, &[at(1, 11, 1)]);
        assert_eq!(history.times(), [0.0, 10.0, 20.0], "only forward");
        assert_eq!(
            history.process(1).unwrap(),
            [Some(100), Some(350), Some(70)]
        );
        assert_eq!(history.process(2).unwrap(), [Some(5), Some(5), Some(6)]);
        assert_eq!(history.process(3), None);
        // Site 10 freed everything: 0, not a gap. Site 11 came later.
        assert_eq!(
            history.sites(&[10]).unwrap(),
            [Some(100), Some(300), Some(0)]
        );
        assert_eq!(history.sites(&[11]).unwrap(), [None, Some(50), Some(70)]);
        assert_eq!(
            history.sites(&[10, 11]).unwrap(),
            [Some(100), Some(350), Some(70)]
        );
        assert_eq!(history.sites(&[99]), None);
        history.forget_process(1);
        assert_eq!(history.process(1), None);
        assert_eq!(history.sites(&[10, 11]), None);
        assert!(history.sites(&[20]).is_some());
        history.forget_sites(&[20]);
        assert_eq!(history.sites(&[20]), None);
    }

    #[test]
    fn the_timeline_is_thinned_and_still_spans_since_attach() {
        let mut history = History::default();
        let total = POINTS * 5;
        for i in 0..total {
            history.record(i as f64, &[at(1, 1, i as u64 + 1)]);
        }
        let times = history.times();
        assert!(times.len() <= POINTS, "{}", times.len());
        assert!(times.len() > POINTS / 2, "{}", times.len());
        assert!(times[0].abs() < 1e-9, "the first instant stays");
        assert!((times[times.len() - 1] - (total - 1) as f64).abs() < 1e-9);
        assert!(times.windows(2).all(|w| w[0] < w[1]));
        // Each series stays aligned with its instants.
        let series = history.sites(&[1]).unwrap();
        assert_eq!(series.len(), times.len());
        for (t, bytes) in times.iter().zip(&series) {
            assert_eq!(*bytes, Some(*t as u64 + 1));
        }
        // Older gaps are wider than recent ones.
        let first_gap = times[2] - times[1];
        let last_gap = times[times.len() - 1] - times[times.len() - 2];
        assert!(first_gap > last_gap, "{first_gap} {last_gap}");
    }

    #[test]
    fn series_are_bounded_by_count_keeping_the_largest() {
        let mut history = History::default();
        // Many processes, each with more sites than it gets series for.
        let now: Vec<SiteBytes> = (0..200u32)
            .flat_map(|pid| (0..15u32).map(move |s| at(pid, pid * 100 + s, u64::from(pid + s))))
            .collect();
        history.record(0.0, &now);
        assert_eq!(history.processes.len(), PROCESSES);
        assert_eq!(history.sites.len(), SITES);
        // The largest process and its largest site have series; a site
        // ranked 11th in its process has none.
        assert!(history.process(199).is_some() && history.process(0).is_none());
        assert!(history.sites(&[199 * 100 + 14]).is_some());
        assert!(history.sites(&[199 * 100 + 4]).is_none());
    }
}
