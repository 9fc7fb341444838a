//! Goroutines by creation site (`Report::goroutines`), read from each Go
//! process at every report: the text section, the page's table and the
//! `/metrics` series. A creation site is the `go` statement (function,
//! file, line) and the function it started; a site whose count only grew
//! across reads is flagged: the goroutine leak of a daemon whose
//! goroutines block forever. JSON carries the rows as they are.
use std::{collections::BTreeMap, fmt::Write as _};

use serde::Serialize;

use super::{Report, escape::escape, text::human_bytes};

/// Where code is: a function and, when known, its file and line.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CodeLocation {
    pub function: String,
    pub file: Option<String>,
    pub line: Option<u32>,
}

impl CodeLocation {
    /// "main.round (/src/leak.go:39)" or "main.round".
    pub fn label(&self) -> String {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => format!("{} ({file}:{line})", self.function),
            _ => self.function.clone(),
        }
    }
}

/// How a creation site's count moved across reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GoroutineGrowth {
    /// Change since the read before (0 at the first).
    pub since_previous: i64,
    /// Change since the first read (a site absent then started from 0).
    pub since_attach: i64,
    /// It rose at two reads at least and never fell: a leak.
    pub only_grows: bool,
}

/// The live goroutines of one creation site in one process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GoroutineSiteReport {
    pub pid: u32,
    /// The `go` statement (the runtime's "created by").
    pub created_at: CodeLocation,
    /// The function the goroutines run, at its declaration.
    pub start: CodeLocation,
    pub count: u64,
    /// Goroutines by what they do: their wait reason ("chan send",
    /// "select", "IO wait"...) or state ("running", "runnable",
    /// "syscall").
    pub wait_reasons: BTreeMap<String, u64>,
    /// Their stacks' sizes, summed.
    pub stack_bytes: u64,
    pub growth: GoroutineGrowth,
    /// The runtime's own goroutines (collector, scavenger, finalizers):
    /// listed after the program's.
    pub runtime_internal: bool,
}

/// How the goroutines of one Go process were read (or why not).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GoroutineReadReport {
    pub pid: u32,
    /// The release that built it ("go1.23.4"), when read.
    pub go_version: Option<String>,
    /// Where `runtime.g`'s layout came from: "dwarf" or "release table".
    pub layout: Option<String>,
    /// Reads made since attach.
    pub reads: u64,
    /// At the last read: `runtime.allglen`, live and dead goroutines.
    pub listed: u64,
    pub live: u64,
    pub dead: u64,
    /// Reads that failed and goroutines left out as torn (the process
    /// runs while it is read).
    pub failed_reads: u64,
    pub torn: u64,
    /// A cap (goroutines, bytes, time) stopped the read: counts partial.
    pub truncated: bool,
    /// Why its goroutines are not read, or what else a reader must know.
    pub note: Option<String>,
}

/// "+12" / "-3" / "0".
fn change(value: i64) -> String {
    if value > 0 {
        format!("+{value}")
    } else {
        value.to_string()
    }
}

/// "chan send 2000, running 1", most first.
fn reasons(reasons: &BTreeMap<String, u64>) -> String {
    let mut sorted: Vec<(&String, &u64)> = reasons.iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    sorted
        .iter()
        .map(|(reason, n)| format!("{reason} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The text report's section (nothing when no Go process was found).
pub(super) fn text(report: &Report, top: usize, out: &mut String) {
    if report.goroutines.is_empty() && report.goroutine_reads.is_empty() {
        return;
    }
    let several = report.spans_processes();
    let _ = writeln!(
        out,
        "\ngoroutines by creation site, most first; change since the previous read and since attach (LEAK: only grew):"
    );
    for read in &report.goroutine_reads {
        let mut line = format!("  pid {}: {} live goroutines", read.pid, read.live);
        if read.failed_reads + read.torn > 0 || read.truncated {
            let _ = write!(
                line,
                " ({} failed reads, {} torn{})",
                read.failed_reads,
                read.torn,
                if read.truncated { ", truncated" } else { "" }
            );
        }
        if let Some(note) = &read.note {
            let _ = write!(line, "; {note}");
        }
        let _ = writeln!(out, "{line}");
    }
    let user = report.goroutines.iter().filter(|s| !s.runtime_internal);
    for site in user.clone().take(top) {
        let _ = writeln!(
            out,
            "  {:>8} {:>7} {:>8} {:>10}{}  created at {}{}",
            site.count,
            change(site.growth.since_previous),
            change(site.growth.since_attach),
            human_bytes(site.stack_bytes),
            if site.growth.only_grows { "  LEAK" } else { "" },
            site.created_at.label(),
            if several {
                format!("  (pid {})", site.pid)
            } else {
                String::new()
            }
        );
        let _ = writeln!(
            out,
            "           runs {}; {}",
            site.start.label(),
            reasons(&site.wait_reasons)
        );
    }
    let shown = user.clone().count().min(top);
    if user.count() > shown {
        let _ = writeln!(
            out,
            "  ({} more creation sites not shown; --top changes how many)",
            report
                .goroutines
                .iter()
                .filter(|s| !s.runtime_internal)
                .count()
                - shown
        );
    }
    let internal: Vec<&GoroutineSiteReport> = report
        .goroutines
        .iter()
        .filter(|s| s.runtime_internal)
        .collect();
    if !internal.is_empty() {
        let _ = writeln!(
            out,
            "  runtime-internal: {} goroutines at {} sites",
            internal.iter().map(|s| s.count).sum::<u64>(),
            internal.len()
        );
    }
}

/// The page's section (nothing when no Go process was found).
pub(super) fn html(report: &Report, top: usize, out: &mut String) {
    if report.goroutines.is_empty() && report.goroutine_reads.is_empty() {
        return;
    }
    out.push_str("<h2>Goroutines by creation site</h2>\n");
    for read in report.goroutine_reads.iter().filter(|r| r.note.is_some()) {
        let _ = writeln!(
            out,
            "<p>pid {}: {}</p>",
            read.pid,
            escape(read.note.as_deref().unwrap_or_default())
        );
    }
    out.push_str("<table><tr><th>pid</th><th>goroutines</th><th>since previous</th><th>since attach</th><th>leak</th><th>created at</th><th>runs</th><th>waiting on</th><th>stack bytes</th></tr>\n");
    let ordered = report
        .goroutines
        .iter()
        .filter(|s| !s.runtime_internal)
        .chain(report.goroutines.iter().filter(|s| s.runtime_internal));
    for site in ordered.take(top) {
        let _ = writeln!(
            out,
            "<tr><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td>{}</td><td>{}{}</td><td>{}</td><td class=\"n\">{}</td></tr>",
            site.pid,
            site.count,
            change(site.growth.since_previous),
            change(site.growth.since_attach),
            if site.growth.only_grows {
                "only grows"
            } else {
                ""
            },
            escape(&site.created_at.label()),
            escape(&site.start.label()),
            if site.runtime_internal {
                " (runtime)"
            } else {
                ""
            },
            escape(&reasons(&site.wait_reasons)),
            site.stack_bytes
        );
    }
    out.push_str("</table>\n");
}

/// The `/metrics` samples: (labels without braces, count) for the `cap`
/// creation sites with most goroutines (the program's first), so that a
/// program making goroutines at ever new sites cannot flood Prometheus.
pub(super) fn metric_samples(
    report: &Report,
    cap: usize,
    label_value: fn(&str) -> String,
) -> Vec<(String, u64)> {
    let ordered = report
        .goroutines
        .iter()
        .filter(|s| !s.runtime_internal)
        .chain(report.goroutines.iter().filter(|s| s.runtime_internal));
    ordered
        .take(cap)
        .map(|site| {
            let line = |l: &CodeLocation| l.line.map_or_else(String::new, |n| n.to_string());
            (
                format!(
                    "{{pid=\"{}\",created_function=\"{}\",created_file=\"{}\",created_line=\"{}\",start_function=\"{}\",runtime_internal=\"{}\"}}",
                    site.pid,
                    label_value(&site.created_at.function),
                    label_value(site.created_at.file.as_deref().unwrap_or_default()),
                    line(&site.created_at),
                    label_value(&site.start.function),
                    site.runtime_internal
                ),
                site.count,
            )
        })
        .collect()
}

#[cfg(test)]
#[path = "goroutines_tests.rs"]
mod tests;
