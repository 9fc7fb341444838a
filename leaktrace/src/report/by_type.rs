//! Exact object mode's by-type view (`Report::python_types`) in the text
//! report and on the page: outstanding objects and bytes per Python type,
//! with their change since the view before, like objgraph's
//! `show_growth`. JSON carries the rows as they are.
use std::fmt::Write as _;

use super::{Report, escape::escape, text::human_bytes};

/// "+12" / "-3" / "0".
fn change(value: i64) -> String {
    if value > 0 {
        format!("+{value}")
    } else {
        value.to_string()
    }
}

/// "+1.5 MiB" / "-4.0 KiB".
fn bytes_change(value: i64) -> String {
    let sign = if value < 0 { "-" } else { "+" };
    format!("{sign}{}", human_bytes(value.unsigned_abs()))
}

/// The text report's section (nothing when the view is empty).
pub(super) fn text(report: &Report, top: usize, out: &mut String) {
    if report.python_types.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\nPython objects by type (exact object mode), most bytes first; change since the previous report:"
    );
    let _ = writeln!(
        out,
        "  {:>10} {:>10} {:>10} {:>10}  type",
        "objects", "change", "bytes", "change"
    );
    let several = report.spans_processes();
    for row in report.python_types.iter().take(top) {
        let _ = writeln!(
            out,
            "  {:>10} {:>10} {:>10} {:>10}  {}{}",
            row.objects,
            change(row.objects_change),
            human_bytes(row.bytes),
            bytes_change(row.bytes_change),
            row.type_name,
            if several {
                format!("  (pid {})", row.pid)
            } else {
                String::new()
            }
        );
    }
    if report.python_types.len() > top {
        let _ = writeln!(
            out,
            "  ({} more types not shown; --top changes how many)",
            report.python_types.len() - top
        );
    }
}

/// The page's section (nothing when the view is empty).
pub(super) fn html(report: &Report, top: usize, out: &mut String) {
    if report.python_types.is_empty() {
        return;
    }
    out.push_str("<h2>Python objects by type</h2>\n<table><tr><th>pid</th><th>type</th><th>objects</th><th>change</th><th>bytes</th><th>change</th></tr>\n");
    for row in report.python_types.iter().take(top) {
        let _ = writeln!(
            out,
            "<tr><td class=\"n\">{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            row.pid,
            escape(&row.type_name),
            row.objects,
            change(row.objects_change),
            row.bytes,
            change(row.bytes_change)
        );
    }
    out.push_str("</table>\n");
}

#[cfg(test)]
mod tests {
    use super::super::{PythonTypeReport, fixtures};
    use super::*;

    fn with_types() -> Report {
        let mut report = fixtures::report();
        report.python_types = vec![
            PythonTypeReport {
                pid: 42,
                type_name: "dict".into(),
                objects: 6621,
                bytes: 3_400_000,
                objects_change: 120,
                bytes_change: 61_440,
            },
            PythonTypeReport {
                pid: 42,
                type_name: "<script>Evil</script>".into(),
                objects: 3,
                bytes: 96,
                objects_change: -2,
                bytes_change: -64,
            },
        ];
        report
    }

    #[test]
    fn text_lists_each_type_with_its_change() {
        let mut out = String::new();
        text(&with_types(), 10, &mut out);
        assert!(out.contains("Python objects by type"), "{out}");
        let dict = out.lines().find(|l| l.ends_with(" dict")).expect(&out);
        let words: Vec<&str> = dict.split_whitespace().collect();
        assert_eq!(words[..2], ["6621", "+120"], "{dict}");
        assert!(dict.contains("+60.0 KiB"), "{dict}");
        let evil = out.lines().find(|l| l.contains("Evil")).expect(&out);
        assert!(evil.contains(" -2 ") && evil.contains("-64 B"), "{evil}");
        let mut empty = String::new();
        text(&fixtures::report(), 10, &mut empty);
        assert!(empty.is_empty());
    }

    #[test]
    fn the_page_escapes_type_names() {
        let mut out = String::new();
        html(&with_types(), 10, &mut out);
        assert!(out.contains("&lt;script&gt;Evil&lt;/script&gt;"), "{out}");
        assert!(!out.contains("<script>"), "{out}");
        assert!(
            out.contains("<td class=\"n\">6621</td><td class=\"n\">+120</td>"),
            "{out}"
        );
    }
}
