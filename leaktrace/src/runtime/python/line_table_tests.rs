//! The line-table decoders against each interpreter's own mapping:
//! `testdata/line_tables.py` prints, for functions with loops, multi-line
//! expressions, try/except, a lambda, a generator, comprehensions and a
//! 460-line function, the raw table and the line the interpreter gives at
//! every instruction offset (`dis.findlinestarts` up to 3.9, `co_lines()`
//! from 3.10); the decoder must agree at every one. A missing interpreter
//! fails its test, naming it.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use super::{
    layout::PythonLayout,
    line_table::line_at,
    tests::{DEBIAN_PYTHON, oracle, pyenv},
};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/runtime/python/testdata/line_tables.py")
}

fn hex(text: &str) -> Vec<u8> {
    if text == "-" {
        return Vec::new();
    }
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(&text[at..at + 2], 16).expect("hex"))
        .collect()
}

fn check(python: &Path) {
    assert!(python.exists(), "{} is missing", python.display());
    let version = oracle(python);
    let layout = PythonLayout::for_version(version).expect("a table for this version");
    let output = Command::new(python)
        .arg(script())
        .output()
        .unwrap_or_else(|err| panic!("cannot run {}: {err}", python.display()));
    assert!(
        output.status.success(),
        "{}: {}",
        python.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("ASCII output");
    let mut codes = Vec::new();
    let mut offsets_checked = 0;
    let mut mismatches = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let ["CODE", name, first, table, step, lines] = fields[..] else {
            panic!("{version}: unexpected line {line:?}");
        };
        let first: i32 = first.parse().expect("co_firstlineno");
        let table = hex(table);
        let step: u64 = step.parse().expect("step");
        codes.push(name.to_owned());
        for (index, want) in lines.split(',').enumerate() {
            let want = (want != "-").then(|| want.parse::<u32>().expect("a line"));
            let offset = index as u64 * step;
            let have = line_at(layout.line_table_format, &table, first, offset);
            offsets_checked += 1;
            if have != want {
                mismatches.push(format!(
                    "{name} at {offset}: {have:?}, interpreter {want:?}"
                ));
            }
        }
    }
    for name in [
        "loops",
        "multiline",
        "handler",
        "<lambda>",
        "generator",
        "long_function",
    ] {
        assert!(
            codes.iter().any(|code| code == name),
            "{version}: no {name} in {codes:?}"
        );
    }
    assert!(
        offsets_checked > 500,
        "{version}: only {offsets_checked} offsets"
    );
    assert!(
        mismatches.is_empty(),
        "Python {version}: {} of {offsets_checked} offsets disagree:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

#[test]
fn line_tables_2_7() {
    check(&pyenv("2.7.18"));
}

#[test]
fn line_tables_3_6() {
    check(&pyenv("3.6.15"));
}

#[test]
fn line_tables_3_7() {
    check(&pyenv("3.7.16"));
}

#[test]
fn line_tables_3_8() {
    check(&pyenv("3.8.18"));
}

#[test]
fn line_tables_3_9() {
    check(&pyenv("3.9.18"));
}

#[test]
fn line_tables_3_10() {
    check(&pyenv("3.10.13"));
}

#[test]
fn line_tables_3_11() {
    check(&pyenv("3.11.7"));
}

#[test]
fn line_tables_3_12() {
    check(&pyenv("3.12.1"));
}

#[test]
fn line_tables_3_13() {
    check(&pyenv("3.13.0"));
}

#[test]
fn line_tables_debian_python3_11() {
    check(Path::new(DEBIAN_PYTHON));
}
