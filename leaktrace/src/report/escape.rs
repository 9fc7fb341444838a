//! Escaping for HTML and XML: every name in a report comes from the traced
//! process (its symbols, its files, its command line) and is hostile until
//! escaped. The page and the SVG flamegraph share these functions.
use std::{borrow::Cow, fmt::Write as _};

/// Whether `c` is shown as an escape rather than as itself: control
/// characters (C0, DEL, C1: a terminal or a browser acts on them or hides
/// them, and XML 1.0 forbids most of C0 outright: one in an SVG makes it
/// unreadable) and the two noncharacters XML forbids too.
fn hidden(c: char) -> bool {
    c.is_control() || c == '\u{fffe}' || c == '\u{ffff}'
}

/// `text` with every [`hidden`] character written as a visible escape
/// (`\x01`, `\u{fffe}`), so that a symbol named with a newline, a NUL or an
/// escape sequence is shown, not obeyed; borrowed when there is none.
pub(crate) fn visible(text: &str) -> Cow<'_, str> {
    if !text.chars().any(hidden) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if !hidden(c) {
            out.push(c);
        } else if let Ok(byte) = u8::try_from(c) {
            let _ = write!(out, "\\x{byte:02x}");
        } else {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        }
    }
    Cow::Owned(out)
}

/// Escapes text for HTML and XML, in element content and in quoted
/// attribute values (control characters made [`visible`] first).
pub(super) fn escape(text: &str) -> String {
    visible(text)
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_and_quotes_are_escaped() {
        assert_eq!(
            escape(r#"leak<script>alert("x")</script>&'"#),
            "leak&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;"
        );
        assert_eq!(escape("a]]>b"), "a]]&gt;b");
    }

    #[test]
    fn control_characters_are_shown_not_obeyed() {
        assert!(matches!(visible("plain <name> é"), Cow::Borrowed(_)));
        assert_eq!(
            visible("ctl\u{1}\u{1b}[31mred\n\t\u{7f}\u{85}\u{fffe}"),
            "ctl\\x01\\x1b[31mred\\x0a\\x09\\x7f\\x85\\u{fffe}"
        );
        assert_eq!(escape("a\u{0}<b>"), "a\\x00&lt;b&gt;");
    }
}
