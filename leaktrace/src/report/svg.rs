//! SVG: an interactive flamegraph of the outstanding bytes (inferno fed the
//! folded stacks): one tower per call site, the allocator on top, widths
//! proportional to bytes; click to zoom, Ctrl-F to search.
use inferno::flamegraph::{
    self,
    color::{BasicPalette, Palette},
};

use super::{Report, folded, text::human_bytes};

pub const TITLE: &str = "leaktrace: outstanding bytes";

/// The report's header, under the title.
fn subtitle(report: &Report) -> String {
    let t = &report.totals;
    let sampled = if report.sample_bytes > 0 {
        format!(
            " (estimates: sampled every {} bytes on average)",
            report.sample_bytes
        )
    } else {
        String::new()
    };
    format!(
        "{}: {} bytes ({}) in {} allocations at {} call sites{sampled}, {} report",
        super::escape::visible(&report.target_label()),
        t.outstanding_bytes,
        human_bytes(t.outstanding_bytes),
        t.outstanding_allocations,
        t.call_sites,
        report.kind()
    )
}

pub fn render(report: &Report) -> String {
    let lines = folded::render(report);
    if report.sites.iter().all(|s| s.bytes == 0) {
        return empty(&subtitle(report));
    }
    let mut options = flamegraph::Options::default();
    options.title = TITLE.into();
    options.subtitle = Some(subtitle(report));
    options.count_name = "bytes".into();
    options.colors = Palette::Basic(BasicPalette::Mem);
    options.hash = true;
    options.deterministic = true;
    // Every leaking site is shown, however small.
    options.min_width = 0.0;
    let mut out = Vec::new();
    flamegraph::from_lines(&mut options, lines.lines(), &mut out)
        .expect("inferno renders non-empty folded stacks into memory");
    String::from_utf8(out).expect("inferno writes UTF-8")
}

/// Nothing outstanding: a small SVG that says so (inferno would draw an
/// error).
fn empty(subtitle: &str) -> String {
    use super::escape::escape;
    format!(
        concat!(
            "<?xml version=\"1.0\" standalone=\"no\"?>\n",
            "<svg version=\"1.1\" width=\"1200\" height=\"80\" xmlns=\"http://www.w3.org/2000/svg\">\n",
            "<text x=\"600\" y=\"24\" text-anchor=\"middle\" font-family=\"Verdana\" font-size=\"17\">{}</text>\n",
            "<text x=\"600\" y=\"48\" text-anchor=\"middle\" font-family=\"Verdana\" font-size=\"12\">{}</text>\n",
            "<text x=\"600\" y=\"68\" text-anchor=\"middle\" font-family=\"Verdana\" font-size=\"12\">no outstanding bytes</text>\n",
            "</svg>\n"
        ),
        escape(TITLE),
        escape(subtitle)
    )
}

#[cfg(test)]
mod tests {
    use super::super::fixtures;
    use super::*;

    #[test]
    fn flamegraph_with_every_frame_and_the_totals() {
        let svg = render(&fixtures::report());
        assert!(svg.starts_with("<?xml"), "{}", &svg[..80.min(svg.len())]);
        assert!(svg.contains("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains(TITLE));
        for name in ["leak_a", "main", "malloc", "calloc", "leak:b"] {
            assert!(svg.contains(name), "{name} missing");
        }
        assert!(svg.contains("4,096 bytes"), "leak_a's tooltip");
        assert!(svg.contains("4196 bytes (4.1 KiB) in 5 allocations at 2 call sites"));
    }

    /// A function name carrying markup is drawn as text: escaped in the
    /// frame's label and tooltip, never as raw markup (inferno's own
    /// script stays the only one), and no bare `&`, `"` or `'` from it (the
    /// SVG's attribute values are quoted).
    #[test]
    fn markup_in_a_function_name_is_escaped() {
        let svg = render(&fixtures::report_with_markup());
        let plain = render(&fixtures::report());
        for tag in ["<script", "</script"] {
            assert_eq!(
                svg.matches(tag).count(),
                plain.matches(tag).count(),
                "the name added a raw {tag}:\n{svg}"
            );
        }
        assert!(!svg.contains("leak<"), "raw markup in the SVG:\n{svg}");
        let escaped = "leak&lt;script&gt;alert(1)&lt;/script&gt;&amp;";
        // Tooltip (<title>) and label (<text>): the full name both times,
        // its quotes as entities.
        let mut found = 0;
        for (at, _) in svg.match_indices(escaped) {
            let rest = &svg[at + escaped.len()..];
            assert!(
                rest.starts_with("&quot;&apos;") || rest.starts_with("&quot;&#39;"),
                "quotes after the escaped name are not entities: {}",
                &rest[..40.min(rest.len())]
            );
            found += 1;
        }
        assert!(
            found >= 2,
            "the escaped name is in the tooltip and the label: {svg}"
        );
    }

    /// Control characters in a name or the command (a symbol may hold any
    /// byte): none reaches the SVG (XML 1.0 forbids them: one made the
    /// whole flamegraph unreadable), each is shown as an escape.
    #[test]
    fn control_characters_are_shown_as_escapes() {
        let mut report = fixtures::report();
        report.sites[0].frames[0].function = "ctl\u{1}\u{1b}[31mred\nx".into();
        report.command = Some(vec!["./prog\u{7}<b>".into()]);
        report.processes[0].command = "./prog\u{7}<b>".into();
        for svg in [render(&report), {
            report.sites.clear();
            render(&report)
        }] {
            let forbidden: Vec<char> = svg
                .chars()
                .filter(|&c| c.is_control() && !matches!(c, '\n' | '\t' | '\r'))
                .collect();
            assert!(forbidden.is_empty(), "{forbidden:?} in:\n{svg}");
            assert!(svg.contains("./prog\\x07&lt;b&gt;"), "{svg}");
            assert!(!svg.contains("<b>"), "{svg}");
        }
        assert!(render(&fixtures::report_with_markup()).contains("leak&lt;script&gt;"));
        let mut report = fixtures::report();
        report.sites[0].frames[0].function = "ctl\u{1}\u{1b}[31mred\nx".into();
        assert!(render(&report).contains("ctl\\x01\\x1b[31mred\\x0ax"));
    }

    #[test]
    fn empty_report_is_a_valid_svg_that_says_so() {
        let mut report = fixtures::report();
        report.sites.clear();
        let svg = render(&report);
        assert!(svg.starts_with("<?xml"));
        assert!(svg.contains("<svg") && svg.contains("no outstanding bytes"));
    }
}
