//! Comparing two reports: each call site's change from OLD to NEW, sites
//! found in only one of them included.
use super::load::{Amount, SiteKey, Sites};

/// One site's amounts in both reports (zero where it is absent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct SiteDiff {
    pub key: SiteKey,
    pub old: Amount,
    pub new: Amount,
}

fn delta(old: u64, new: u64) -> i128 {
    i128::from(new) - i128::from(old)
}

impl SiteDiff {
    /// NEW - OLD bytes.
    pub(super) fn bytes(&self) -> i128 {
        delta(self.old.bytes, self.new.bytes)
    }

    /// NEW - OLD allocations.
    pub(super) fn count(&self) -> i128 {
        delta(self.old.count, self.new.count)
    }

    pub(super) fn unchanged(&self) -> bool {
        self.old == self.new
    }
}

/// Every site of either report, largest growth in bytes first (then in
/// allocations; ties in stack order), the most shrunk last.
pub(super) fn diff(old: &Sites, new: &Sites) -> Vec<SiteDiff> {
    let mut keys: Vec<&SiteKey> = old.0.keys().chain(new.0.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut diffs: Vec<SiteDiff> = keys
        .into_iter()
        .map(|key| SiteDiff {
            key: key.clone(),
            old: old.0.get(key).copied().unwrap_or_default(),
            new: new.0.get(key).copied().unwrap_or_default(),
        })
        .collect();
    diffs.sort_by(|a, b| {
        b.bytes()
            .cmp(&a.bytes())
            .then(b.count().cmp(&a.count()))
            .then(a.key.cmp(&b.key))
    });
    diffs
}
