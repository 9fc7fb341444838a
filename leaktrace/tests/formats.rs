//! The pprof and SVG formats and `leaktrace diff`, end to end, on the
//! `leaky` fixture (tests/fixtures/leaky.c), whose leaks are known exactly
//! (`common::EXPECTED_LEAKS)`: `go tool pprof` (Debian's golang-go) reads our
//! profile and finds `leak_malloc`'s bytes and count; the flamegraph names
//! it; diff finds no growth between two runs and exactly the change made
//! to an edited copy of a report.
//!
//! The tracing tests need root (eBPF), the pprof test also `go`: without
//! them each fails, or is a counted skip when `LEAKTRACE_ALLOW_SKIPS=1`
//! (see `common::prerequisite`). They run one at a time (`common::serial`).
mod common;

use std::{fs, path::Path, process::Command, time::Duration};

use common::{
    EXPECTED_LEAKS, Leak, TempDir, assert_one_error_line, build_leaky, fixture_source,
    innermost_function, leaktrace, require_root, require_tool, run_json, run_with_timeout, serial,
    sites,
};

const RUN_TIMEOUT: Duration = Duration::from_mins(2);

fn leak_malloc() -> &'static Leak {
    EXPECTED_LEAKS
        .iter()
        .find(|l| l.function == "leak_malloc")
        .expect("leak_malloc is in the table")
}

/// `leaktrace run ARGS... -- COMMAND`, asserted to succeed.
fn run_ok(args: &[&str], command: &str) {
    let mut all = vec!["run", "--quiet"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--", command]);
    leaktrace(&all, RUN_TIMEOUT).succeeded(&format!("leaktrace {}", all.join(" ")));
}

/// `leaktrace diff ARGS...`, asserted to succeed; its stdout.
fn diff(args: &[&str]) -> String {
    let mut all = vec!["diff"];
    all.extend_from_slice(args);
    leaktrace(&all, RUN_TIMEOUT)
        .succeeded(&format!("leaktrace {}", all.join(" ")))
        .stdout
}

/// `go tool pprof ARGS... PROFILE`, asserted to succeed; its stdout.
fn pprof(args: &[&str], profile: &Path) -> String {
    let mut command = Command::new("go");
    command.args(["tool", "pprof"]).args(args).arg(profile);
    run_with_timeout("go tool pprof", &mut command, RUN_TIMEOUT)
        .succeeded(&format!("go tool pprof {args:?}"))
        .stdout
}

/// The first field (flat) of the `-top` row of `function`.
fn top_flat<'a>(top: &'a str, function: &str) -> &'a str {
    top.lines()
        .find(|line| line.split_whitespace().last() == Some(function))
        .and_then(|line| line.split_whitespace().next())
        .unwrap_or_else(|| panic!("no -top row for {function}:\n{top}"))
}

/// Whether go is there (see `common::require_tool`).
fn require_go(test: &str) -> bool {
    require_tool(
        test,
        "go",
        "apt-get install golang-go; cargo xtask test installs it",
    )
}

/// `--format pprof --output F.pb.gz` writes a profile `go tool pprof` reads:
/// `-top` shows `leak_malloc` with its exact bytes (flat: it called the
/// allocator), `-traces` its stack with main as caller, and the
/// `inuse_objects` sample its allocation count.
#[test]
fn pprof_profile_reads_in_go_tool_pprof() {
    if !require_root("pprof_profile_reads_in_go_tool_pprof")
        || !require_go("pprof_profile_reads_in_go_tool_pprof")
    {
        return;
    }
    let _serial = serial();
    let dir = TempDir::new("pprof");
    let leaky = build_leaky(&dir);
    let profile = dir.join("leaks.pb.gz");
    run_ok(
        &["--format", "pprof", "--output", profile.to_str().unwrap()],
        leaky.to_str().unwrap(),
    );
    let bytes = fs::read(&profile).expect("reading the profile");
    assert_eq!(&bytes[..2], &[0x1f, 0x8b], "the profile is gzipped");
    let expected = leak_malloc();

    // -unit=B: exact bytes. pprof hides nodes under 0.5% of the total: the
    // thread stacks the C library caches (32 MiB) are not samples, so they
    // no longer push the leaks under it.
    let top = pprof(&["-top", "-unit=B"], &profile);
    assert!(
        top.contains("Type: inuse_space"),
        "default sample type:\n{top}"
    );
    assert!(top.contains("sampled: no"), "the comments:\n{top}");
    assert!(
        top.contains("held by the C library, not in the samples: 32.0 MiB in 4 thread stacks"),
        "the comments:\n{top}"
    );
    assert_eq!(
        top_flat(&top, "leak_malloc"),
        format!("{}B", expected.bytes),
        "-top:\n{top}"
    );
    // Without options, as a user would type it: it still reads.
    let plain = pprof(&["-top"], &profile);
    assert!(plain.contains("File: leaky"), "main binary first:\n{plain}");

    let traces = pprof(&["-traces", "-unit=B"], &profile);
    let lines: Vec<&str> = traces.lines().collect();
    let at = lines
        .iter()
        .position(|l| {
            l.split_whitespace().collect::<Vec<_>>()
                == [format!("{}B", expected.bytes).as_str(), "leak_malloc"]
        })
        .unwrap_or_else(|| panic!("no leak_malloc trace with its bytes:\n{traces}"));
    assert_eq!(lines[at + 1].trim(), expected.caller, "-traces:\n{traces}");
    assert!(
        lines[..at]
            .iter()
            .rev()
            .take(4)
            .any(|l| l.trim() == "allocator:  malloc"),
        "the allocator label:\n{traces}"
    );

    let objects = pprof(
        &["-sample_index=inuse_objects", "-top", "-nodefraction=0"],
        &profile,
    );
    assert_eq!(
        top_flat(&objects, "leak_malloc"),
        expected.count.to_string(),
        "-sample_index=inuse_objects -top:\n{objects}"
    );
}

/// `--format svg --output F.svg` writes a flamegraph with `leak_malloc` in it,
/// its tooltip giving the exact bytes.
#[test]
fn svg_flamegraph_names_the_leaks() {
    if !require_root("svg_flamegraph_names_the_leaks") {
        return;
    }
    let _serial = serial();
    let dir = TempDir::new("svg");
    let leaky = build_leaky(&dir);
    let svg_path = dir.join("leaks.svg");
    run_ok(
        &["--format", "svg", "--output", svg_path.to_str().unwrap()],
        leaky.to_str().unwrap(),
    );
    let svg = fs::read_to_string(&svg_path).expect("reading the SVG");
    assert!(svg.starts_with("<?xml"), "{}", &svg[..200.min(svg.len())]);
    assert!(svg.contains("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("leaktrace: outstanding bytes"));
    let bytes = leak_malloc().bytes;
    let tooltip = format!(
        "<title>leak_malloc ({},{:03} bytes",
        bytes / 1000,
        bytes % 1000
    );
    assert!(svg.contains(&tooltip), "no {tooltip} in the SVG");
}

/// Two runs of leaky: no growth at any of the fixture's sites, JSON against
/// JSON or pprof. A report against itself: no change at all. A report
/// against a copy with `leak_malloc`'s bytes doubled: exactly that site grew,
/// by its bytes.
#[test]
fn diff_of_runs_and_of_an_edited_report() {
    if !require_root("diff_of_runs_and_of_an_edited_report") {
        return;
    }
    let _serial = serial();
    let dir = TempDir::new("diff");
    let leaky = build_leaky(&dir);
    let leaky = leaky.to_str().unwrap();
    let first = run_json(&dir, "first", &[], &[leaky]);
    let _second = run_json(&dir, "second", &[], &[leaky]);
    let profile = dir.join("third.pb.gz");
    run_ok(
        &["--format", "pprof", "--output", profile.to_str().unwrap()],
        leaky,
    );
    let path = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let (first_path, second_path) = (path("first.json"), path("second.json"));
    let profile_path = profile.to_str().unwrap();

    for new in [second_path.as_str(), profile_path] {
        let text = diff(&[&first_path, new]);
        let folded = diff(&["--format", "folded", &first_path, new]);
        for leak in EXPECTED_LEAKS {
            assert!(
                !text.contains(leak.function),
                "{} changed between two runs:\n{text}",
                leak.function
            );
            assert!(
                !folded.contains(leak.function),
                "{} grew between two runs:\n{folded}",
                leak.function
            );
        }
    }

    let same = diff(&[&first_path, &first_path]);
    assert!(
        same.contains("\nchange: +0 bytes (+0 B), +0 allocations; 0 call sites grew, 0 shrank"),
        "{same}"
    );
    assert_eq!(diff(&["-f", "folded", &first_path, &first_path]), "");

    let expected = leak_malloc();
    let mut edited = first.clone();
    let site = edited["sites"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|s| innermost_function(s) == "leak_malloc")
        .expect("leak_malloc's site");
    assert_eq!(site["bytes"], expected.bytes);
    site["bytes"] = (2 * expected.bytes).into();
    let edited_path = path("edited.json");
    fs::write(&edited_path, serde_json::to_string(&edited).unwrap()).unwrap();
    assert_eq!(sites(&edited).len(), sites(&first).len());

    let folded = diff(&["--format", "folded", &first_path, &edited_path]);
    let lines: Vec<&str> = folded.lines().collect();
    assert_eq!(lines.len(), 1, "one site grew:\n{folded}");
    assert!(
        lines[0].ends_with(&format!(";main;leak_malloc;malloc {}", expected.bytes)),
        "{folded}"
    );
    let text = diff(&[&first_path, &edited_path]);
    let bytes = expected.bytes;
    let count = expected.count;
    assert!(
        text.contains(&format!(
            "\n#1 +{bytes} bytes (+4.3 KiB), +0 allocations from malloc: {bytes} -> {} bytes, {count} -> {count} allocations\n    leak_malloc\n    main\n",
            2 * bytes
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "\nchange: +{bytes} bytes (+4.3 KiB), +0 allocations; 1 call sites grew, 0 shrank"
        )),
        "{text}"
    );
    // The other way round: it shrank back.
    let back = diff(&[&edited_path, &first_path]);
    assert!(
        back.contains(&format!(
            "\n#1 -{bytes} bytes (-4.3 KiB), +0 allocations from malloc"
        )),
        "{back}"
    );
}

/// Refusals need no root: pprof to stdout, missing files, files that are
/// neither JSON nor pprof. One `leaktrace: error:` line each.
#[test]
fn refusals_are_one_line() {
    let finished = leaktrace(&["run", "--format", "pprof", "--", "true"], RUN_TIMEOUT);
    let line = assert_one_error_line("--format pprof to stdout", &finished);
    assert!(line.contains("--output"), "{line}");
    assert!(finished.stdout.is_empty(), "nothing on stdout");

    let dir = TempDir::new("diff-errors");
    let missing = dir.join("missing.json");
    let source = fixture_source("leaky.c");
    let finished = leaktrace(
        &["diff", missing.to_str().unwrap(), source.to_str().unwrap()],
        RUN_TIMEOUT,
    );
    let line = assert_one_error_line("diff of a missing file", &finished);
    assert!(
        line.contains("reading") && line.contains("missing.json"),
        "{line}"
    );
    assert_eq!(finished.status.code(), Some(1));

    let finished = leaktrace(
        &["diff", source.to_str().unwrap(), source.to_str().unwrap()],
        RUN_TIMEOUT,
    );
    let line = assert_one_error_line("diff of a C file", &finished);
    assert!(
        line.contains("neither a leaktrace JSON report nor a gzipped pprof profile"),
        "{line}"
    );
    assert_eq!(finished.status.code(), Some(1));
}
