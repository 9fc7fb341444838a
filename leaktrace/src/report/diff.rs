//! `leaktrace diff OLD NEW`: the change in outstanding memory per call site
//! between two saved reports.
//!
//! Each report is either our JSON (`--format json`; with several documents
//! in sequence, the last) or our gzipped pprof profile (`--format pprof`),
//! told apart by the gzip magic bytes. Call sites are matched by their
//! symbolized stack, function names root to leaf, plus the allocator
//! function: pids, addresses and line numbers are left out, so two runs of
//! the same program match, and sites of one report that share a key are
//! added up.
use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    fs,
    io::Write as _,
    path::Path,
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::Deserialize;

use super::{
    Report,
    pprof::{self, NO_STACK, Profile},
    text::human_bytes,
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

/// What matches a call site across reports.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SiteKey {
    /// Function names, root first (the function that called the allocator
    /// last); empty when no stack was captured.
    pub stack: Vec<String>,
    /// The allocator function called (malloc, calloc, mmap...); empty for
    /// a pprof profile that did not come from leaktrace.
    pub allocator: String,
}

/// Outstanding memory of a site.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Amount {
    pub bytes: u64,
    pub count: u64,
}

/// A saved report, reduced to what diff compares.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sites(pub BTreeMap<SiteKey, Amount>);

impl Sites {
    fn add(&mut self, key: SiteKey, bytes: u64, count: u64) {
        let amount = self.0.entry(key).or_default();
        amount.bytes = amount.bytes.saturating_add(bytes);
        amount.count = amount.count.saturating_add(count);
    }

    pub fn total(&self) -> Amount {
        self.0.values().fold(Amount::default(), |sum, a| Amount {
            bytes: sum.bytes.saturating_add(a.bytes),
            count: sum.count.saturating_add(a.count),
        })
    }

    /// The sites of a report in memory.
    pub fn from_report(report: &Report) -> Sites {
        let mut sites = Sites::default();
        for site in &report.sites {
            let stack = site.frames.iter().rev().map(|f| f.function.clone());
            sites.add(
                SiteKey {
                    stack: stack.collect(),
                    allocator: site.allocator.clone(),
                },
                site.bytes,
                site.count,
            );
        }
        sites
    }
}

/// Reads a saved report, JSON or gzipped pprof.
pub fn load(path: &Path) -> Result<Sites> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    parse(&bytes).with_context(|| path.display().to_string())
}

/// A saved report's bytes: gzipped pprof if they start with the gzip
/// magic, else JSON.
pub fn parse(bytes: &[u8]) -> Result<Sites> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        from_pprof(&pprof::decode(bytes)?)
    } else {
        from_json(bytes).map_err(|err| {
            anyhow!("neither a leaktrace JSON report nor a gzipped pprof profile (as JSON: {err})")
        })
    }
}

#[derive(Deserialize)]
struct JsonReport {
    sites: Vec<JsonSite>,
}

#[derive(Deserialize)]
struct JsonSite {
    allocator: String,
    bytes: u64,
    count: u64,
    frames: Vec<JsonFrame>,
}

#[derive(Deserialize)]
struct JsonFrame {
    function: String,
}

/// Our JSON; with several documents in sequence (`--interval` on stdout),
/// the last one.
fn from_json(bytes: &[u8]) -> Result<Sites> {
    let mut last = None;
    for document in serde_json::Deserializer::from_slice(bytes).into_iter::<JsonReport>() {
        last = Some(document?);
    }
    let report = last.ok_or_else(|| anyhow!("empty file"))?;
    let mut sites = Sites::default();
    for site in report.sites {
        sites.add(
            SiteKey {
                stack: site.frames.into_iter().rev().map(|f| f.function).collect(),
                allocator: site.allocator,
            },
            site.bytes,
            site.count,
        );
    }
    Ok(sites)
}

/// A pprof profile with an `inuse_space` sample type (ours, or any heap
/// profile); the allocator comes from the `allocator` label.
fn from_pprof(profile: &Profile) -> Result<Sites> {
    let Some(space) = profile.sample_index("inuse_space") else {
        bail!("a pprof profile without an inuse_space sample type (not a heap profile)");
    };
    let objects = profile.sample_index("inuse_objects");
    let functions: HashMap<u64, &str> = profile
        .function
        .iter()
        .map(|f| (f.id, profile.string(f.name)))
        .collect();
    let locations: HashMap<u64, &pprof::Location> =
        profile.location.iter().map(|l| (l.id, l)).collect();
    let mut sites = Sites::default();
    for sample in &profile.sample {
        let mut stack = Vec::new();
        for id in &sample.location_id {
            let location = locations
                .get(id)
                .ok_or_else(|| anyhow!("a sample refers to location {id}, which is missing"))?;
            for line in &location.line {
                let name = functions.get(&line.function_id).ok_or_else(|| {
                    anyhow!(
                        "location {id} refers to function {}, which is missing",
                        line.function_id
                    )
                })?;
                stack.push(name.to_string());
            }
        }
        if stack == [NO_STACK] {
            stack.clear();
        }
        stack.reverse();
        let allocator = sample
            .label
            .iter()
            .find(|l| profile.string(l.key) == "allocator")
            .map_or("", |l| profile.string(l.str));
        let value = |index: Option<usize>| {
            index
                .and_then(|i| sample.value.get(i))
                .map_or(0, |&v| u64::try_from(v).unwrap_or(0))
        };
        sites.add(
            SiteKey {
                stack,
                allocator: allocator.to_string(),
            },
            value(Some(space)),
            value(objects),
        );
    }
    Ok(sites)
}

/// One site's amounts in both reports (zero where it is absent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteDiff {
    pub key: SiteKey,
    pub old: Amount,
    pub new: Amount,
}

fn delta(old: u64, new: u64) -> i128 {
    i128::from(new) - i128::from(old)
}

impl SiteDiff {
    /// NEW - OLD bytes.
    pub fn bytes(&self) -> i128 {
        delta(self.old.bytes, self.new.bytes)
    }

    /// NEW - OLD allocations.
    pub fn count(&self) -> i128 {
        delta(self.old.count, self.new.count)
    }

    fn unchanged(&self) -> bool {
        self.old == self.new
    }
}

/// Every site of either report, largest growth in bytes first (then in
/// allocations; ties in stack order), the most shrunk last.
pub fn diff(old: &Sites, new: &Sites) -> Vec<SiteDiff> {
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
pub fn render_text(
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
pub fn render_folded(diffs: &[SiteDiff]) -> String {
    let mut out = String::new();
    for site in diffs.iter().filter(|d| d.bytes() > 0) {
        let mut names: Vec<String> = site
            .key
            .stack
            .iter()
            .map(|f| super::folded::clean(f))
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

#[cfg(test)]
mod tests {
    use super::super::{fixtures, json};
    use super::*;

    fn key(stack: &[&str], allocator: &str) -> SiteKey {
        SiteKey {
            stack: stack.iter().map(|s| s.to_string()).collect(),
            allocator: allocator.into(),
        }
    }

    /// The fixture with leak_a doubled, leak;b gone and a new site.
    fn grown() -> Report {
        let mut report = fixtures::report();
        report.sites[0].bytes *= 2;
        report.sites[0].count *= 2;
        report.sites.remove(1);
        let mut site = report.sites[0].clone();
        site.allocator = "mmap".into();
        site.bytes = 8192;
        site.count = 1;
        site.frames = vec![
            fixtures::frame("map_it", None, None),
            fixtures::frame("main", Some("prog.c"), Some(40)),
        ];
        report.sites.push(site);
        report
    }

    fn deltas(diffs: &[SiteDiff]) -> Vec<(SiteKey, i128, i128)> {
        diffs
            .iter()
            .map(|d| (d.key.clone(), d.bytes(), d.count()))
            .collect()
    }

    #[test]
    fn per_site_deltas_largest_growth_first() {
        let old = Sites::from_report(&fixtures::report());
        let new = Sites::from_report(&grown());
        let diffs = diff(&old, &new);
        assert_eq!(
            deltas(&diffs),
            [
                (key(&["main", "map_it"], "mmap"), 8192, 1),
                (key(&["main", "leak_a"], "malloc"), 4096, 4),
                (key(&["main", "leak;b"], "calloc"), -100, -1),
            ]
        );
        assert_eq!(
            render_folded(&diffs),
            "main;map_it;mmap 8192\nmain;leak_a;malloc 4096\n"
        );
        let text = render_text("a.json", "b.pb.gz", &old, &new, &diffs);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "leaktrace diff: a.json -> b.pb.gz");
        assert_eq!(
            lines[1],
            "old: 4196 bytes (4.1 KiB) in 5 allocations at 2 call sites"
        );
        assert_eq!(
            lines[2],
            "new: 16384 bytes (16.0 KiB) in 9 allocations at 2 call sites"
        );
        assert_eq!(
            lines[3],
            "change: +12188 bytes (+11.9 KiB), +4 allocations; 2 call sites grew, 1 shrank (1 only in new, 1 only in old), 0 unchanged"
        );
        assert_eq!(
            lines[5],
            "#1 +8192 bytes (+8.0 KiB), +1 allocations from mmap: 0 -> 8192 bytes, 0 -> 1 allocations [only in new]"
        );
        assert_eq!(lines[6], "    map_it");
        assert_eq!(lines[7], "    main");
        assert_eq!(
            lines[9],
            "#2 +4096 bytes (+4.0 KiB), +4 allocations from malloc: 4096 -> 8192 bytes, 4 -> 8 allocations"
        );
        assert_eq!(
            lines[13],
            "#3 -100 bytes (-100 B), -1 allocations from calloc: 100 -> 0 bytes, 1 -> 0 allocations [only in old]"
        );
        assert_eq!(lines[14], "    leak;b");
    }

    #[test]
    fn a_report_against_itself_changes_nothing() {
        let sites = Sites::from_report(&fixtures::report());
        let diffs = diff(&sites, &sites);
        assert_eq!(diffs.len(), 2);
        assert!(diffs.iter().all(|d| d.bytes() == 0 && d.count() == 0));
        assert_eq!(render_folded(&diffs), "");
        let text = render_text("a", "a", &sites, &sites, &diffs);
        assert!(text.contains("change: +0 bytes (+0 B), +0 allocations; 0 call sites grew"));
        assert!(text.ends_with("\n(2 call sites unchanged, not shown)\n"));
    }

    #[test]
    fn json_and_pprof_inputs_read_the_same() {
        let old = fixtures::report();
        let new = grown();
        let from_json = |r: &Report| parse(json::render(r).as_bytes()).unwrap();
        let from_pprof = |r: &Report| parse(&pprof::render(r)).unwrap();
        assert_eq!(from_json(&old), Sites::from_report(&old));
        assert_eq!(from_pprof(&old), Sites::from_report(&old));
        let expected = diff(&Sites::from_report(&old), &Sites::from_report(&new));
        assert_eq!(diff(&from_json(&old), &from_pprof(&new)), expected);
        assert_eq!(diff(&from_pprof(&old), &from_json(&new)), expected);
        assert_eq!(diff(&from_pprof(&old), &from_pprof(&new)), expected);
    }

    #[test]
    fn sites_with_the_same_names_add_up_and_empty_stacks_match() {
        let mut report = fixtures::report();
        let mut twin = report.sites[0].clone();
        twin.frames[0].line = Some(11);
        twin.pid = 43;
        report.sites.push(twin);
        report.sites[1].frames.clear();
        for sites in [
            Sites::from_report(&report),
            parse(json::render(&report).as_bytes()).unwrap(),
            parse(&pprof::render(&report)).unwrap(),
        ] {
            assert_eq!(sites.0.len(), 2);
            assert_eq!(
                sites.0[&key(&["main", "leak_a"], "malloc")],
                Amount {
                    bytes: 8192,
                    count: 8
                }
            );
            assert_eq!(sites.0[&key(&[], "calloc")].bytes, 100);
        }
    }

    #[test]
    fn the_last_json_document_counts() {
        let mut text = json::render(&fixtures::report());
        text.push_str(&json::render(&grown()));
        assert_eq!(
            parse(text.as_bytes()).unwrap(),
            Sites::from_report(&grown())
        );
    }

    #[test]
    fn neither_json_nor_pprof_is_an_error() {
        let err = parse(b"hello").unwrap_err().to_string();
        assert!(
            err.starts_with("neither a leaktrace JSON report nor a gzipped pprof profile"),
            "{err}"
        );
        assert!(parse(b"").is_err());
        assert!(parse(&[0x1f, 0x8b, 0, 0]).is_err());
        let err = format!(
            "{:#}",
            load(Path::new("/nonexistent/old.json")).unwrap_err()
        );
        assert!(err.starts_with("reading /nonexistent/old.json: "), "{err}");
    }
}
