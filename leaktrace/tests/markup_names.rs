//! Function names that carry markup or control characters, as any ELF may
//! hold them (`tests/fixtures/markup_names.c` names its functions with asm
//! labels: `leak<script>alert(1)</script>`, `keep&'quote']]><b>`, and `ctl`
//! with \001 and an escape sequence): the SVG flamegraph written by `--format
//! svg` and served by `serve`, and serve's page and tables, show each name
//! escaped, never as markup; the SVG is well-formed XML (python3's
//! minidom parses it); each name's bytes are what the fixture kept there.
mod common;

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use common::{
    Guarded, Server, TempDir, compile, get, leaktrace, require_root, require_tool, serial,
    start_serve,
};

/// The names as the fixture defines them.
const SCRIPT: &str = "leak<script>alert(1)</script>";
const QUOTE: &str = "keep&'quote']]><b>";
const CONTROL: &str = "ctl\u{1}\u{1b}[31mred";

/// The names as shown: escaped for HTML and XML (inferno writes a single
/// quote as `&apos;`, the page as `&#39;`), control characters as `\xNN`.
const SCRIPT_SHOWN: &str = "leak&lt;script&gt;alert(1)&lt;/script&gt;";
const QUOTE_SHOWN: [&str; 2] = [
    "keep&amp;&apos;quote&apos;]]&gt;&lt;b&gt;",
    "keep&amp;&#39;quote&#39;]]&gt;&lt;b&gt;",
];
const CONTROL_SHOWN: &str = "ctl\\x01\\x1b[31mred";

fn build(dir: &TempDir) -> std::path::PathBuf {
    // No debug info: the names are the symbol table's, as in a stripped
    // build of a program that named them so.
    compile(
        dir,
        "markup_names.c",
        "markup_names",
        &["-O1", "-fno-omit-frame-pointer", "-fno-inline"],
    )
}

/// No name appears raw in `text` (nor any markup of theirs, nor a control
/// character), and each appears escaped.
fn assert_escaped(what: &str, text: &str) {
    for raw in [SCRIPT, QUOTE, CONTROL, "<script>alert", "<b>", "\u{1b}"] {
        assert!(!text.contains(raw), "{what}: {raw:?} unescaped:\n{text}");
    }
    assert!(
        !text
            .chars()
            .any(|c| c.is_control() && !matches!(c, '\n' | '\t' | '\r')),
        "{what}: a control character:\n{text}"
    );
    assert!(text.contains(SCRIPT_SHOWN), "{what}: no {SCRIPT_SHOWN}");
    assert!(
        QUOTE_SHOWN.iter().any(|shown| text.contains(shown)),
        "{what}: no {QUOTE_SHOWN:?}"
    );
    assert!(text.contains(CONTROL_SHOWN), "{what}: no {CONTROL_SHOWN}");
}

/// python3's minidom parses `path` (an XML parser as the oracle).
fn assert_well_formed_xml(path: &Path) {
    let parsed = Command::new("python3")
        .args([
            "-c",
            "import sys, xml.dom.minidom; xml.dom.minidom.parse(sys.argv[1])",
        ])
        .arg(path)
        .output()
        .expect("running python3");
    assert!(
        parsed.status.success(),
        "{} is not well-formed XML: {}",
        path.display(),
        String::from_utf8_lossy(&parsed.stderr)
    );
}

#[test]
fn hostile_names_are_escaped_in_the_svg_file() {
    const TEST: &str = "hostile_names_are_escaped_in_the_svg_file";
    if !require_root(TEST) || !require_tool(TEST, "python3", "apt-get install python3") {
        return;
    }
    let _serial = serial();
    let dir = TempDir::new("markup-svg");
    let program = build(&dir);
    let svg_path = dir.join("leaks.svg");
    leaktrace(
        &[
            "run",
            "--quiet",
            "--mode",
            "allocations",
            "--sample-bytes",
            "0",
            "--format",
            "svg",
            "--output",
            svg_path.to_str().unwrap(),
            "--",
            program.to_str().unwrap(),
            "5",
        ],
        Duration::from_mins(2),
    )
    .succeeded("leaktrace run --format svg");
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert_escaped("--format svg", &svg);
    assert_well_formed_xml(&svg_path);
    // Each tooltip carries the bytes kept there: 5 rounds.
    for (shown, bytes) in [
        (SCRIPT_SHOWN, "5,000"),
        (QUOTE_SHOWN[0], "3,500"),
        (CONTROL_SHOWN, "1,500"),
    ] {
        assert!(
            svg.contains(&format!("<title>{shown} ({bytes} bytes")),
            "no tooltip {shown} ({bytes} bytes:\n{svg}"
        );
    }
}

#[test]
fn hostile_names_are_escaped_on_the_page() {
    const TEST: &str = "hostile_names_are_escaped_on_the_page";
    if !require_root(TEST) || !require_tool(TEST, "python3", "apt-get install python3") {
        return;
    }
    let _serial = serial();
    let dir = TempDir::new("markup-page");
    let program = build(&dir);
    let fixture = Guarded::spawn("markup_names", Command::new(&program).stdin(Stdio::null()));
    let Server {
        process: _server,
        stderr,
        address,
        ..
    } = start_serve(&[
        "--pid",
        &fixture.pid().to_string(),
        "--mode",
        "allocations",
        "--sample-bytes",
        "0",
    ]);
    stderr
        .wait_for(Duration::from_mins(1), |l| {
            l.starts_with("leaktrace: tracing pid ")
        })
        .unwrap_or_else(|e| panic!("never attached: {e}"));
    std::thread::sleep(Duration::from_millis(1500));
    for path in ["/", "/fragment", "/flamegraph.svg"] {
        let (status, body) = get(&address, path);
        assert_eq!(status, 200, "{path}");
        let text = String::from_utf8(body).unwrap();
        assert_escaped(path, &text);
        if path == "/flamegraph.svg" {
            let file = dir.join("served.svg");
            std::fs::write(&file, &text).unwrap();
            assert_well_formed_xml(&file);
        }
    }
}

/// The text report, printed to a terminal: a name's control characters
/// (here an escape sequence that would turn the terminal red) are shown
/// as `\xNN`, never sent; markup is plain text there and shown as is.
#[test]
fn control_characters_in_names_never_reach_the_terminal() {
    const TEST: &str = "control_characters_in_names_never_reach_the_terminal";
    if !require_root(TEST) {
        return;
    }
    let _serial = serial();
    let dir = TempDir::new("markup-text");
    let program = build(&dir);
    let finished = leaktrace(
        &[
            "run",
            "--quiet",
            "--mode",
            "allocations",
            "--",
            program.to_str().unwrap(),
            "5",
        ],
        Duration::from_mins(2),
    );
    let text = finished.succeeded("leaktrace run (text)").stdout;
    assert!(
        !text.chars().any(|c| c.is_control() && c != '\n'),
        "a control character in the text report:\n{text:?}"
    );
    assert!(text.contains(CONTROL_SHOWN), "no {CONTROL_SHOWN}:\n{text}");
    assert!(text.contains(SCRIPT), "no {SCRIPT}:\n{text}");
}
