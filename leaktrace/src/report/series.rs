//! The page's data (`/api/series`): bytes over time since attach per
//! process and per top call site, each site named by its innermost
//! meaningful frame, with the mode and the process list. The page draws it
//! and asks again at every refresh; everything in it that came from a
//! traced process (function names, files, commands, cgroups) is a JSON
//! string, encoded by serde, and the page only ever puts it in the DOM as
//! text.
use std::collections::{HashMap, hash_map::Entry};

use serde::Serialize;

use super::{ProcessReport, Report, SiteReport, Totals};
use crate::{
    daemon::{history::History, sites::SiteId},
    symbolize::FrameKind,
};

/// Processes drawn when none is picked (the largest).
const PROCESS_LINES: usize = 10;

/// Objects whose frames name no place in the program: the C library, the
/// loader, C++ and unwinding runtimes, and allocators. (An interpreter's
/// own library is not among them: where a site has no Python frames, its
/// C functions are the best name there is.)
const PLUMBING: [&str; 8] = [
    "libc.so",
    "libc-",
    "ld-linux",
    "libstdc++",
    "libgcc_s",
    "libjemalloc",
    "libtcmalloc",
    "libmimalloc",
];

/// The series document.
#[derive(Debug, Serialize)]
pub struct Series {
    /// "allocations" or "growth".
    pub mode: String,
    /// What the bytes are: "outstanding bytes" or "resident growth since
    /// attach".
    pub measure: &'static str,
    /// When tracing began, in milliseconds since the Unix epoch: `times`
    /// count from it.
    pub started_unix_ms: u64,
    /// How often the page asks again.
    pub refresh_ms: u64,
    /// The process picked, or null for all.
    pub pid: Option<u32>,
    /// Several processes may be traced (`--all`, or several pids): the
    /// page offers a picker.
    pub spans_processes: bool,
    /// "pid 42 (./prog)" or "all processes (12 traced, 3 exited)".
    pub target: String,
    pub processes: Vec<ProcessEntry>,
    /// Seconds since attach of each point, oldest first; the last is now.
    pub times: Vec<f64>,
    /// The picked process, or the largest ones.
    pub process_series: Vec<Line>,
    /// The top sites of the picked process (or of all), largest first.
    pub site_series: Vec<Line>,
    /// The picked process's totals (or everyone's).
    pub outstanding_bytes: u64,
    pub outstanding_allocations: u64,
    pub call_sites: u64,
    pub losses: String,
}

/// A traced process, for the picker.
#[derive(Debug, Serialize)]
pub struct ProcessEntry {
    pub pid: u32,
    /// The program's file name.
    pub comm: String,
    pub command: String,
    pub bytes: u64,
    pub exited: bool,
    /// "docker 9ec39b91f3d7", or null.
    pub container: Option<String>,
}

/// One series: bytes at each of `times` (null: not recorded then).
#[derive(Debug, Serialize)]
pub struct Line {
    pub pid: u32,
    /// A site's innermost meaningful frame, or a process's "pid (comm)".
    pub label: String,
    /// A site's frames, innermost first (empty for a process).
    pub stack: Vec<String>,
    /// Bytes now.
    pub bytes: u64,
    pub values: Vec<Option<u64>>,
}

/// What the series are made of.
pub struct SeriesInput<'a> {
    pub report: &'a Report,
    pub history: &'a History,
    pub pid: Option<u32>,
    /// Sites drawn.
    pub top: usize,
    pub started_unix_ms: u64,
    pub refresh_ms: u64,
}

/// Builds the series: each recorded instant, and now (the report's own
/// figures, so the last point is always fresh, even for a line the history
/// keeps no series of). When the history's last instant is this report's
/// (the page's own requests record one), the report's figures stand there.
pub fn build(input: &SeriesInput<'_>) -> Series {
    let report = input.report;
    let history = input.history;
    let now = report.elapsed_ms as f64 / 1000.0;
    let mut times = history.times().to_vec();
    let last_is_now = times.last().is_some_and(|&last| now <= last + 0.01);
    if !last_is_now {
        times.push(now);
    }
    let line = |recorded: Option<Vec<Option<u64>>>, bytes: u64| {
        let mut values = recorded.unwrap_or_else(|| vec![None; history.times().len()]);
        if last_is_now {
            values.pop();
        }
        values.push(Some(bytes));
        values
    };
    let picked = |pid: u32| input.pid.is_none_or(|p| p == pid);
    let process_series = report
        .processes
        .iter()
        .filter(|p| picked(p.pid))
        .take(if input.pid.is_some() {
            1
        } else {
            PROCESS_LINES
        })
        .map(|p| Line {
            pid: p.pid,
            label: report.process_label(p.pid),
            stack: Vec::new(),
            bytes: p.bytes,
            values: line(history.process(p.pid), p.bytes),
        })
        .collect();
    let view = for_pid(report, input.pid);
    let site_series = named_sites(&view.sites)
        .into_iter()
        .take(input.top)
        .map(|named| {
            let mut stack: Vec<String> = named.largest.frames.iter().map(frame_text).collect();
            if named.others > 0 {
                stack.push(format!("(and {} other stacks at this frame)", named.others));
            }
            Line {
                pid: named.largest.pid,
                label: if report.spans_processes() && input.pid.is_none() {
                    format!("{}: {}", named.largest.pid, named.label)
                } else {
                    named.label
                },
                stack,
                bytes: named.bytes,
                values: line(history.sites(&named.ids), named.bytes),
            }
        })
        .collect();
    Series {
        mode: report.mode.clone(),
        measure: if report.mode == "growth" {
            "resident growth since attach"
        } else {
            "outstanding bytes"
        },
        started_unix_ms: input.started_unix_ms,
        refresh_ms: input.refresh_ms,
        pid: input.pid,
        spans_processes: report.spans_processes(),
        target: report.target_label(),
        processes: report.processes.iter().map(process_entry).collect(),
        times,
        process_series,
        site_series,
        outstanding_bytes: view.totals.outstanding_bytes,
        outstanding_allocations: view.totals.outstanding_allocations,
        call_sites: view.totals.call_sites,
        losses: report.losses.summary(),
    }
}

/// Sites under one name on the page.
struct Named<'r> {
    label: String,
    /// The largest of them: its stack is shown.
    largest: &'r SiteReport,
    /// Sites merged into it besides the largest.
    others: usize,
    bytes: u64,
    ids: Vec<SiteId>,
}

/// Sites grouped by their process and what the page calls them (one
/// Python line reached through several native paths, one function seen
/// through several stacks, are one line on a chart), largest first.
fn named_sites(sites: &[SiteReport]) -> Vec<Named<'_>> {
    let mut named: Vec<Named<'_>> = Vec::new();
    let mut index: HashMap<(u32, String), usize> = HashMap::new();
    for site in sites {
        let label = site_label(site);
        match index.entry((site.pid, label.clone())) {
            Entry::Occupied(at) => {
                let into = &mut named[*at.get()];
                into.others += 1;
                into.bytes += site.bytes;
                into.ids.extend(&site.ids);
            }
            Entry::Vacant(slot) => {
                slot.insert(named.len());
                named.push(Named {
                    label,
                    largest: site,
                    others: 0,
                    bytes: site.bytes,
                    ids: site.ids.clone(),
                });
            }
        }
    }
    named.sort_by_key(|n| std::cmp::Reverse(n.bytes));
    named
}

fn process_entry(process: &ProcessReport) -> ProcessEntry {
    ProcessEntry {
        pid: process.pid,
        comm: process.comm().to_string(),
        command: process.command.clone(),
        bytes: process.bytes,
        exited: process.exited,
        container: process
            .container
            .as_ref()
            .map(super::ContainerReport::label),
    }
}

/// What a report says of each site, for the history: a site merged from
/// several (Python lines) counts under its first id, so that the sum over
/// its ids, which is what the page draws, is its bytes.
pub fn site_bytes(report: &Report) -> Vec<crate::daemon::history::SiteBytes> {
    report
        .sites
        .iter()
        .filter_map(|site| {
            Some(crate::daemon::history::SiteBytes {
                site: *site.ids.first()?,
                pid: site.pid,
                bytes: site.bytes,
            })
        })
        .collect()
}

/// `report` as seen from one process: its sites only, totals over them,
/// and headers that name it (the processes list stays whole, for the
/// picker); the report itself without a pid.
pub fn for_pid(report: &Report, pid: Option<u32>) -> std::borrow::Cow<'_, Report> {
    let Some(pid) = pid else {
        return std::borrow::Cow::Borrowed(report);
    };
    let sites: Vec<SiteReport> = report
        .sites
        .iter()
        .filter(|s| s.pid == pid)
        .cloned()
        .collect();
    std::borrow::Cow::Owned(Report {
        totals: Totals {
            outstanding_bytes: sites.iter().map(|s| s.bytes).sum(),
            outstanding_allocations: sites.iter().map(|s| s.count).sum(),
            call_sites: sites.len() as u64,
            ..report.totals.clone()
        },
        sites,
        pids: vec![pid],
        all_processes: false,
        command: None,
        python_types: report
            .python_types
            .iter()
            .filter(|t| t.pid == pid)
            .cloned()
            .collect(),
        goroutines: report
            .goroutines
            .iter()
            .filter(|s| s.pid == pid)
            .cloned()
            .collect(),
        goroutine_reads: report
            .goroutine_reads
            .iter()
            .filter(|r| r.pid == pid)
            .cloned()
            .collect(),
        ..report.clone()
    })
}

/// A frame as the page's tooltips show it: `function (file:line)`.
fn frame_text(frame: &crate::symbolize::Frame) -> String {
    match (&frame.file, frame.line) {
        (Some(file), Some(line)) => format!("{} ({file}:{line})", frame.function),
        _ => format!("{} in {}", frame.function, file_name(&frame.module)),
    }
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// What a site is called on the page: its innermost Python frame when it
/// has Python frames (`handle (views.py:42)`), else its innermost frame
/// outside the C library, the allocators and the like
/// (`grow_cache (slow_leak.c:12)`, or an interpreter's own C function),
/// else its innermost frame, else its allocator.
pub fn site_label(site: &SiteReport) -> String {
    let python = site.frames.iter().find(|f| f.kind == FrameKind::Python);
    let native = || {
        site.frames.iter().find(|f| {
            let object = file_name(&f.module);
            !PLUMBING.iter().any(|p| object.starts_with(p))
        })
    };
    let Some(frame) = python.or_else(native).or(site.frames.first()) else {
        return site.allocator.clone();
    };
    match (&frame.file, frame.line) {
        (Some(file), Some(line)) => format!("{} ({}:{line})", frame.function, file_name(file)),
        _ => frame.function.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{self, frame};
    use super::*;
    use crate::daemon::history::SiteBytes;

    fn in_object(mut f: crate::symbolize::Frame, module: &str) -> crate::symbolize::Frame {
        f.module = module.into();
        f
    }

    #[test]
    fn a_site_is_named_by_its_innermost_meaningful_frame() {
        let mut site = fixtures::report().sites[0].clone();
        assert_eq!(site_label(&site), "leak_a (prog.c:10)");
        // Growth mode's memset in libc, the allocator's own frames: passed.
        site.frames.insert(
            0,
            in_object(
                frame("__memset_avx2_unaligned_erms", None, None),
                "/usr/lib/x86_64-linux-gnu/libc.so.6",
            ),
        );
        site.frames.insert(
            0,
            in_object(frame("je_malloc", None, None), "/usr/lib/libjemalloc.so.2"),
        );
        assert_eq!(site_label(&site), "leak_a (prog.c:10)");
        // A Python frame names the place, with its file's name.
        let mut python = frame("handle", Some("/srv/app/views.py"), Some(42));
        python.kind = FrameKind::Python;
        site.frames.insert(3, python);
        assert_eq!(site_label(&site), "handle (views.py:42)");
        // Only plumbing: the innermost frame; no frames: the allocator.
        site.frames.truncate(2);
        assert_eq!(site_label(&site), "je_malloc");
        site.frames.clear();
        assert_eq!(site_label(&site), "malloc");
    }

    #[test]
    fn series_of_processes_and_sites_end_now() {
        let report = fixtures::report_in_containers();
        let mut history = History::default();
        let at = |site, bytes| SiteBytes {
            site,
            pid: 42,
            bytes,
        };
        history.record(0.5, &[at(0, 1024), at(1, 100)]);
        history.record(1.0, &[at(0, 2048), at(1, 100)]);
        let input = SeriesInput {
            report: &report,
            history: &history,
            pid: None,
            top: 10,
            started_unix_ms: 1_700_000_000_000,
            refresh_ms: 5000,
        };
        let series = build(&input);
        assert_eq!(series.times, [0.5, 1.0, 1.5]);
        assert!(series.spans_processes);
        assert_eq!(series.processes.len(), 2);
        assert_eq!(
            series.processes[0].container.as_deref(),
            Some("containerd 605439acbd4f")
        );
        let lines: Vec<(&str, &[Option<u64>])> = series
            .process_series
            .iter()
            .map(|l| (l.label.as_str(), l.values.as_slice()))
            .collect();
        assert_eq!(
            lines,
            [
                ("pid 42 (prog)", &[Some(1124), Some(2148), Some(4196)][..]),
                ("pid 43 (evil)", &[None, None, Some(0)][..])
            ]
        );
        let site = &series.site_series[0];
        assert_eq!(site.label, "42: leak_a (prog.c:10)");
        assert_eq!(site.values, [Some(1024), Some(2048), Some(4096)]);
        assert_eq!(site.stack, ["leak_a (prog.c:10)", "main (prog.c:30)"]);
        assert_eq!(series.site_series[1].label, "42: leak;b");

        // The page's own report recorded: it is the last instant.
        let mut recorded = history_of(&report);
        let series = build(&SeriesInput {
            history: &recorded,
            ..input
        });
        assert_eq!(series.times, [1.5]);
        assert_eq!(series.site_series[0].values, [Some(4096)]);
        recorded.record(2.0, &[]);
        assert_eq!(
            build(&SeriesInput {
                history: &recorded,
                ..input
            })
            .times,
            [1.5, 2.0],
            "a report not newer than the history's last instant is drawn there"
        );

        // One process picked: its line, its sites, its totals.
        let series = build(&SeriesInput {
            pid: Some(43),
            ..input
        });
        assert_eq!(series.process_series.len(), 1);
        assert!(series.site_series.is_empty());
        assert_eq!(series.outstanding_bytes, 0);
        assert_eq!(series.processes.len(), 2, "the picker keeps everyone");

        // Two sites named alike are one line: summed, the largest's stack.
        let mut report = report.clone();
        let mut twin = report.sites[0].clone();
        twin.bytes = 10;
        twin.frames[1].line = Some(99);
        twin.ids = vec![2];
        report.sites.push(twin);
        history.record(1.2, &[at(0, 2048), at(1, 100), at(2, 7)]);
        let series = build(&SeriesInput {
            report: &report,
            history: &history,
            pid: None,
            top: 10,
            started_unix_ms: 0,
            refresh_ms: 5000,
        });
        let site = &series.site_series[0];
        assert_eq!(series.site_series.len(), 2);
        assert_eq!(site.bytes, 4106);
        assert_eq!(
            site.values,
            [Some(1024), Some(2048), Some(2055), Some(4106)]
        );
        assert_eq!(
            site.stack,
            [
                "leak_a (prog.c:10)",
                "main (prog.c:30)",
                "(and 1 other stacks at this frame)"
            ]
        );
    }

    fn history_of(report: &Report) -> History {
        let mut history = History::default();
        history.record(report.elapsed_ms as f64 / 1000.0, &site_bytes(report));
        history
    }

    /// A hostile name stays a JSON string: quotes, backslashes, control
    /// characters and `</script>` encoded, nothing else in the document
    /// changes shape.
    #[test]
    fn hostile_names_are_json_strings() {
        let report = fixtures::report_with_markup();
        let series = build(&SeriesInput {
            report: &report,
            history: &History::default(),
            pid: None,
            top: 10,
            started_unix_ms: 0,
            refresh_ms: 5000,
        });
        let text = serde_json::to_string(&series).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            value["site_series"][0]["label"],
            format!("{} (prog.c:10)", fixtures::MARKUP)
        );
        assert!(
            text.contains(r#"leak<script>alert(1)</script>&\"'"#),
            "{text}"
        );
    }
}
