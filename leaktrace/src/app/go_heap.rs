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
//! not use runtime/pprof), `runtime.MemProfileRate` reads 0: unless
//! `--go-heap-sampling off`, leaktrace writes a rate there while it traces
//! and 0 back at the end (`runtime::go::heap_sampling` says when and why);
//! the report then says the profile covers allocations since attach.
use std::{collections::HashMap, fs, path::Path, time::Instant};

use leaktrace_common::AllocFn;

use crate::{
    app::cli::GoHeapSampling,
    daemon::{aggregate::SiteTotal, sites::CallSites},
    report::GoHeapReport,
    runtime::{
        go::{
            detect::GoFound,
            heap_profile::{self, InUseSite},
            heap_sampling::SamplingSwitch,
            heap_symbols::{self, ProfileSymbols},
            image::Image,
        },
        python::code_object::{Memory as _, ProcessMemory},
    },
    target::{
        elf::load_bias,
        procfs::{Mapping, file_identity, write_word},
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
    /// Turns the runtime's sampling on where it is off (None: never).
    switch: Option<SamplingSwitch>,
    /// Why writing the rate failed, if it did.
    write_error: Option<String>,
    /// The sites read last (kept once it exits).
    sites: Vec<InUseSite>,
    status: GoHeapReport,
}

pub(super) struct GoHeap {
    /// Each binary file's globals, found once.
    located: HashMap<(u64, u64), Located>,
    processes: HashMap<u32, GoProcess>,
    sampling: GoHeapSampling,
    /// The clock of the sampling switches.
    epoch: Instant,
}

impl GoHeap {
    pub(super) fn new(sampling: GoHeapSampling) -> GoHeap {
        GoHeap {
            located: HashMap::new(),
            processes: HashMap::new(),
            sampling,
            epoch: Instant::now(),
        }
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

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
        let switch = match self.sampling {
            GoHeapSampling::Rate(rate) if addresses.is_ok() => {
                Some(SamplingSwitch::new(u64::from(rate), self.now_ns()))
            }
            _ => None,
        };
        self.processes.insert(
            pid,
            GoProcess {
                addresses,
                memory: ProcessMemory::open(pid).ok(),
                switch,
                write_error: None,
                sites: Vec::new(),
                status,
            },
        );
        self.check_rate(pid);
    }

    /// Between reports: reads the rate of each process attached lately,
    /// to turn sampling on right after its runtime turned it off (`run`
    /// attaches before the runtime starts).
    pub(super) fn watch(&mut self) {
        let now = self.now_ns();
        let watched: Vec<u32> = self
            .processes
            .iter()
            .filter(|(_, p)| p.switch.as_ref().is_some_and(|s| s.watching(now)))
            .map(|(&pid, _)| pid)
            .collect();
        for pid in watched {
            self.check_rate(pid);
        }
    }

    /// Reads `pid`'s rate and writes leaktrace's where the switch says so.
    fn check_rate(&mut self, pid: u32) {
        let Some(process) = self.processes.get_mut(&pid) else {
            return;
        };
        let (&Ok((_, rate_at)), Some(memory), Some(switch)) =
            (&process.addresses, &process.memory, &mut process.switch)
        else {
            return;
        };
        let mut word = [0u8; 8];
        if memory.read(rate_at, &mut word).is_err() {
            return;
        }
        if let Some(rate) = switch.observe(i64::from_le_bytes(word))
            && let Err(err) = write_word(pid, rate_at, rate)
        {
            process.write_error = Some(err.to_string());
            process.switch = None;
        }
    }

    /// At the end of tracing: 0 goes back into the rate of every live
    /// process where the value is still leaktrace's.
    fn restore(&mut self) {
        for (&pid, process) in &self.processes {
            let (&Ok((_, rate_at)), Some(memory), Some(switch)) =
                (&process.addresses, &process.memory, &process.switch)
            else {
                continue;
            };
            let mut word = [0u8; 8];
            if memory.read(rate_at, &mut word).is_ok() && switch.restore(i64::from_le_bytes(word)) {
                // Gone meanwhile: nothing to put back.
                let _: std::io::Result<()> = write_word(pid, rate_at, 0);
            }
        }
    }

    /// Reads `pid`'s profile again (nothing when it is not a Go process
    /// attached).
    pub(super) fn read(&mut self, pid: u32) {
        self.check_rate(pid);
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
                    note: off_note(process),
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
                        "Go heap: {bytes} bytes in use at {} sites, from the runtime's profile ({buckets} buckets{}, one sample per {rate} bytes, as of the last collection){}",
                        sites.len(),
                        if cut > 0 {
                            format!(", {cut} more not read")
                        } else {
                            String::new()
                        },
                        if process.switch.as_ref().is_some_and(|s| s.is_ours(rate)) {
                            "; the binary had it off: leaktrace turned the runtime's sampling on when it attached (allocations since then)"
                        } else {
                            ""
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

/// What the report says of a profile that reads off.
/// Whatever ends the tracer (the end of tracing, an error), except
/// leaktrace being killed: then the rate stays on, as in a program that
/// imports pprof (README, known limits).
impl Drop for GoHeap {
    fn drop(&mut self) {
        self.restore();
    }
}

fn off_note(process: &GoProcess) -> String {
    let why = "Go heap profile off in this binary (it does not import runtime/pprof)";
    match (&process.switch, &process.write_error) {
        (_, Some(err)) => format!("{why}; turning it on failed: {err}"),
        (Some(switch), None) if switch.refused() => {
            format!(
                "{why}; the program turned it off again each time leaktrace turned it on: left off"
            )
        }
        (Some(_), None) => format!("{why}; leaktrace is turning it on"),
        (None, None) => format!(
            "{why}; --go-heap-sampling turns it on while tracing; its heap growth: --mode growth"
        ),
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
