//! Prometheus text exposition (`/metrics` of `leaktrace serve`): what the
//! traced process holds, what the daemon saw and lost, and what the daemon
//! itself takes.
use std::fmt::Write as _;

use super::Report;

/// One metric family: help, type, then `name{labels} value` lines.
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

/// Escapes a label value (backslash, quote, newline).
fn label_value(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Renders the metrics of `report`; `daemon_rss_bytes` is leaktrace's own
/// resident memory.
pub fn render(report: &Report, daemon_rss_bytes: u64) -> String {
    let mut out = String::new();
    let per_process = |value: fn(&super::ProcessReport) -> u64| -> Vec<(String, u64)> {
        report
            .processes
            .iter()
            .map(|p| {
                (
                    format!("{{pid=\"{}\",comm=\"{}\"}}", p.pid, label_value(p.comm())),
                    value(p),
                )
            })
            .collect()
    };
    family(
        &mut out,
        "leaktrace_outstanding_bytes",
        "gauge",
        "Bytes allocated since attach and not freed (estimated when sampling).",
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

    #[test]
    fn exposes_outstanding_per_pid_losses_and_daemon_memory() {
        let text = super::render(&fixtures::report(), 12345);
        for line in [
            "# TYPE leaktrace_outstanding_bytes gauge",
            "leaktrace_outstanding_bytes{pid=\"42\",comm=\"prog\"} 4196",
            "leaktrace_outstanding_allocations{pid=\"42\",comm=\"prog\"} 5",
            "leaktrace_call_sites{pid=\"42\",comm=\"prog\"} 2",
            "leaktrace_events_total 20",
            "leaktrace_lost_events_total{reason=\"ring_buffer_full\"} 0",
            "leaktrace_sample_bytes 0",
            "leaktrace_daemon_resident_bytes 12345",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
