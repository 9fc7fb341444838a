//! Growth over time: each call site's outstanding bytes, sampled at every
//! interval, tell a leak from a cache. A site that only grows is the leak;
//! one that grows and shrinks is a cache (or a working set). Reports rank
//! the steady growers by their rate (least-squares slope, bytes/second).
use std::collections::{HashMap, VecDeque};

use serde::Serialize;

use crate::daemon::{aggregate::SiteTotal, sites::SiteId};

/// Samples kept per site (the oldest are dropped).
const KEPT: usize = 120;
/// Samples a site needs before its growth is judged.
const MIN_SAMPLES: usize = 3;

/// How a call site's outstanding bytes moved.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Growth {
    /// Least-squares slope of outstanding bytes over time.
    pub bytes_per_second: f64,
    /// Never went down between two samples, and ended higher than it began.
    pub steady: bool,
    /// Samples the judgement rests on.
    pub samples: usize,
}

#[derive(Default)]
pub struct GrowthTracker {
    samples: HashMap<SiteId, VecDeque<(f64, u64)>>,
}

impl GrowthTracker {
    /// Records every site's outstanding bytes at `seconds` since attach;
    /// sites seen before and absent now are recorded at 0 (all freed).
    pub fn record(&mut self, seconds: f64, totals: &[SiteTotal]) {
        let now: HashMap<SiteId, u64> = totals.iter().map(|t| (t.site, t.bytes)).collect();
        for (site, series) in &mut self.samples {
            if !now.contains_key(site) {
                push(series, seconds, 0);
            }
        }
        for (site, bytes) in now {
            push(self.samples.entry(site).or_default(), seconds, bytes);
        }
    }

    /// Forgets the history of `sites` (their process is gone, and their ids
    /// will serve new sites).
    pub fn forget(&mut self, sites: &[SiteId]) {
        for site in sites {
            self.samples.remove(site);
        }
    }

    /// How `site` moved, once it has enough samples.
    pub fn assess(&self, site: SiteId) -> Option<Growth> {
        let series = self.samples.get(&site)?;
        if series.len() < MIN_SAMPLES {
            return None;
        }
        let n = series.len() as f64;
        let mean_t = series.iter().map(|(t, _)| t).sum::<f64>() / n;
        let mean_b = series.iter().map(|(_, b)| *b as f64).sum::<f64>() / n;
        let (mut covariance, mut variance) = (0.0, 0.0);
        for (t, b) in series {
            covariance += (t - mean_t) * (*b as f64 - mean_b);
            variance += (t - mean_t) * (t - mean_t);
        }
        let bytes_per_second = if variance > 0.0 {
            covariance / variance
        } else {
            0.0
        };
        let never_down = series
            .iter()
            .zip(series.iter().skip(1))
            .all(|(a, b)| b.1 >= a.1);
        let first = series.front().map_or(0, |s| s.1);
        let last = series.back().map_or(0, |s| s.1);
        Some(Growth {
            bytes_per_second,
            steady: never_down && last > first,
            samples: series.len(),
        })
    }
}

fn push(series: &mut VecDeque<(f64, u64)>, seconds: f64, bytes: u64) {
    if series.len() == KEPT {
        series.pop_front();
    }
    series.push_back((seconds, bytes));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(pairs: &[(SiteId, u64)]) -> Vec<SiteTotal> {
        pairs
            .iter()
            .map(|&(site, bytes)| SiteTotal {
                site,
                bytes,
                count: 1,
                oldest_age_ms: 0,
            })
            .collect()
    }

    #[test]
    fn a_leak_grows_steadily_a_cache_does_not() {
        let mut tracker = GrowthTracker::default();
        // Site 1 leaks 1000 bytes/s; site 2 is a cache going up and down;
        // site 3 stays flat; site 4 shows up late.
        let cache = [5000, 9000, 4000, 8000, 6000];
        for (i, cached) in cache.iter().enumerate() {
            let t = i as f64 * 10.0;
            let mut now = vec![(1, 10_000 * i as u64), (2, *cached), (3, 700)];
            if i >= 3 {
                now.push((4, 1));
            }
            tracker.record(t, &totals(&now));
        }
        let leak = tracker.assess(1).unwrap();
        assert!((leak.bytes_per_second - 1000.0).abs() < 1e-6, "{leak:?}");
        assert!(leak.steady);
        assert_eq!(leak.samples, 5);
        assert!(!tracker.assess(2).unwrap().steady);
        let flat = tracker.assess(3).unwrap();
        assert!(!flat.steady && flat.bytes_per_second == 0.0);
        assert_eq!(tracker.assess(4), None, "two samples are not enough");
    }

    #[test]
    fn a_site_that_disappears_drops_to_zero_and_only_the_last_samples_are_kept() {
        let mut tracker = GrowthTracker::default();
        tracker.record(0.0, &totals(&[(1, 100)]));
        tracker.record(1.0, &totals(&[(1, 200)]));
        tracker.record(2.0, &totals(&[]));
        let freed = tracker.assess(1).unwrap();
        assert!(!freed.steady);
        for i in 0..(KEPT + 10) {
            tracker.record(3.0 + i as f64, &totals(&[(1, i as u64)]));
        }
        assert_eq!(tracker.assess(1).unwrap().samples, KEPT);
        assert!(tracker.assess(1).unwrap().steady);
        tracker.forget(&[1]);
        assert_eq!(tracker.assess(1), None);
    }
}
