//! Bad input: every refusal is one line on stderr starting with
//! `leaktrace: error: `, says why in the words the binary uses (checked
//! here), and exits with 2 for a usage error (clap's), 1 for anything else.
mod common;

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use common::{
    Finished, TempDir, assert_one_error_line, build_nomalloc, have_tool, is_root, leaktrace,
    leaktrace_bin, prerequisite_missing, require_root, run_with_timeout, serial,
};

const TIMEOUT: Duration = Duration::from_mins(1);

/// Exit status of a usage error (bad or missing arguments).
const USAGE: i32 = 2;
/// Exit status of any other refusal.
const FAILURE: i32 = 1;

/// `finished` is a refusal: one `leaktrace: error: ` line on stderr that
/// contains each of `words`, and exit status `code`. Returns the line.
fn assert_refused<'a>(what: &str, finished: &'a Finished, words: &[&str], code: i32) -> &'a str {
    let line = assert_one_error_line(what, finished);
    for word in words {
        assert!(
            line.contains(word),
            "{what}: the message should say {word:?}: {line}"
        );
    }
    assert_eq!(
        finished.status.code(),
        Some(code),
        "{what}: exit status ({line})"
    );
    line
}

/// A pid that cannot exist (`pid_max` is at most 2^22) is refused.
#[test]
fn trace_of_missing_pid_is_refused() {
    if !require_root("trace_of_missing_pid_is_refused") {
        return;
    }
    let _serial = serial();
    let finished = leaktrace(&["trace", "--pid", "999999999"], TIMEOUT);
    assert_refused(
        "trace --pid 999999999",
        &finished,
        &["no such process: 999999999"],
        FAILURE,
    );
}

/// Of several pids, one missing is refused, named, before anything is
/// attached; `--all` with `--pid`, or neither, is a usage error.
#[test]
fn a_missing_pid_among_several_and_conflicting_targets_are_refused() {
    if !require_root("a_missing_pid_among_several_and_conflicting_targets_are_refused") {
        return;
    }
    let _serial = serial();
    let own = std::process::id().to_string();
    let finished = leaktrace(&["trace", "--pid", &format!("{own},999999999")], TIMEOUT);
    assert_refused(
        "trace --pid OWN,999999999",
        &finished,
        &["no such process: 999999999"],
        FAILURE,
    );
    let finished = leaktrace(&["serve", "--all", "--pid", "1"], TIMEOUT);
    assert_refused(
        "serve --all --pid 1",
        &finished,
        &["'--all' cannot be used with '--pid"],
        USAGE,
    );
    // Clap lists the missing arguments on the lines after its first:
    // leaktrace must keep them on its one line.
    let finished = leaktrace(&["trace"], TIMEOUT);
    assert_refused(
        "trace",
        &finished,
        &["required arguments were not provided", "--pid", "--all"],
        USAGE,
    );
}

/// Whether every directory above `path` is searchable and `path` itself
/// executable by anyone.
fn world_executable(path: &Path) -> bool {
    let mode = |p: &Path| fs::metadata(p).map_or(0, |m| m.permissions().mode());
    mode(path) & 0o001 != 0 && path.ancestors().skip(1).all(|dir| mode(dir) & 0o001 != 0)
}

/// The leaktrace binary where an unprivileged user can run it.
fn binary_for_nobody(dir: &TempDir) -> PathBuf {
    let bin = leaktrace_bin();
    if world_executable(&bin) {
        return bin;
    }
    let copy = dir.join("leaktrace");
    fs::copy(&bin, &copy).expect("copying leaktrace for the unprivileged user");
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).expect("chmod 755");
    copy
}

/// Not root: refused before anything is attached or started, and the
/// message says root is needed. As root, the test drops to nobody (uid
/// 65534) with setpriv (or runuser); as a normal user it runs as is.
#[test]
fn non_root_is_refused() {
    let _serial = serial();
    let dir = TempDir::new("nonroot");
    let own_pid = std::process::id().to_string();
    let cases: [&[&str]; 2] = [&["trace", "--pid", &own_pid], &["run", "--", "/bin/true"]];
    for args in cases {
        let mut command = if is_root() {
            let bin = binary_for_nobody(&dir);
            if have_tool("setpriv") {
                let mut c = Command::new("setpriv");
                c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
                    .arg(bin);
                c
            } else if have_tool("runuser") {
                let mut c = Command::new("runuser");
                c.args(["-u", "nobody", "--"]).arg(bin);
                c
            } else {
                return prerequisite_missing(
                    "non_root_is_refused",
                    "setpriv or runuser, to run leaktrace as nobody (util-linux)",
                );
            }
        } else {
            Command::new(leaktrace_bin())
        };
        command.args(args).current_dir(dir.path());
        let finished = run_with_timeout("leaktrace (unprivileged)", &mut command, TIMEOUT);
        assert_refused(
            &format!("unprivileged leaktrace {args:?}"),
            &finished,
            &["must run as root", "sudo"],
            FAILURE,
        );
    }
}

/// A static program with no libc has no malloc to probe: refused with
/// "no allocator found".
#[test]
fn target_without_allocator_is_refused() {
    if !require_root("target_without_allocator_is_refused") {
        return;
    }
    let _serial = serial();
    let dir = TempDir::new("nomalloc");
    let nomalloc = build_nomalloc(&dir);
    let finished = leaktrace(&["run", "--", nomalloc.to_str().unwrap()], TIMEOUT);
    assert_refused(
        "run -- nomalloc",
        &finished,
        &["no allocator found", "defines malloc"],
        FAILURE,
    );
}

/// An unknown report format is a usage error: one line, non-zero exit, for
/// both subcommands (no root needed: arguments are checked first).
#[test]
fn unknown_format_is_refused() {
    // The bad value, the option, and (from clap's next line) what is valid.
    let words = [
        "invalid value 'xml' for '--format",
        "possible values",
        "json",
        "folded",
    ];
    let finished = leaktrace(&["run", "--format", "xml", "--", "/bin/true"], TIMEOUT);
    assert_refused("run --format xml", &finished, &words, USAGE);
    let finished = leaktrace(&["trace", "--pid", "1", "--format", "xml"], TIMEOUT);
    assert_refused("trace --format xml", &finished, &words, USAGE);
}

/// Out-of-range numbers are usage errors before anything is attached, never
/// a panic nor a silently wrapped value: a duration past what a clock can
/// hold, a zero interval (a period with no next tick), a sample size whose
/// MiB overflow 64 bits.
#[test]
fn out_of_range_numbers_are_refused() {
    for (args, words) in [
        (
            &[
                "trace",
                "--pid",
                "1",
                "--duration",
                "99999999999999999999999h",
            ][..],
            &["'99999999999999999999999h' is too long a duration"][..],
        ),
        (
            &["trace", "--pid", "1", "--interval", "0s"],
            &["'0s': the interval must be at least 1ms"],
        ),
        (
            &["serve", "--pid", "1", "--refresh", "0"],
            &["the interval must be at least 1ms"],
        ),
        (
            &["trace", "--pid", "1", "--sample-bytes", "17592186044417m"],
            &["'17592186044417m' is too large"],
        ),
    ] {
        let what = args.join(" ");
        let finished = leaktrace(args, TIMEOUT);
        assert_refused(&what, &finished, words, USAGE);
    }
}
