//! `leaktrace diff OLD NEW`: the change in outstanding memory per call site
//! between two saved reports.
//!
//! Each report is either our JSON (`--format json`; with several documents
//! in sequence, the last) or our gzipped pprof profile (`--format pprof`),
//! told apart by the gzip magic bytes. Call sites are matched by their
//! symbolized stack, function names root to leaf (Python frames by
//! function and file), plus the allocator function: pids, addresses and
//! line numbers are left out, so two runs of the same program match, and
//! sites of one report that share a key are added up.
//!
//! - [`load`]: reads either kind of report into sites keyed by stack;
//! - [`compare`]: the per-site change, largest growth first;
//! - [`render`]: text and folded output.
mod compare;
mod load;
mod render;
#[cfg(test)]
mod tests;

use std::{io::Write as _, path::Path};

use anyhow::Result;

use self::{
    compare::diff,
    load::load,
    render::{render_folded, render_text},
};

/// `leaktrace diff --format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DiffFormat {
    /// Both totals, the total change, then every call site that changed,
    /// largest growth first.
    Text,
    /// One line per call site that grew, `root;...;allocator growth_bytes`,
    /// for flamegraph tools (sites that shrank or did not change are left
    /// out).
    Folded,
}

/// Loads a saved report from untrusted bytes, compares it with nothing and
/// renders both formats, as `run` would; the number of sites, or None
/// when the bytes are refused (for the fuzz targets: any panic here is a
/// bug).
pub(crate) fn check_untrusted(bytes: &[u8]) -> Option<usize> {
    let sites = load::parse(bytes).ok()?;
    let empty = load::Sites::default();
    let diffs = diff(&empty, &sites);
    let _: String = render_text("old", "new", &empty, &sites, &diffs);
    let _: String = render_folded(&diffs);
    Some(sites.0.len())
}

/// `leaktrace diff OLD NEW`: prints the diff on stdout.
pub fn run(old_path: &Path, new_path: &Path, format: DiffFormat) -> Result<i32> {
    let old = load(old_path)?;
    let new = load(new_path)?;
    let diffs = diff(&old, &new);
    let out = match format {
        DiffFormat::Text => render_text(
            &old_path.display().to_string(),
            &new_path.display().to_string(),
            &old,
            &new,
            &diffs,
        ),
        DiffFormat::Folded => render_folded(&diffs),
    };
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(out.as_bytes())?;
    stdout.flush()?;
    Ok(0)
}
