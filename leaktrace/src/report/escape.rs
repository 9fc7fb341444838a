//! Escaping for HTML and XML: every name in a report comes from the traced
//! process (its symbols, its files, its command line) and is hostile until
//! escaped. The page and the SVG flamegraph share this one function.

/// Escapes text for HTML and XML, in element content and in quoted
/// attribute values.
pub(super) fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
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
    }
}
