//! Reading valgrind memcheck's XML output (`--xml=yes`): the oracle the
//! leak numbers and stacks are checked against.

/// One loss record of valgrind's XML output.
#[derive(Debug)]
pub(crate) struct LossRecord {
    pub kind: String,
    pub bytes: u64,
    pub blocks: u64,
    /// Function names of the allocation stack, innermost first.
    pub functions: Vec<String>,
}

fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// Text of the first `<tag>...</tag>` in `xml`.
pub(crate) fn tag<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&close)?;
    Some(&xml[start..end])
}

/// Every `<error>` of valgrind's XML: (kind, whole text).
pub(crate) fn errors(xml: &str) -> Vec<(String, &str)> {
    xml.split("<error>")
        .skip(1)
        .map(|chunk| {
            let body = chunk.split("</error>").next().unwrap_or(chunk);
            (tag(body, "kind").unwrap_or("").to_string(), body)
        })
        .collect()
}

pub(crate) fn loss_records(xml: &str) -> Vec<LossRecord> {
    errors(xml)
        .into_iter()
        .filter(|(kind, _)| kind.starts_with("Leak_"))
        .map(|(kind, body)| {
            let number = |name| {
                tag(body, name)
                    .and_then(|t| t.trim().parse().ok())
                    .unwrap_or(0)
            };
            let stack = tag(body, "stack").unwrap_or("");
            let functions = stack
                .split("<fn>")
                .skip(1)
                .map(|s| unescape(s.split("</fn>").next().unwrap_or("")))
                .collect();
            LossRecord {
                kind,
                bytes: number("leakedbytes"),
                blocks: number("leakedblocks"),
                functions,
            }
        })
        .collect()
}
