//! Prometheus text exposition (`/metrics` of `leaktrace serve`): what the
//! traced process holds, what the daemon saw and lost, and what the daemon
//! itself takes.
use std::fmt::Write as _;

use super::{ProcessReport, Report};

/// Goroutine creation sites exposed at most (one series each).
const MAX_GOROUTINE_SERIES: usize = 50;

/// One metric family: help, type, then `name{labels} value` lines.
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

/// Escapes a label value as the text format wants it: backslash, quote
/// and newline, the only three it escapes (any other UTF-8 is allowed).
/// Command lines and cgroup paths come from the traced host and may hold
/// all three.
fn label_value(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A process's labels: `pid`, `comm`, and where it runs: `cgroup` (its v2
/// path), `container_id` and `pod_uid`, empty when absent (Prometheus reads
/// an empty label as no label, and every series keeps one label set).
fn process_labels(process: &ProcessReport) -> String {
    let container = process.container.as_ref();
    format!(
        "{{pid=\"{}\",comm=\"{}\",cgroup=\"{}\",container_id=\"{}\",pod_uid=\"{}\"}}",
        process.pid,
        label_value(process.comm()),
        label_value(process.cgroup.as_deref().unwrap_or_default()),
        label_value(container.map_or("", |c| c.id.as_str())),
        label_value(container.and_then(|c| c.pod.as_deref()).unwrap_or_default()),
    )
}

/// Renders the metrics of `report`; `daemon_rss_bytes` is leaktrace's own
/// resident memory.
pub fn render(report: &Report, daemon_rss_bytes: u64) -> String {
    let mut out = String::new();
    let per_process = |value: fn(&super::ProcessReport) -> u64| -> Vec<(String, u64)> {
        report
            .processes
            .iter()
            .map(|p| (process_labels(p), value(p)))
            .collect()
    };
    family(
        &mut out,
        "leaktrace_mode",
        "gauge",
        "1 for what is measured: allocations (outstanding allocations) or growth (resident growth since attach, from page faults; the outstanding_* series then count bytes and pages grown and not given back).",
        &[(format!("{{mode=\"{}\"}}", label_value(&report.mode)), 1)],
    );
    family(
        &mut out,
        "leaktrace_outstanding_bytes",
        "gauge",
        "Bytes allocated since attach and not freed (estimated when sampling); in growth mode, bytes grown resident since attach and not given back.",
        &per_process(|p| p.bytes),
    );
    family(
        &mut out,
        "leaktrace_outstanding_allocations",
        "gauge",
        "Allocations made since attach and not freed (estimated when sampling).",
        &per_process(|p| p.count),
    );
    family(
        &mut out,
        "leaktrace_call_sites",
        "gauge",
        "Call sites holding outstanding memory.",
        &per_process(|p| p.call_sites),
    );
    family(
        &mut out,
        "leaktrace_c_library_bytes",
        "gauge",
        "What the C library holds for itself (thread stacks and their TLS, stdio buffers): not leaks, and not in leaktrace_outstanding_bytes.",
        &super::c_library::Kind::ALL
            .iter()
            .map(|&kind| {
                let bytes = report
                    .c_library
                    .iter()
                    .filter(|site| site.kind == kind)
                    .map(|site| site.site.bytes)
                    .sum();
                (format!("{{kind=\"{}\"}}", kind.name()), bytes)
            })
            .collect::<Vec<_>>(),
    );
    family(
        &mut out,
        "leaktrace_exited_processes_total",
        "counter",
        "Processes that exited under --all (their tables were dropped).",
        &[(String::new(), report.totals.exited_processes)],
    );
    let t = &report.totals;
    family(
        &mut out,
        "leaktrace_events_total",
        "counter",
        "Records received from the kernel.",
        &[(String::new(), t.events)],
    );
    family(
        &mut out,
        "leaktrace_allocations_total",
        "counter",
        "Allocating calls seen.",
        &[(String::new(), t.allocations)],
    );
    family(
        &mut out,
        "leaktrace_releases_total",
        "counter",
        "Releasing calls seen.",
        &[(String::new(), t.releases)],
    );
    let l = &report.losses;
    let reasons = [
        ("ring_buffer_full", l.ring_buffer_full),
        ("entry_slot_collision", l.entry_slot_collisions),
        ("stack_capture_failed", l.stack_capture_failed),
        ("return_without_entry", l.return_without_entry),
        ("sampled_map_full", l.sampled_map_full),
        ("table_full", l.table_full),
        ("decode_error", l.decode_errors),
        ("huge_page_check_skipped", l.huge_page_checks_skipped),
        ("abandoned_call", l.abandoned_calls),
    ];
    family(
        &mut out,
        "leaktrace_lost_events_total",
        "counter",
        "Events lost on the way, by reason.",
        &reasons
            .iter()
            .map(|(reason, n)| (format!("{{reason=\"{reason}\"}}"), *n))
            .collect::<Vec<_>>(),
    );
    family(
        &mut out,
        "leaktrace_goroutines",
        "gauge",
        "Live goroutines of a Go process by creation site (the go statement and the function it started), the program's sites first, at most 50.",
        &super::goroutines::metric_samples(report, MAX_GOROUTINE_SERIES, label_value),
    );
    family(
        &mut out,
        "leaktrace_overstated_bytes_max",
        "gauge",
        "Most bytes the outstanding figures may overstate: the largest blocks, one per release lost.",
        &[(String::new(), l.overstated_bytes_max)],
    );
    family(
        &mut out,
        "leaktrace_sample_bytes",
        "gauge",
        "Mean bytes between samples; 0 when every allocation is recorded.",
        &[(String::new(), report.sample_bytes)],
    );
    family(
        &mut out,
        "leaktrace_daemon_resident_bytes",
        "gauge",
        "Resident memory of the leaktrace daemon itself.",
        &[(String::new(), daemon_rss_bytes)],
    );
    out
}

/// This process's resident set size, from /proc/self/statm.
pub fn own_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

#[cfg(test)]
mod tests {
    use super::super::fixtures;

    const LABELS: &str = "{pid=\"42\",comm=\"prog\",cgroup=\"/user.slice/user-1000.slice/session-2.scope\",container_id=\"\",pod_uid=\"\"}";

    #[test]
    fn exposes_outstanding_per_pid_losses_and_daemon_memory() {
        let text = super::render(&fixtures::report(), 12345);
        for line in [
            "# TYPE leaktrace_outstanding_bytes gauge",
            &format!("leaktrace_outstanding_bytes{LABELS} 4196"),
            &format!("leaktrace_outstanding_allocations{LABELS} 5"),
            &format!("leaktrace_call_sites{LABELS} 2"),
            "leaktrace_events_total 20",
            "leaktrace_lost_events_total{reason=\"ring_buffer_full\"} 0",
            "leaktrace_sample_bytes 0",
            "leaktrace_daemon_resident_bytes 12345",
            "leaktrace_mode{mode=\"allocations\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    /// A container's id and pod uid are labels; a hostile cgroup path (a
    /// quote, a backslash, a newline, markup) stays inside its quotes, one
    /// sample a line.
    #[test]
    fn labels_say_where_a_process_runs_escaped() {
        let report = fixtures::report_in_containers();
        let text = super::render(&report, 0);
        assert!(
            text.lines().any(|l| l
                == format!(
                    "leaktrace_outstanding_bytes{{pid=\"42\",comm=\"prog\",cgroup=\"{}\",container_id=\"{}\",pod_uid=\"{}\"}} 4196",
                    fixtures::POD_CGROUP,
                    fixtures::CONTAINER_ID,
                    fixtures::POD_UID
                )),
            "{text}"
        );
        let hostile = text
            .lines()
            .find(|l| l.starts_with("leaktrace_outstanding_bytes{pid=\"43\""))
            .unwrap_or_else(|| panic!("no series for pid 43:\n{text}"));
        assert_eq!(
            hostile,
            format!(
                "leaktrace_outstanding_bytes{{pid=\"43\",comm=\"evil\",cgroup=\"/a\\\"b\\\\c\\nd<e>/docker-{}.scope\",container_id=\"{}\",pod_uid=\"\"}} 0",
                fixtures::CONTAINER_ID,
                fixtures::CONTAINER_ID
            )
        );
        // Every line is a comment or one whole sample.
        for line in text.lines() {
            assert!(
                line.starts_with('#') || line.starts_with("leaktrace_"),
                "{line:?} in\n{text}"
            );
        }
    }
}
