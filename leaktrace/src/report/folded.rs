//! Folded stacks: `root;...;caller;allocator bytes`, one line per site.
//! flamegraph.pl, inferno and speedscope read it. When several processes
//! are traced, each stack starts with its process (`pid 42 (python3)`), so
//! the flamegraph's first level splits the memory by process.
use super::Report;
use crate::symbolize::{Frame, FrameKind};

/// Frame names may not contain the separator (`diff` shares it), nor a
/// line break or other control character (shown as `\x0a`: a name from the
/// traced process could otherwise end a line, or make the SVG drawn from
/// these lines unreadable XML).
pub(crate) fn clean(name: &str) -> String {
    super::escape::visible(name).replace(';', ":")
}

/// A frame's name in a folded stack: the function, and for Python code its
/// file's name and line too (`handle (views.py:42)`): one Python function
/// allocates from many lines, and the line is what a Python developer acts
/// on. Native frames keep the function alone, as flamegraph tools expect.
pub(crate) fn frame_name(frame: &Frame) -> String {
    match (frame.kind, &frame.file, frame.line) {
        (FrameKind::Python, Some(file), Some(line)) => {
            let base = file.rsplit('/').next().unwrap_or(file);
            clean(&format!("{} ({base}:{line})", frame.function))
        }
        _ => clean(&frame.function),
    }
}

pub fn render(report: &Report) -> String {
    let mut out = String::new();
    for site in &report.sites {
        let mut names: Vec<String> = site.frames.iter().rev().map(frame_name).collect();
        if report.spans_processes() {
            names.insert(0, clean(&report.process_label(site.pid)));
        }
        names.push(site.allocator.clone());
        out.push_str(&names.join(";"));
        out.push(' ');
        out.push_str(&site.bytes.to_string());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::fixtures;

    #[test]
    fn root_first_allocator_last_bytes_after_a_space() {
        assert_eq!(
            super::render(&fixtures::report()),
            "main;leak_a;malloc 4096\nmain;leak:b;calloc 100\n"
        );
    }

    #[test]
    fn control_characters_in_a_name_stay_on_its_line() {
        let mut report = fixtures::report();
        report.sites[0].frames[0].function = "leak\nmain;x\u{1b}[0m 99".into();
        assert_eq!(
            super::render(&report),
            "main;leak\\x0amain:x\\x1b[0m 99;malloc 4096\nmain;leak:b;calloc 100\n"
        );
    }

    #[test]
    fn python_frames_carry_their_file_and_line() {
        let mut report = fixtures::report();
        report.sites[0].frames[0].kind = crate::symbolize::FrameKind::Python;
        report.sites[0].frames[0].file = Some("/srv/app/agent.py".into());
        report.sites[0].frames[0].line = Some(17);
        assert_eq!(
            super::render(&report).lines().next().unwrap(),
            "main;leak_a (agent.py:17);malloc 4096"
        );
    }

    #[test]
    fn several_processes_each_stack_starts_with_its_process() {
        let mut report = fixtures::report();
        report.all_processes = true;
        assert_eq!(
            super::render(&report),
            "pid 42 (prog);main;leak_a;malloc 4096\npid 42 (prog);main;leak:b;calloc 100\n"
        );
    }
}
