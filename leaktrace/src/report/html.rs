//! The page `leaktrace serve` shows at `/`, meant to be kept open: charts
//! of bytes over time per process and per top call site (drawn by the
//! page's script with uPlot from `/api/series`), a process picker, the
//! report's tables, and the flamegraph, all refreshed in place. Every name
//! in it comes from a traced process and is escaped here; the script only
//! ever adds text.
use std::fmt::Write as _;

use super::{ProcessReport, Report, escape::escape, text::human_bytes};

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

/// What the page is asked for beyond the report.
#[derive(Clone, Copy, Debug)]
pub struct PageOptions {
    /// Sites in the tables and the chart.
    pub top: usize,
    /// The process picked (`?pid=`), or None for all.
    pub pid: Option<u32>,
    /// How often the page asks for new data.
    pub refresh_ms: u64,
}

/// The page at `/`: the shell the page's script (`/assets/page.js`) draws
/// into (charts of bytes over time from `/api/series`, refreshed), the
/// process picker, the report's tables as they are now (refreshed from
/// `/fragment`), and the flamegraph (`/flamegraph.svg`, in an object of its
/// own so that inferno's script keeps to its own document), full width.
/// Nothing here is inline script: the page's policy allows none.
pub fn page(report: &Report, options: &PageOptions) -> String {
    let pid = options.pid.map(|p| p.to_string()).unwrap_or_default();
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>leaktrace: {target}</title>\n\
         <link rel=\"stylesheet\" href=\"{uplot_css}\"><link rel=\"stylesheet\" href=\"{page_css}\">\n\
         <script src=\"{uplot_js}\" defer></script><script src=\"{page_js}\" defer></script>\n\
         </head><body data-refresh-ms=\"{refresh}\" data-pid=\"{pid}\">\n\
         <header><h1>leaktrace: {target}</h1>\n",
        target = escape(&report.target_label()),
        uplot_css = super::assets::UPLOT_CSS.path,
        page_css = super::assets::PAGE_CSS.path,
        uplot_js = super::assets::UPLOT_JS.path,
        page_js = super::assets::PAGE_JS.path,
        refresh = options.refresh_ms,
    );
    if report.spans_processes() {
        out.push_str(&picker(report, options.pid));
    }
    let _ = writeln!(
        out,
        "<label><input type=\"checkbox\" id=\"live\" checked> refresh every {} s</label> \
         <span id=\"status\"></span></header>",
        options.refresh_ms as f64 / 1000.0
    );
    let measure = if report.mode == "growth" {
        "Resident growth since attach"
    } else {
        "Outstanding bytes"
    };
    let _ = writeln!(
        out,
        "<h2>{measure} over time</h2>\n\
         <div class=\"charts\"><section><h3>Processes</h3><div id=\"processes-chart\" class=\"chart\"></div></section>\n\
         <section><h3>Top call sites</h3><div id=\"sites-chart\" class=\"chart\"></div></section></div>\n\
         <table id=\"latest\"><thead><tr><th></th><th>call site</th><th>now</th><th>since the first point</th><th>stack (innermost first)</th></tr></thead><tbody></tbody></table>\n\
         <noscript><p>The charts need JavaScript; the tables below are as of this page's load.</p></noscript>"
    );
    let _ = writeln!(
        out,
        "<div id=\"report\">{}</div>",
        fragment(report, options.top, options.pid)
    );
    let _ = writeln!(
        out,
        "<h2>Flamegraph of {}</h2>\n\
         <object id=\"flamegraph\" type=\"image/svg+xml\" data=\"/flamegraph.svg?pid={pid}\"></object>\n\
         <p><a href=\"/debug/pprof/heap\">/debug/pprof/heap</a> · <a href=\"/metrics\">/metrics</a> · \
         <a href=\"/api/series?pid={pid}\">/api/series</a></p></body></html>",
        measure.to_lowercase()
    );
    out
}

/// The process picker: every traced process, the picked one selected.
/// Commands come from the traced host: escaped.
fn picker(report: &Report, pid: Option<u32>) -> String {
    let mut out = String::from("<label>process <select id=\"pid\"><option value=\"\">all</option>");
    for process in &report.processes {
        let _ = write!(
            out,
            "<option value=\"{0}\"{1}>{0} {2} ({3})</option>",
            process.pid,
            if pid == Some(process.pid) {
                " selected"
            } else {
                ""
            },
            escape(process.comm()),
            human_bytes(process.bytes)
        );
    }
    out.push_str("</select></label>\n");
    out
}

/// The report's tables as they are now, for one process or all: the
/// totals, the processes (each a link that picks it), the top call sites
/// with their stacks, the by-type view. The page shows it at `/` and
/// replaces it with a fresh one (`/fragment`) at each refresh.
pub fn fragment(report: &Report, top: usize, pid: Option<u32>) -> String {
    let view = super::series::for_pid(report, pid);
    let mut out = String::new();
    if !report.spans_processes() {
        for process in report.processes.iter().filter(|p| p.container.is_some()) {
            let _ = writeln!(
                out,
                "<table><tr><th>container</th>{}</tr></table>",
                container_cell(process)
            );
        }
    }
    let t = &view.totals;
    let _ = writeln!(
        out,
        "<p id=\"totals\">{}{} ({} bytes) {} in {} allocations at {} call sites; traced {} s; {}{}</p>",
        pid.map(|p| format!("pid {p}: ")).unwrap_or_default(),
        human_bytes(t.outstanding_bytes),
        t.outstanding_bytes,
        if report.mode == "growth" {
            "resident growth since attach"
        } else {
            "outstanding"
        },
        t.outstanding_allocations,
        t.call_sites,
        report.elapsed_ms / 1000,
        escape(&match report.losses.overstatement() {
            Some(overstatement) => format!("{}; {overstatement}", report.losses.summary()),
            None => report.losses.summary(),
        }),
        if report.sample_bytes > 0 {
            format!(
                "; sampled every {} on average, figures are estimates",
                human_bytes(report.sample_bytes)
            )
        } else {
            String::new()
        }
    );
    let held = super::c_library::summary_lines(&report.c_library, human_bytes);
    if !held.is_empty() {
        let _ = writeln!(
            out,
            "<p id=\"c-library\">held by the C library, not counted above: {}</p>",
            escape(&held.join("; "))
        );
    }
    if report.spans_processes() {
        out.push_str("<h2>Processes</h2>\n<table><tr><th>pid</th><th>bytes</th><th>allocations</th><th>call sites</th><th>container</th><th>command</th></tr>\n");
        for process in report.processes.iter().take(top) {
            let _ = writeln!(
                out,
                "<tr{}><td class=\"n\"><a href=\"/?pid={pid}\">{pid}</a></td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>{}<td>{}{}{}{}</td></tr>",
                if pid == Some(process.pid) {
                    " class=\"picked\""
                } else {
                    ""
                },
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
                    .unwrap_or_default(),
                pid = process.pid,
            );
        }
        out.push_str("</table>\n");
    }
    out.push_str("<h2>Top call sites</h2>\n<table><tr><th>bytes</th><th>allocations</th><th>oldest</th><th>growth</th><th>allocator</th><th>stack (innermost first)</th></tr>\n");
    for site in view.sites.iter().take(top) {
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
    super::by_type::html(&view, top, &mut out);
    super::goroutines::html(&view, top, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::super::fixtures;
    use super::{PageOptions, fragment, page};

    const OPTIONS: PageOptions = PageOptions {
        top: 10,
        pid: None,
        refresh_ms: 5000,
    };

    /// Every `<script` in `html` loads a file from the binary's assets:
    /// the page has no inline script (its policy would refuse one).
    fn only_asset_scripts(html: &str) {
        for (at, _) in html.match_indices("<script") {
            assert!(
                html[at..].starts_with("<script src=\"/assets/"),
                "{}",
                &html[at..]
            );
        }
    }

    #[test]
    fn the_page_is_a_shell_for_the_charts_with_the_tables_and_the_flamegraph() {
        let html = page(&fixtures::report(), &OPTIONS);
        assert!(html.starts_with("<!DOCTYPE html>"));
        for part in [
            "<script src=\"/assets/uPlot.iife.min.js\" defer></script>",
            "<script src=\"/assets/page.js\" defer></script>",
            "<link rel=\"stylesheet\" href=\"/assets/uPlot.min.css\">",
            "data-refresh-ms=\"5000\" data-pid=\"\"",
            "<div id=\"processes-chart\" class=\"chart\"></div>",
            "<div id=\"sites-chart\" class=\"chart\"></div>",
            "<object id=\"flamegraph\" type=\"image/svg+xml\" data=\"/flamegraph.svg?pid=\"></object>",
            "<h2>Outstanding bytes over time</h2>",
            "<td class=\"n\">4096</td><td class=\"n\">4</td>",
            "leak_a (prog.c:10)\nmain (prog.c:30)",
        ] {
            assert!(html.contains(part), "no {part} in:\n{html}");
        }
        only_asset_scripts(&html);
        // One process: no picker.
        assert!(!html.contains("<select"), "{html}");
        // Growth mode says what it measures.
        let mut growth = fixtures::report();
        growth.mode = "growth".into();
        let html = page(&growth, &OPTIONS);
        assert!(html.contains("<h2>Resident growth since attach over time</h2>"));
        assert!(html.contains("resident growth since attach in 5 allocations"));
    }

    /// A function name carrying markup is shown as text in the stack
    /// column, never as markup: no raw `<script>` anywhere, and no bare
    /// `&` or `"` from it.
    #[test]
    fn markup_in_a_function_name_is_escaped() {
        let html = page(&fixtures::report_with_markup(), &OPTIONS);
        let escaped = "leak&lt;script&gt;alert(1)&lt;/script&gt;&amp;&quot;&#39;";
        assert!(
            html.contains(&format!(
                "<pre>{escaped} (prog.c:10)\nmain (prog.c:30)</pre>"
            )),
            "{html}"
        );
        only_asset_scripts(&html);
        assert!(!html.contains("leak<"), "raw markup in the page:\n{html}");
        assert!(
            !html.contains("&\"'"),
            "unescaped & or \" in the page:\n{html}"
        );
    }

    /// Several processes: a picker listing each (its command escaped), the
    /// picked one selected, its row marked, its sites and totals alone.
    #[test]
    fn several_processes_get_a_picker() {
        let mut report = fixtures::report_in_containers();
        report.processes[1].command = "<b>evil --x".into();
        let html = page(
            &report,
            &PageOptions {
                pid: Some(43),
                ..OPTIONS
            },
        );
        assert!(
            html.contains(
                "<select id=\"pid\"><option value=\"\">all</option>\
                 <option value=\"42\">42 prog (4.1 KiB)</option>\
                 <option value=\"43\" selected>43 &lt;b&gt;evil (0 B)</option></select>"
            ),
            "{html}"
        );
        assert!(!html.contains("<b>evil"), "{html}");
        assert!(html.contains("data-pid=\"43\""), "{html}");
        assert!(html.contains("data=\"/flamegraph.svg?pid=43\""), "{html}");
        let tables = fragment(&report, 10, Some(43));
        assert!(
            tables.contains("<p id=\"totals\">pid 43: 0 B (0 bytes) outstanding in 0 allocations at 0 call sites"),
            "{tables}"
        );
        assert!(
            tables
                .contains("<tr class=\"picked\"><td class=\"n\"><a href=\"/?pid=43\">43</a></td>"),
            "{tables}"
        );
        assert!(!tables.contains("leak_a"), "{tables}");
        assert!(fragment(&report, 10, None).contains("leak_a"));
    }

    /// The processes table has a container column: runtime, short id, pod
    /// and its class, the cgroup path as its tooltip, escaped (the path
    /// holds a quote, a backslash, a newline, shown as `\x0a`, and markup).
    #[test]
    fn the_container_column_is_escaped() {
        let html = fragment(&fixtures::report_in_containers(), 10, None);
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
                "<td title=\"/a&quot;b\\c\\x0ad&lt;e&gt;/docker-{}.scope\">docker 605439acbd4f</td><td>evil",
                fixtures::CONTAINER_ID
            )),
            "{html}"
        );
        assert!(!html.contains("<e>"), "{html}");
        // Outside any container: a dash, the cgroup in the tooltip.
        let mut report = fixtures::report_in_containers();
        report.processes[1].container = None;
        let html = fragment(&report, 10, None);
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
        let html = fragment(&one, 10, None);
        assert!(
            html.contains("<table><tr><th>container</th><td title=\"/user.slice/user-1000.slice/session-2.scope\">containerd 605439acbd4f<br>pod "),
            "{html}"
        );
    }
}
