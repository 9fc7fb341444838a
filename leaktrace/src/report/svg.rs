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
        report.target_label(),
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

    #[test]
    fn empty_report_is_a_valid_svg_that_says_so() {
        let mut report = fixtures::report();
        report.sites.clear();
        let svg = render(&report);
        assert!(svg.starts_with("<?xml"));
        assert!(svg.contains("<svg") && svg.contains("no outstanding bytes"));
    }
}
