//! Go fixtures built with each Go release on the machine: Debian's 1.19
//! (`golang-go`) and bookworm-backports' 1.21, 1.22 and 1.23 (installed by
//! `cargo xtask test`), stripped (`-ldflags=-s -w`) or not. Goroutine and
//! symbol-table layouts changed across these releases, so the Go tests run
//! against each.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use super::{TempDir, fixture_source, prerequisite_missing};

/// The Go releases the tests build with, oldest first.
pub(crate) const GO_RELEASES: [&str; 4] = ["1.19", "1.21", "1.22", "1.23"];

/// The `go` command of one release (each Debian package installs its own
/// tree under /usr/lib/go-1.NN).
pub(crate) fn go_command(release: &str) -> PathBuf {
    Path::new("/usr/lib").join(format!("go-{release}/bin/go"))
}

/// How a fixture is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Symbols {
    /// The default: `.symtab` and DWARF kept.
    Kept,
    /// `-ldflags=-s -w`: no `.symtab`, no DWARF; only `.gopclntab` names code.
    Stripped,
}

/// Builds `tests/fixtures/go/NAME.go` with Go `release` into `dir`, or
/// returns `None` after reporting the missing toolchain (the test must then
/// return at once: see [`prerequisite_missing`]). Panics when the build fails.
pub(crate) fn build_go(
    test: &str,
    dir: &TempDir,
    name: &str,
    release: &str,
    symbols: Symbols,
) -> Option<PathBuf> {
    let suffix = match symbols {
        Symbols::Kept => "",
        Symbols::Stripped => "-stripped",
    };
    build_go_source(
        test,
        dir,
        &format!("go/{name}.go"),
        &format!("{name}-go{release}{suffix}"),
        release,
        symbols,
    )
}

/// [`build_go`] of any fixture source (`SOURCE`, under `tests/fixtures`)
/// into `dir/OUTPUT`.
pub(crate) fn build_go_source(
    test: &str,
    dir: &TempDir,
    source: &str,
    output: &str,
    release: &str,
    symbols: Symbols,
) -> Option<PathBuf> {
    let go = go_command(release);
    if !go.exists() {
        let package = if release == "1.19" {
            "golang-go".to_string()
        } else {
            format!("golang-{release}-go from bookworm-backports")
        };
        prerequisite_missing(
            test,
            &format!(
                "Go {release} at {} (apt-get install {package}; cargo xtask test installs it)",
                go.display()
            ),
        );
        return None;
    }
    let output = dir.join(output);
    let mut command = Command::new(&go);
    command.arg("build").arg("-o").arg(&output);
    if symbols == Symbols::Stripped {
        command.arg("-ldflags=-s -w");
    }
    let built = command
        .arg(fixture_source(source))
        .env("GOCACHE", dir.join("gocache"))
        .env("GOPATH", dir.join("gopath"))
        .env("HOME", dir.join("home"))
        .env("GOTOOLCHAIN", "local")
        .env("GO111MODULE", "off")
        .output()
        .unwrap_or_else(|e| panic!("{test}: running {}: {e}", go.display()));
    assert!(
        built.status.success(),
        "{test}: go {release} build of {source}: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    Some(output)
}
