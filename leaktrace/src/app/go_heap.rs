//! The Go heap by allocation site, in allocations mode: each Go process's
//! own heap profile (the runtime's memory profile buckets) read from its
//! memory at every report, read-only, nothing placed in it. Its in-use
//! bytes per stack become call sites with allocator `go-heap`, so every
//! format shows them.
//!
//! Why the runtime's buckets: they are what `/debug/pprof/heap` reports
//! (in-use as of the last collection, frees known from the GC's sweep), and
//! reading them costs the program nothing: no probe, one read of the list
//! per report. Where the linker turned the profile off (a binary that does
//! not use runtime/pprof), `runtime.MemProfileRate` reads 0: the report
//! says so and shows no site for it; its memory is not written to turn
//! sampling on.
use std::{collections::HashMap, fs, path::Path};

use leaktrace_common::AllocFn;

use crate::{
    daemon::{aggregate::SiteTotal, sites::CallSites},
    report::GoHeapReport,
    runtime::{
        go::{
            detect::GoFound,
            heap_profile::{self, InUseSite},
            heap_symbols::{self, ProfileSymbols},
            image::Image,
        },
        python::code_object::{Memory as _, ProcessMemory},
    },
    target::{
        elf::load_bias,
        procfs::{Mapping, file_identity},
    },
};

/// Buckets read per process and report; the rest are counted.
const MAX_BUCKETS: usize = 20_000;
/// Frames kept per stack (a bucket holds at most 32 before Go 1.23, 128
/// by default since).
const MAX_FRAMES: usize = 128;
/// Larger files are not read (no Go binary is that large).
const MAX_OBJECT_BYTES: u64 = 1 << 30;

/// Where a binary's profile is: its globals, and its loadable segments
/// (file offset, file size, address) to place them in a process.
type Located = Result<(ProfileSymbols, Vec<(u64, u64, u64)>), String>;

/// One Go process whose heap is read.
struct GoProcess {
    /// Its addresses of `runtime.mbuckets` and `runtime.MemProfileRate`,
    /// or why there are none.
    addresses: Result<(u64, u64), String>,
    memory: Option<ProcessMemory>,
    /// The sites read last (kept once it exits).
    sites: Vec<InUseSite>,
    status: GoHeapReport,
}

#[derive(Default)]
pub(super) struct GoHeap {
    /// Each binary file's globals, found once.
    located: HashMap<(u64, u64), Located>,
    processes: HashMap<u32, GoProcess>,
}

impl GoHeap {
    /// Starts reading `pid`'s heap profile, `go` the Go binary it maps
    /// (once per process: a new image after exec is forgotten first).
    pub(super) fn attach(&mut self, pid: u32, go: &GoFound, root: &Path, mappings: &[Mapping]) {
        if self.processes.contains_key(&pid) {
            return;
        }
        let path = root.join(go.display_path.trim_start_matches('/'));
        let located = match file_identity(&path) {
            Some(identity) => self
                .located
                .entry(identity)
                .or_insert_with(|| locate(&path))
                .clone(),
            None => Err(format!("{} cannot be opened", path.display())),
        };
        let addresses = located.and_then(|(symbols, segments)| {
            let bias = mappings
                .iter()
                .filter(|m| *m.path == *go.display_path)
                .find_map(|m| load_bias(&segments, m))
                .ok_or("its mappings do not show where it is loaded")?;
            Ok((
                bias.wrapping_add(symbols.mbuckets),
                bias.wrapping_add(symbols.mem_profile_rate),
            ))
        });
        let status = match &addresses {
            Ok(_) => unreadable("not read yet".into()),
            Err(why) => unreadable(format!("Go heap profile not read: {why}")),
        };
        self.processes.insert(
            pid,
            GoProcess {
                addresses,
                memory: ProcessMemory::open(pid).ok(),
                sites: Vec::new(),
                status,
            },
        );
    }

    /// Reads `pid`'s profile again (nothing when it is not a Go process
    /// attached).
    pub(super) fn read(&mut self, pid: u32) {
        let Some(process) = self.processes.get_mut(&pid) else {
            return;
        };
        let Ok((mbuckets, rate_at)) = process.addresses else {
            return;
        };
        let Some(memory) = &process.memory else {
            process.status = unreadable(format!(
                "Go heap profile not read: /proc/{pid}/mem cannot be opened"
            ));
            return;
        };
        let result = (|| -> anyhow::Result<(i64, Vec<InUseSite>, u64, u64)> {
            let mut word = [0u8; 8];
            memory.read(rate_at, &mut word)?;
            let rate = i64::from_le_bytes(word);
            if rate == 0 {
                return Ok((0, Vec::new(), 0, 0));
            }
            memory.read(mbuckets, &mut word)?;
            let read = heap_profile::read_buckets(memory, u64::from_le_bytes(word), MAX_BUCKETS)?;
            let sites = heap_profile::in_use_sites(&read.buckets, rate, MAX_FRAMES);
            Ok((rate, sites, read.buckets.len() as u64, read.cut))
        })();
        match result {
            Ok((0, ..)) => {
                process.sites.clear();
                process.status = GoHeapReport {
                    profile: "off".into(),
                    sample_rate: Some(0),
                    buckets: 0,
                    buckets_cut: 0,
                    note: "Go heap profile off in this binary (it does not import runtime/pprof); its heap growth: --mode growth".into(),
                };
            }
            Ok((rate, sites, buckets, cut)) => {
                let bytes: u64 = sites.iter().map(|s| s.bytes).sum();
                process.status = GoHeapReport {
                    profile: "read".into(),
                    sample_rate: Some(rate.unsigned_abs()),
                    buckets,
                    buckets_cut: cut,
                    note: format!(
                        "Go heap: {bytes} bytes in use at {} sites, from the runtime's profile ({buckets} buckets{}, one sample per {rate} bytes, as of the last collection)",
                        sites.len(),
                        if cut > 0 {
                            format!(", {cut} more not read")
                        } else {
                            String::new()
                        }
                    ),
                };
                process.sites = sites;
            }
            Err(err) => {
                process.sites.clear();
                process.status = unreadable(format!("Go heap profile not read: {err:#}"));
            }
        }
    }

    /// The pids attached.
    pub(super) fn pids(&self) -> Vec<u32> {
        self.processes.keys().copied().collect()
    }

    /// The sites read last, as totals of sites interned in `sites`.
    pub(super) fn totals(&self, sites: &mut CallSites) -> Vec<SiteTotal> {
        let mut totals = Vec::new();
        for (&pid, process) in &self.processes {
            for site in &process.sites {
                let (id, _) = sites.intern(pid, AllocFn::GoHeap, &site.stack, &[], 0);
                totals.push(SiteTotal {
                    site: id,
                    bytes: site.bytes,
                    count: site.objects,
                    oldest_age_ms: 0,
                });
            }
        }
        totals
    }

    /// What the report says of `pid`'s profile.
    pub(super) fn report(&self, pid: u32) -> Option<GoHeapReport> {
        self.processes.get(&pid).map(|p| p.status.clone())
    }

    pub(super) fn forget(&mut self, pid: u32) {
        self.processes.remove(&pid);
    }
}

fn unreadable(note: String) -> GoHeapReport {
    GoHeapReport {
        profile: "unreadable".into(),
        sample_rate: None,
        buckets: 0,
        buckets_cut: 0,
        note,
    }
}

/// A binary's profile globals and segments, or why they cannot be found.
fn locate(path: &Path) -> Located {
    let too_large = fs::metadata(path).map_err(|e| e.to_string())?.len() > MAX_OBJECT_BYTES;
    if too_large {
        return Err("the binary is larger than 1 GiB".into());
    }
    let data = fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let segments = Image::parse(data.clone())
        .ok_or("it is not an ELF file")?
        .segments
        .iter()
        .map(|s| (s.file_offset, s.file_size, s.address))
        .collect();
    Ok((heap_symbols::profile_symbols(data)?, segments))
}
