//! Rendering a diff: text with both totals and every site that changed,
//! or folded stacks of the growth for a flamegraph.
use std::fmt::Write as _;

use super::{
    compare::SiteDiff,
    load::{Amount, SiteKey, Sites},
};
use crate::report::{pprof::NO_STACK, text::human_bytes};

/// "+1.5 KiB", "-100 B", "+0 B".
fn signed_human(bytes: i128) -> String {
    let sign = if bytes < 0 { '-' } else { '+' };
    let magnitude = u64::try_from(bytes.unsigned_abs()).unwrap_or(u64::MAX);
    format!("{sign}{}", human_bytes(magnitude))
}

fn summary(amount: Amount, sites: usize) -> String {
    format!(
        "{} bytes ({}) in {} allocations at {} call sites",
        amount.bytes,
        human_bytes(amount.bytes),
        amount.count,
        sites
    )
}

/// The text output: both totals, the total change, then each site that
/// changed, innermost frame first as in the text report.
pub(super) fn render_text(
    old_name: &str,
    new_name: &str,
    old: &Sites,
    new: &Sites,
    diffs: &[SiteDiff],
) -> String {
    let mut out = String::new();
    let (old_total, new_total) = (old.total(), new.total());
    let change = SiteDiff {
        key: SiteKey {
            stack: Vec::new(),
            allocator: String::new(),
        },
        old: old_total,
        new: new_total,
    };
    let is_new = |d: &&SiteDiff| d.old == Amount::default();
    let is_gone = |d: &&SiteDiff| d.new == Amount::default();
    let grew = diffs.iter().filter(|d| d.bytes() > 0).count();
    let shrank = diffs.iter().filter(|d| d.bytes() < 0).count();
    let added = diffs.iter().filter(is_new).count();
    let gone = diffs.iter().filter(is_gone).count();
    let unchanged = diffs.iter().filter(|d| d.unchanged()).count();
    let _ = writeln!(out, "leaktrace diff: {old_name} -> {new_name}");
    let _ = writeln!(out, "old: {}", summary(old_total, old.0.len()));
    let _ = writeln!(out, "new: {}", summary(new_total, new.0.len()));
    let _ = writeln!(
        out,
        "change: {:+} bytes ({}), {:+} allocations; {grew} call sites grew, {shrank} shrank ({added} only in new, {gone} only in old), {unchanged} unchanged",
        change.bytes(),
        signed_human(change.bytes()),
        change.count(),
    );
    for (rank, site) in diffs.iter().filter(|d| !d.unchanged()).enumerate() {
        let what = if is_new(&site) {
            " [only in new]"
        } else if is_gone(&site) {
            " [only in old]"
        } else {
            ""
        };
        let allocator = if site.key.allocator.is_empty() {
            String::new()
        } else {
            format!(" from {}", site.key.allocator)
        };
        let _ = writeln!(
            out,
            "\n#{} {:+} bytes ({}), {:+} allocations{allocator}: {} -> {} bytes, {} -> {} allocations{what}",
            rank + 1,
            site.bytes(),
            signed_human(site.bytes()),
            site.count(),
            site.old.bytes,
            site.new.bytes,
            site.old.count,
            site.new.count,
        );
        if site.key.stack.is_empty() {
            let _ = writeln!(out, "    {NO_STACK}");
        }
        for function in site.key.stack.iter().rev() {
            let _ = writeln!(out, "    {function}");
        }
    }
    if unchanged > 0 {
        let _ = writeln!(out, "\n({unchanged} call sites unchanged, not shown)");
    }
    out
}

/// The folded output: `root;...;allocator growth_bytes` for each site that
/// grew, largest first.
pub(super) fn render_folded(diffs: &[SiteDiff]) -> String {
    let mut out = String::new();
    for site in diffs.iter().filter(|d| d.bytes() > 0) {
        let mut names: Vec<String> = site
            .key
            .stack
            .iter()
            .map(|f| crate::report::folded::clean(f))
            .collect();
        if names.is_empty() {
            names.push(NO_STACK.into());
        }
        if !site.key.allocator.is_empty() {
            names.push(site.key.allocator.clone());
        }
        let _ = writeln!(out, "{} {}", names.join(";"), site.bytes());
    }
    out
}
