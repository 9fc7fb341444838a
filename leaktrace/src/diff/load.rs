//! Loading a saved report, JSON or gzipped pprof, into call sites keyed by
//! their function names root to leaf and the allocator.
use std::{
    collections::{BTreeMap, HashMap},
    io::Read as _,
    path::Path,
};

use anyhow::{Context as _, Result, anyhow, bail};
use prost::Message as _;
use serde::Deserialize;

#[cfg(test)]
use crate::report::Report;
use crate::report::pprof::{self, NO_STACK, Profile};

/// A frame as diff matches it: its function; for a Python frame, its
/// function and file (`handle (app/views.py)`): Python code is full of
/// functions of one name in many modules (`__init__`, `handle`, `main`),
/// where a native symbol names one function. Lines are left out in both.
fn frame_key(function: String, file: Option<&str>, python: bool) -> String {
    match file {
        Some(file) if python => format!("{function} ({file})"),
        _ => function,
    }
}

/// Whether a pprof function is a Python one: pprof has no frame kinds, so
/// it goes by the file, a Python source (`.py`) or one of the
/// interpreter's pseudo-files (`<frozen importlib._bootstrap>`,
/// `<string>`); native files are C, C++ or Rust sources.
fn is_python_file(file: &str) -> bool {
    let extension = std::path::Path::new(file).extension();
    extension.is_some_and(|e| e.eq_ignore_ascii_case("py") || e.eq_ignore_ascii_case("pyw"))
        || file.starts_with('<')
}

/// What matches a call site across reports.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct SiteKey {
    /// Frames (see `frame_key`), root first (the function that called the
    /// allocator last); empty when no stack was captured.
    pub stack: Vec<String>,
    /// The allocator function called (malloc, calloc, mmap...); empty for
    /// a pprof profile that did not come from leaktrace.
    pub allocator: String,
}

/// Outstanding memory of a site.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Amount {
    pub bytes: u64,
    pub count: u64,
}

/// A saved report, reduced to what diff compares.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Sites(pub BTreeMap<SiteKey, Amount>);

impl Sites {
    fn add(&mut self, key: SiteKey, bytes: u64, count: u64) {
        let amount = self.0.entry(key).or_default();
        amount.bytes = amount.bytes.saturating_add(bytes);
        amount.count = amount.count.saturating_add(count);
    }

    pub(super) fn total(&self) -> Amount {
        self.0.values().fold(Amount::default(), |sum, a| Amount {
            bytes: sum.bytes.saturating_add(a.bytes),
            count: sum.count.saturating_add(a.count),
        })
    }

    /// The sites of a report in memory (tests compare reports made here).
    #[cfg(test)]
    pub(super) fn from_report(report: &Report) -> Sites {
        let mut sites = Sites::default();
        for site in &report.sites {
            let stack = site.frames.iter().rev().map(|f| {
                frame_key(
                    f.function.clone(),
                    f.file.as_deref(),
                    f.kind == crate::symbolize::FrameKind::Python,
                )
            });
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

/// The largest report read, and the largest profile a gzipped one may
/// unpack to (a few bytes of gzip can unpack to gigabytes): far beyond
/// any report leaktrace writes (tens of MiB for tens of thousands of
/// sites).
const MAX_REPORT_BYTES: u64 = 1 << 30;

/// The most frames all of a pprof profile's samples may add up to: a
/// sample lists location ids, a location lists lines, and both may repeat,
/// so a small profile can name a frame billions of times. A report of
/// 50,000 sites of 64 frames has 3.2 million.
pub(super) const MAX_PPROF_FRAMES: usize = 8 << 20;

/// Reads a saved report, JSON or gzipped pprof.
pub(super) fn load(path: &Path) -> Result<Sites> {
    let bytes = crate::target::elf::read_capped(path, MAX_REPORT_BYTES)?;
    parse(&bytes).with_context(|| path.display().to_string())
}

/// Gunzips a pprof profile of at most [`MAX_REPORT_BYTES`] and decodes it.
fn decode_pprof(gzipped: &[u8]) -> Result<Profile> {
    let encoded = gunzip_capped(gzipped, MAX_REPORT_BYTES)?;
    Profile::decode(encoded.as_slice()).context("not a pprof profile (profile.proto)")
}

/// Gunzips at most `cap` bytes, failing if there are more.
pub(super) fn gunzip_capped(gzipped: &[u8], cap: u64) -> Result<Vec<u8>> {
    let mut unpacked = Vec::new();
    flate2::read::GzDecoder::new(gzipped)
        .take(cap.saturating_add(1))
        .read_to_end(&mut unpacked)
        .context("not valid gzip data")?;
    if unpacked.len() as u64 > cap {
        bail!("the gzipped profile unpacks to more than {cap} bytes");
    }
    Ok(unpacked)
}

/// A saved report's bytes: gzipped pprof if they start with the gzip
/// magic, else JSON.
pub(super) fn parse(bytes: &[u8]) -> Result<Sites> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        from_pprof(&decode_pprof(bytes)?)
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
    #[serde(default)]
    file: Option<String>,
    /// "python" or "native"; absent in reports from before Python frames.
    #[serde(default)]
    kind: Option<String>,
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
                stack: site
                    .frames
                    .into_iter()
                    .rev()
                    .map(|f| {
                        let python = f.kind.as_deref() == Some("python");
                        frame_key(f.function, f.file.as_deref(), python)
                    })
                    .collect(),
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
    let functions: HashMap<u64, String> = profile
        .function
        .iter()
        .map(|f| {
            let file = profile.string(f.filename);
            let name = profile.string(f.name).to_string();
            (f.id, frame_key(name, Some(file), is_python_file(file)))
        })
        .collect();
    let locations: HashMap<u64, &pprof::Location> =
        profile.location.iter().map(|l| (l.id, l)).collect();
    // Counted before any name is copied.
    let mut frames = 0usize;
    for id in profile.sample.iter().flat_map(|s| &s.location_id) {
        frames = frames.saturating_add(locations.get(id).map_or(0, |l| l.line.len()));
        if frames > MAX_PPROF_FRAMES {
            bail!("the profile's samples have more than {MAX_PPROF_FRAMES} frames in all");
        }
    }
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
                stack.push(name.clone());
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
