//! Text: a header with totals and losses, then the top call sites by
//! outstanding bytes, each with its stack one frame per line.
use std::fmt::Write as _;

use super::{ContainerReport, Report};
use crate::symbolize::Frame;

/// 1536 -> "1.5 KiB"; exact byte counts stay next to it in the header.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn human_age(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

fn frame_line(frame: &Frame) -> String {
    let mut line = frame.function.clone();
    if let Some(file) = &frame.file {
        let _ = write!(line, " at {file}");
        if let Some(n) = frame.line {
            let _ = write!(line, ":{n}");
        }
    } else {
        let _ = write!(line, " in {}", frame.module);
    }
    if frame.inlined {
        line.push_str(" [inlined]");
    }
    if frame.fallback {
        line.push_str(" [frame pointer]");
    }
    line
}

/// ", in pid 42 (python3)" when the report covers several processes.
fn whose(report: &Report, pid: u32) -> String {
    if report.spans_processes() {
        format!(", in {}", report.process_label(pid))
    } else {
        String::new()
    }
}

/// "+1.5 MiB" / "-4.0 KiB".
fn signed_bytes(bytes: i64) -> String {
    let sign = if bytes < 0 { "-" } else { "+" };
    format!("{sign}{}", human_bytes(bytes.unsigned_abs()))
}

/// ", 97%" of `rss` that `explained` accounts for (nothing when /proc saw
/// no growth).
fn share(explained: u64, rss: i64) -> String {
    if rss > 0 {
        format!(", {:.0}%", explained as f64 * 100.0 / rss as f64)
    } else {
        String::new()
    }
}

/// "containerd 605439acbd4f, pod ac04f3f2-... (Burstable)": the header line
/// of a report of one process.
fn container_line(container: &ContainerReport) -> String {
    let mut line = container.label();
    if let Some(pod) = &container.pod {
        let _ = write!(line, ", pod {pod}");
        if let Some(qos) = &container.qos {
            let _ = write!(line, " ({qos})");
        }
    }
    line
}

/// The text report. Names come from the traced process: each line is
/// made [`visible`](super::escape::visible) so that a symbol, file or
/// command line holding control characters (a terminal's escape sequences,
/// a newline) is shown, not obeyed by the terminal it is printed to.
pub fn render(report: &Report, top: usize) -> String {
    let out = render_lines(report, top);
    let mut shown = String::with_capacity(out.len());
    for line in out.lines() {
        shown.push_str(&super::escape::visible(line));
        shown.push('\n');
    }
    shown
}

fn render_lines(report: &Report, top: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "leaktrace {} report: {}, traced {}",
        report.kind(),
        report.target_label(),
        human_age(report.elapsed_ms)
    );
    if !report.spans_processes() {
        for process in &report.processes {
            if let Some(runtime) = &process.runtime {
                let _ = writeln!(out, "runtime: {}", runtime.label());
                if let Some(walks) = runtime.walks_summary() {
                    let _ = writeln!(out, "  {walks}");
                }
                if let Some(heap) = &runtime.go_heap {
                    let _ = writeln!(out, "  {}", heap.note);
                }
            }
            if let Some(container) = &process.container {
                let _ = writeln!(out, "container: {}", container_line(container));
            }
        }
    }
    let t = &report.totals;
    let growth = report.mode == "growth";
    let (what, units) = if growth {
        ("resident growth since attach", "pages")
    } else {
        ("outstanding", "allocations")
    };
    let _ = writeln!(
        out,
        "{what}: {} bytes ({}) in {} {units} at {} call sites{}",
        t.outstanding_bytes,
        human_bytes(t.outstanding_bytes),
        t.outstanding_allocations,
        t.call_sites,
        if report.min_age_ms > 0 {
            format!(", older than {}", human_age(report.min_age_ms))
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        out,
        "seen: {} events, {} allocations, {} releases, {} failed calls, {} releases of blocks from before tracing",
        t.events, t.allocations, t.releases, t.failed_calls, t.unmatched_releases
    );
    if growth {
        for process in &report.processes {
            if let Some(rss) = process.rss_growth_bytes {
                let _ = writeln!(
                    out,
                    "explained: {} of pid {}'s resident growth, {} by /proc (RssAnon){}",
                    human_bytes(process.bytes),
                    process.pid,
                    signed_bytes(rss),
                    share(process.bytes, rss)
                );
            }
        }
    }
    let _ = writeln!(out, "lost: {}", report.losses.summary());
    if let Some(overstatement) = report.losses.overstatement() {
        let _ = writeln!(out, "lost: {overstatement}");
    }
    for line in super::c_library::summary_lines(&report.c_library, human_bytes) {
        let _ = writeln!(out, "held by the C library, not counted above: {line}");
    }
    if report.page_sample > 1 {
        let _ = writeln!(
            out,
            "sampled: one page in {}, chosen by address; bytes and pages are estimates",
            report.page_sample
        );
    }
    if t.children_not_followed > 0 {
        let _ = writeln!(
            out,
            "not followed: {} child processes (the kernel's set of 4096 traced processes was full when they were forked)",
            t.children_not_followed
        );
    }
    if report.sample_bytes > 0 {
        let _ = writeln!(
            out,
            "sampled: one sample per {} allocated on average; bytes and counts are estimates (mapped regions are exact)",
            human_bytes(report.sample_bytes)
        );
    }
    if t.replaced_blocks > 0 || t.execs > 0 {
        let _ = writeln!(
            out,
            "note: {} blocks were reallocated at a live address (a missed release), {} exec calls dropped earlier blocks",
            t.replaced_blocks, t.execs
        );
    }
    if report.spans_processes() {
        let holding: Vec<_> = report.processes.iter().filter(|p| p.count > 0).collect();
        if holding.is_empty() {
            let _ = writeln!(
                out,
                "\nby process: none of the {} holds outstanding memory",
                report.processes.len()
            );
        } else {
            let _ = writeln!(
                out,
                "\nby process ({} of {} hold outstanding memory), most first:",
                holding.len(),
                report.processes.len()
            );
        }
        for process in holding.iter().take(top) {
            let _ = writeln!(
                out,
                "  pid {}: {} in {} allocations at {} call sites  {}{}{}{}{}",
                process.pid,
                human_bytes(process.bytes),
                process.count,
                process.call_sites,
                process.command,
                process
                    .parent
                    .map(|parent| format!(" (child of {parent})"))
                    .unwrap_or_default(),
                if process.exited { " (exited)" } else { "" },
                process
                    .container
                    .as_ref()
                    .map(|c| format!("  [{}]", c.label()))
                    .unwrap_or_default(),
                process
                    .runtime
                    .as_ref()
                    .map(|r| format!("  [{}]", r.label()))
                    .unwrap_or_default()
            );
        }
        // A Go heap profile that was not read: said once per process.
        for process in &report.processes {
            if let Some(heap) = process.runtime.as_ref().and_then(|r| r.go_heap.as_ref())
                && heap.profile != "read"
            {
                let _ = writeln!(out, "  pid {}: {}", process.pid, heap.note);
            }
        }
    }
    let mut growing: Vec<&super::SiteReport> = report
        .sites
        .iter()
        .filter(|s| {
            s.growth
                .is_some_and(|g| g.steady && g.bytes_per_second > 0.0)
        })
        .collect();
    if !growing.is_empty() {
        growing.sort_by(|a, b| {
            let rate = |s: &super::SiteReport| s.growth.map_or(0.0, |g| g.bytes_per_second);
            rate(b).total_cmp(&rate(a))
        });
        let _ = writeln!(
            out,
            "\ngrowing steadily (never went down: likely leaks), fastest first:"
        );
        for site in growing.iter().take(top) {
            let growth = site.growth.expect("filtered");
            let caller = site
                .frames
                .first()
                .map_or("[no stack]", |f| f.function.as_str());
            let _ = writeln!(
                out,
                "  +{}/s  {} ({} now, {} samples){}",
                human_bytes(growth.bytes_per_second as u64),
                caller,
                human_bytes(site.bytes),
                growth.samples,
                whose(report, site.pid)
            );
        }
    }
    super::by_type::text(report, top, &mut out);
    super::goroutines::text(report, top, &mut out);
    for (rank, site) in report.sites.iter().take(top).enumerate() {
        let _ = writeln!(
            out,
            "\n#{} {} bytes ({}) in {} {units} from {}, oldest {}{}",
            rank + 1,
            site.bytes,
            human_bytes(site.bytes),
            site.count,
            if growth {
                "page faults"
            } else {
                site.allocator.as_str()
            },
            human_age(site.oldest_age_ms),
            whose(report, site.pid)
        );
        if site.frames.is_empty() {
            let _ = writeln!(out, "    [no stack captured]");
        }
        for frame in &site.frames {
            let _ = writeln!(out, "    {}", frame_line(frame));
        }
    }
    if report.sites.len() > top {
        let _ = writeln!(
            out,
            "\n({} more call sites not shown; --top changes how many)",
            report.sites.len() - top
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::fixtures;
    use super::*;

    /// Lost releases leave blocks outstanding: the header says by how much
    /// the figures may be too high, right under the losses.
    #[test]
    fn lost_releases_say_how_much_the_figures_may_overstate() {
        let mut report = fixtures::report();
        assert!(!render(&report, 10).contains("overstated"));
        report.losses = crate::report::Losses {
            ring_buffer_full: 9,
            releases_lost: 7,
            overstated_bytes_max: 4096,
            ..Default::default()
        }
        .totalled();
        let text = render(&report, 10);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[3], "lost: 9 events lost (ring buffer full: 9)");
        assert_eq!(
            lines[4],
            "lost: figures may be overstated by up to 4096 bytes: 7 releases lost"
        );
    }

    #[test]
    fn header_sites_and_frames() {
        let text = render(&fixtures::report(), 10);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "leaktrace final report: pid 42 (./prog), traced 1.5 s"
        );
        assert_eq!(
            lines[1],
            "outstanding: 4196 bytes (4.1 KiB) in 5 allocations at 2 call sites"
        );
        assert_eq!(lines[3], "lost: 0 events lost");
        // The fixture's first site grew steadily at 1 KiB/s over 5 samples.
        assert_eq!(
            lines[5],
            "growing steadily (never went down: likely leaks), fastest first:"
        );
        assert_eq!(lines[6], "  +1.0 KiB/s  leak_a (4.0 KiB now, 5 samples)");
        assert_eq!(
            lines[8],
            "#1 4096 bytes (4.0 KiB) in 4 allocations from malloc, oldest 1.2 s"
        );
        assert_eq!(lines[9], "    leak_a at prog.c:10");
        assert_eq!(lines[10], "    main at prog.c:30");
        assert_eq!(
            lines[12],
            "#2 100 bytes (100 B) in 1 allocations from calloc, oldest 3 ms"
        );
        assert_eq!(lines[13], "    leak;b in /usr/bin/prog");
    }

    #[test]
    fn several_processes_are_listed_and_each_site_says_whose_it_is() {
        let mut report = fixtures::report();
        report.pids = vec![42, 7];
        report.command = None;
        report.processes[0].command = "/usr/bin/prog --serve".into();
        report.processes.push(super::super::ProcessReport {
            pid: 7,
            command: "idle".into(),
            exited: false,
            bytes: 0,
            count: 0,
            call_sites: 0,
            runtime: None,
            rss_growth_bytes: None,
            cgroup: None,
            container: None,
            parent: None,
        });
        let text = render(&report, 10);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "leaktrace final report: pid 42,7, traced 1.5 s");
        assert_eq!(
            lines[5],
            "by process (1 of 2 hold outstanding memory), most first:"
        );
        assert_eq!(
            lines[6],
            "  pid 42: 4.1 KiB in 5 allocations at 2 call sites  /usr/bin/prog --serve (exited)"
        );
        assert!(
            text.contains("\n#1 4096 bytes (4.0 KiB) in 4 allocations from malloc, oldest 1.2 s, in pid 42 (prog)\n"),
            "{text}"
        );
        // A child followed says whose.
        report.processes[0].parent = Some(7);
        assert!(
            render(&report, 10)
                .contains(" call sites  /usr/bin/prog --serve (child of 7) (exited)\n"),
            "{text}"
        );
        report.processes[0].parent = None;
        // Children left out are said, never silently missing.
        report.totals.children_not_followed = 2;
        assert!(
            render(&report, 10).contains("\nnot followed: 2 child processes (the kernel's set of 4096 traced processes was full when they were forked)\n"),
            "{text}"
        );
        report.totals.children_not_followed = 0;
        report.all_processes = true;
        report.totals.exited_processes = 3;
        assert!(render(&report, 10).starts_with(
            "leaktrace final report: all processes (2 traced, 3 exited), traced 1.5 s\n"
        ));
    }

    /// The container, 12 hex digits of its id, after the command in the
    /// "by process" lines; in the header, with its pod, for one process.
    #[test]
    fn the_container_is_in_the_process_line_or_the_header() {
        let report = fixtures::report_in_containers();
        let text = render(&report, 10);
        assert!(
            text.contains(
                "  pid 42: 4.1 KiB in 5 allocations at 2 call sites  ./prog (exited)  [containerd 605439acbd4f]\n"
            ),
            "{text}"
        );
        assert!(!text.contains("container: "), "{text}");
        let mut one = fixtures::report();
        one.processes[0].container = report.processes[0].container.clone();
        let text = render(&one, 10);
        assert_eq!(
            text.lines().nth(1),
            Some(
                "container: containerd 605439acbd4f, pod ac04f3f2-1f2c-11e9-b015-1ebee232acfa (Burstable)"
            ),
            "{text}"
        );
        one.processes[0].container.as_mut().unwrap().runtime = None;
        assert!(render(&one, 10).contains("\ncontainer: container 605439acbd4f, pod "));
    }

    #[test]
    fn the_runtime_found_is_in_the_header_or_the_process_line() {
        use crate::daemon::python_walks::PythonWalks;

        let python = |version: Option<&str>| {
            Some(super::super::RuntimeReport {
                kind: "python".into(),
                version: version.map(Into::into),
                object: "/opt/pyenv/versions/3.11.7/lib/libpython3.11.so.1.0".into(),
                walks: PythonWalks::default(),
                go_heap: None,
            })
        };
        let mut report = fixtures::report();
        report.processes[0].runtime = python(Some("3.11.7"));
        let text = render(&report, 10);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], "runtime: python 3.11.7 (libpython3.11.so.1.0)");
        assert!(lines[2].starts_with("outstanding: "), "{text}");
        // Once walks ran, what they found, under it.
        report.processes[0].runtime.as_mut().unwrap().walks = PythonWalks {
            walked: 95,
            no_thread_state: 4,
            unresolved: 1,
            read_failed: 0,
        };
        let text = render(&report, 10);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[2],
            "  Python frames walked at 95 of 100 recorded allocations; 4 on threads without a Python thread state, 1 unresolved, 0 failed reads"
        );
        report.processes[0].runtime = python(None);
        report.pids = vec![42, 7];
        let text = render(&report, 10);
        assert!(!text.contains("runtime: "), "{text}");
        assert!(
            text.contains(
                "  pid 42: 4.1 KiB in 5 allocations at 2 call sites  ./prog (exited)  [python, version unreadable (libpython3.11.so.1.0)]\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn top_limits_sites_and_says_so() {
        let text = render(&fixtures::report(), 1);
        assert!(!text.contains("#2"));
        assert!(text.ends_with("(1 more call sites not shown; --top changes how many)\n"));
    }

    /// Growth mode says what it measures, counts pages, and how much of the
    /// process's own resident growth its sites explain.
    #[test]
    fn growth_mode_says_resident_growth_and_the_share_explained() {
        let mut report = fixtures::report();
        report.mode = "growth".into();
        report.processes[0].rss_growth_bytes = Some(5000);
        let text = render(&report, 10);
        assert!(
            text.contains(
                "resident growth since attach: 4196 bytes (4.1 KiB) in 5 pages at 2 call sites"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "explained: 4.1 KiB of pid 42's resident growth, +4.9 KiB by /proc (RssAnon), 84%"
            ),
            "{text}"
        );
        assert!(
            text.contains("#1 4096 bytes (4.0 KiB) in 4 pages from page faults, oldest"),
            "{text}"
        );
    }
}
