//! The page `leaktrace serve` shows at `/`: the report's header, the top
//! call sites with their stacks, and the flamegraph of outstanding bytes.
use std::fmt::Write as _;

use super::{ProcessReport, Report, escape::escape, svg, text::human_bytes};

/// A process's container cell: its runtime and short id, its pod and the
/// pod's class below, and its cgroup path in the tooltip ("-" outside any
/// container). The path comes from the traced host: escaped like the rest.
fn container_cell(process: &ProcessReport) -> String {
    let title = process
        .cgroup
        .as_deref()
        .map(|cgroup| format!(" title=\"{}\"", escape(cgroup)))
        .unwrap_or_default();
    let Some(container) = &process.container else {
        return format!("<td{title}>-</td>");
    };
    let pod = match (&container.pod, &container.qos) {
        (Some(pod), Some(qos)) => format!("<br>pod {} ({})", escape(pod), escape(qos)),
        (Some(pod), None) => format!("<br>pod {}", escape(pod)),
        _ => String::new(),
    };
    format!("<td{title}>{}{pod}</td>", escape(&container.label()))
}

pub fn render(report: &Report, top: usize) -> String {
    let mut out = String::from(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>leaktrace</title>\
         <style>body{font-family:sans-serif;margin:1em}td,th{padding:2px 8px;text-align:left;vertical-align:top}\
         td.n{text-align:right}pre{margin:0}</style></head><body>\n",
    );
    let _ = writeln!(
        out,
        "<h1>leaktrace: {}</h1>",
        escape(&report.target_label())
    );
    if !report.spans_processes() {
        for process in report.processes.iter().filter(|p| p.container.is_some()) {
            let _ = writeln!(
                out,
                "<table><tr><th>container</th>{}</tr></table>",
                container_cell(process)
            );
        }
    }
    let t = &report.totals;
    let _ = writeln!(
        out,
        "<p>{} ({} bytes) outstanding in {} allocations at {} call sites; traced {} s; {}{}</p>",
        human_bytes(t.outstanding_bytes),
        t.outstanding_bytes,
        t.outstanding_allocations,
        t.call_sites,
        report.elapsed_ms / 1000,
        escape(&report.losses.summary()),
        if report.sample_bytes > 0 {
            format!(
                "; sampled every {} on average, figures are estimates",
                human_bytes(report.sample_bytes)
            )
        } else {
            String::new()
        }
    );
    if report.spans_processes() {
        out.push_str("<h2>Processes</h2>\n<table><tr><th>pid</th><th>bytes</th><th>allocations</th><th>call sites</th><th>container</th><th>command</th></tr>\n");
        for process in report.processes.iter().take(top) {
            let _ = writeln!(
                out,
                "<tr><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>{}<td>{}{}{}{}</td></tr>",
                process.pid,
                process.bytes,
                process.count,
                process.call_sites,
                container_cell(process),
                escape(&process.command),
                process
                    .parent
                    .map(|parent| format!(" (child of {parent})"))
                    .unwrap_or_default(),
                if process.exited { " (exited)" } else { "" },
                process
                    .runtime
                    .as_ref()
                    .map(|r| format!(" [{}]", escape(&r.label())))
                    .unwrap_or_default()
            );
        }
        out.push_str("</table>\n");
    }
    out.push_str("<h2>Top call sites</h2>\n<table><tr><th>bytes</th><th>allocations</th><th>oldest</th><th>growth</th><th>allocator</th><th>stack (innermost first)</th></tr>\n");
    for site in report.sites.iter().take(top) {
        let stack: Vec<String> = site
            .frames
            .iter()
            .map(|f| {
                let location = match (&f.file, f.line) {
                    (Some(file), Some(line)) => format!(" ({file}:{line})"),
                    _ => String::new(),
                };
                escape(&format!("{}{location}", f.function))
            })
            .collect();
        let _ = writeln!(
            out,
            "<tr><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{} ms</td><td>{}</td><td>{}</td><td><pre>{}</pre></td></tr>",
            site.bytes,
            site.count,
            site.oldest_age_ms,
            match site.growth {
                Some(g) if g.steady =>
                    format!("+{}/s, steady", human_bytes(g.bytes_per_second as u64)),
                Some(g) => format!("{:+.0} B/s, varies", g.bytes_per_second),
                None => "-".into(),
            },
            escape(&site.allocator),
            stack.join("\n")
        );
    }
    out.push_str("</table>\n");
    super::by_type::html(report, top, &mut out);
    out.push_str("<h2>Flamegraph of outstanding bytes</h2>\n");
    // inferno's SVG, inline (without its XML declaration).
    let flamegraph = svg::render(report);
    let start = flamegraph.find("<svg").unwrap_or(0);
    out.push_str(&flamegraph[start..]);
    out.push_str("\n<p><a href=\"/debug/pprof/heap\">/debug/pprof/heap</a> · <a href=\"/metrics\">/metrics</a></p></body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::super::fixtures;

    #[test]
    fn shows_sites_stacks_and_an_inline_flamegraph() {
        let html = super::render(&fixtures::report(), 10);
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(
            html.contains("<td class=\"n\">4096</td><td class=\"n\">4</td>"),
            "{html}"
        );
        assert!(
            html.contains("leak_a (prog.c:10)\nmain (prog.c:30)"),
            "{html}"
        );
        // Escaped, never raw: the fixture has a frame named "leak;b".
        assert!(html.contains("<svg"));
        assert!(!html.contains("<?xml"));
        assert!(super::escape("a<b>&\"") == "a&lt;b&gt;&amp;&quot;");
    }

    /// A function name carrying markup is shown as text, in the stack
    /// column and in the inline flamegraph, and never as markup: no raw
    /// `<script>` anywhere, and no bare `&` or `"` from it.
    #[test]
    fn markup_in_a_function_name_is_escaped() {
        let html = super::render(&fixtures::report_with_markup(), 10);
        // The stack column: `<`, `>`, `&`, `"` and `'` as entities.
        let escaped = "leak&lt;script&gt;alert(1)&lt;/script&gt;&amp;&quot;&#39;";
        assert!(
            html.contains(&format!(
                "<pre>{escaped} (prog.c:10)\nmain (prog.c:30)</pre>"
            )),
            "{html}"
        );
        // inferno's own script (zoom, search) is the only one.
        let plain = super::render(&fixtures::report(), 10);
        for tag in ["<script", "</script"] {
            assert_eq!(
                html.matches(tag).count(),
                plain.matches(tag).count(),
                "the name added a raw {tag}:\n{html}"
            );
        }
        assert!(!html.contains("leak<"), "raw markup in the page:\n{html}");
        assert!(
            !html.contains("&\"'"),
            "unescaped & or \" in the page:\n{html}"
        );
        // The flamegraph inside the page names the frame too, escaped.
        let svg = &html[html.find("<svg").expect("inline svg")..];
        assert!(
            svg.contains("leak&lt;script&gt;alert(1)&lt;/script&gt;&amp;"),
            "{svg}"
        );
    }

    /// The processes table has a container column: runtime, short id, pod
    /// and its class, the cgroup path as its tooltip, escaped (the path
    /// holds a quote, a backslash, a newline and markup).
    #[test]
    fn the_container_column_is_escaped() {
        let html = super::render(&fixtures::report_in_containers(), 10);
        assert!(
            html.contains("<th>container</th><th>command</th>"),
            "{html}"
        );
        assert!(
            html.contains(&format!(
                "<td title=\"{}\">containerd 605439acbd4f<br>pod {} (Burstable)</td><td>./prog",
                fixtures::POD_CGROUP,
                fixtures::POD_UID
            )),
            "{html}"
        );
        assert!(
            html.contains(&format!(
                "<td title=\"/a&quot;b\\c\nd&lt;e&gt;/docker-{}.scope\">docker 605439acbd4f</td><td>evil",
                fixtures::CONTAINER_ID
            )),
            "{html}"
        );
        assert!(!html.contains("<e>"), "{html}");
        // Outside any container: a dash, the cgroup in the tooltip.
        let mut report = fixtures::report_in_containers();
        report.processes[1].container = None;
        let html = super::render(&report, 10);
        assert!(
            html.contains(&format!(
                "docker-{}.scope\">-</td><td>evil",
                fixtures::CONTAINER_ID
            )),
            "{html}"
        );
        // One process: the container above the totals.
        let mut one = fixtures::report();
        one.processes[0].container = fixtures::report_in_containers().processes[0]
            .container
            .clone();
        let html = super::render(&one, 10);
        assert!(
            html.contains("<table><tr><th>container</th><td title=\"/user.slice/user-1000.slice/session-2.scope\">containerd 605439acbd4f<br>pod "),
            "{html}"
        );
    }
}
