//! Idempotent set-up of the eBPF toolchain:
//! - `nightly-2026-07-01` with rust-src: its LLVM (22) is one bpf-linker reads;
//! - Debian's LLVM 22 dev packages, which bpf-linker links against;
//! - bpf-linker 0.13.0 built with `--features llvm-22`, with LLVM 22's
//!   llvm-config first on PATH (otherwise it finds LLVM 14 and fails);
//! - tracefs mounted, for the exec tracepoint;
//! - the page's charting library (uPlot) in `leaktrace/web/node_modules`,
//!   by `npm ci` from the committed lock file, which pins its version and
//!   integrity hash; `leaktrace/build.rs` embeds it into the binary.
//!
//! Each step checks first and does nothing when its tool is there.
use std::{path::Path, process::Command};

use anyhow::{Context as _, Result};

use crate::{run, workspace_root};

pub(crate) const NIGHTLY: &str = "nightly-2026-07-01";
const BPF_LINKER_VERSION: &str = "0.13.0";
/// The fuzzing campaign's driver (`cargo xtask fuzz`), on the nightly above.
const CARGO_FUZZ_VERSION: &str = "0.13.1";
const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";
const LLVM_PACKAGES: [&str; 4] = [
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];

pub(crate) fn all() -> Result<()> {
    nightly()?;
    llvm()?;
    bpf_linker()?;
    tracefs();
    web_assets()
}

/// What the test suite needs beyond the build: jemalloc (traced as Debian's
/// redis-server uses it), valgrind (the oracle the leak numbers are
/// checked against), golang-go (`go tool pprof` reads the pprof output)
/// dwarves (pahole: the oracle for the kernel struct offsets leaktrace
/// reads from BTF), python3.11-dev (the headers of Debian's python3, the
/// oracle for its frame layout), python3-matplotlib (a traced story), and
/// chromium with chromium-driver (the page is tested in a real browser,
/// over `WebDriver`).
pub(crate) fn test_dependencies() -> Result<()> {
    apt_packages(
        &[
            "libjemalloc2",
            "valgrind",
            "golang-go",
            "dwarves",
            "python3.11-dev",
            "python3-matplotlib",
            "chromium",
            "chromium-driver",
        ],
        "the test suite traces jemalloc, checks against valgrind, reads pprof output with go tool pprof, checks BTF offsets with pahole and Python layouts against Debian's python3 headers, traces a matplotlib program, and drives serve's page in headless chromium",
    )?;
    go_toolchains()
}

/// The Go releases the Go tests build their fixtures with, beside Debian's
/// 1.19 (`golang-go`): goroutine and symbol layouts changed across them.
pub(crate) const GO_BACKPORTS: [&str; 3] = ["golang-1.21-go", "golang-1.22-go", "golang-1.23-go"];

/// Where apt finds bookworm-backports (the newer Go releases live there).
const BACKPORTS_SOURCES: &str = "/etc/apt/sources.list.d/leaktrace-backports.sources";

/// The mirror the machine's own bookworm entry uses (deb822 sources): the
/// backports come from the same place.
fn debian_mirror() -> Option<String> {
    mirror_of(&std::fs::read_to_string("/etc/apt/sources.list.d/debian.sources").ok()?)
}

/// The first URI of the deb822 entry whose suites include bookworm.
fn mirror_of(text: &str) -> Option<String> {
    text.split("\n\n").find_map(|entry| {
        let field = |name: &str| {
            entry
                .lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        let suites = field("Suites")?;
        suites
            .split_whitespace()
            .any(|suite| suite == "bookworm")
            .then(|| field("URIs")?.split_whitespace().next().map(str::to_owned))?
    })
}

/// Installs the backported Go toolchains (each under /usr/lib/go-1.NN),
/// adding bookworm-backports to apt's sources first when it is missing.
/// Backports are never preferred over the release: only these packages are
/// taken from it (`-t`).
fn go_toolchains() -> Result<()> {
    if dpkg_installed(&GO_BACKPORTS) {
        return Ok(());
    }
    if !Path::new(BACKPORTS_SOURCES).exists() {
        let mirror = debian_mirror().context(
            "no Debian mirror found in /etc/apt/sources.list.d/debian.sources (its bookworm entry's URIs) to take bookworm-backports from",
        )?;
        std::fs::write(
            BACKPORTS_SOURCES,
            format!(
                "Types: deb\nURIs: {mirror}\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
            ),
        )
        .with_context(|| format!("writing {BACKPORTS_SOURCES} (are you root?)"))?;
    }
    eprintln!(
        "xtask: installing {} from bookworm-backports (the Go tests build their fixtures with each Go release)",
        GO_BACKPORTS.join(" ")
    );
    run(Command::new("apt-get").arg("update").arg("-q"))
        .context("apt-get update (are you root?)")?;
    run(Command::new("apt-get")
        .args([
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            "-t",
            "bookworm-backports",
        ])
        .args(GO_BACKPORTS)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn apt_packages(packages: &[&str], why: &str) -> Result<()> {
    if dpkg_installed(packages) {
        return Ok(());
    }
    apt_install(packages, why)
}

fn dpkg_installed(packages: &[&str]) -> bool {
    output_of(
        Command::new("dpkg-query")
            .args(["-W", "-f", "${Status}\n"])
            .args(packages),
    )
    .is_some_and(|out| {
        out.lines().count() == packages.len() && out.lines().all(|l| l.ends_with(" installed"))
    })
}

fn apt_install(packages: &[&str], why: &str) -> Result<()> {
    eprintln!("xtask: installing {} ({why})", packages.join(" "));
    run(Command::new("apt-get").arg("update").arg("-q"))
        .context("apt-get update (are you root?)")?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn cargo_bin() -> std::path::PathBuf {
    let home = std::env::var_os("CARGO_HOME").map_or_else(
        || Path::new(&std::env::var_os("HOME").unwrap_or_default()).join(".cargo"),
        Into::into,
    );
    home.join("bin")
}

/// Puts cargo's bin directory (bpf-linker) on a command's PATH.
pub(crate) fn add_tool_paths(command: &mut Command) {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths: Vec<_> = std::env::split_paths(&path).collect();
    let bin = cargo_bin();
    if !paths.contains(&bin) {
        paths.insert(0, bin);
    }
    command.env("PATH", std::env::join_paths(paths).expect("valid PATH"));
}

fn output_of(command: &mut Command) -> Option<String> {
    let output = command.output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

fn nightly() -> Result<()> {
    let has_src = output_of(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        NIGHTLY,
    ]))
    .is_some_and(|list| list.lines().any(|l| l.starts_with("rust-src")));
    if has_src {
        return Ok(());
    }
    eprintln!("xtask: installing {NIGHTLY} with rust-src (the eBPF crate needs it)");
    run(Command::new("rustup").args([
        "toolchain",
        "install",
        NIGHTLY,
        "--profile",
        "minimal",
        "--component",
        "rust-src",
    ]))
}

fn llvm() -> Result<()> {
    let why = "bpf-linker links against them";
    if !Path::new(LLVM_BIN).join("llvm-config").exists() {
        return apt_install(&LLVM_PACKAGES, why);
    }
    apt_packages(&LLVM_PACKAGES, why)
}

fn bpf_linker() -> Result<()> {
    let linker = cargo_bin().join("bpf-linker");
    let version = output_of(Command::new(&linker).arg("--version")).unwrap_or_default();
    if version.contains(BPF_LINKER_VERSION) {
        return Ok(());
    }
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (takes a few minutes, once)"
    );
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![Path::new(LLVM_BIN).to_path_buf()];
    paths.extend(std::env::split_paths(&path));
    run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("PATH", std::env::join_paths(paths)?),
    )
}

/// cargo-fuzz at the pinned version, for `cargo xtask fuzz` only (the
/// suite's short fuzz run needs nothing): installed unless that version
/// is there.
pub(crate) fn cargo_fuzz() -> Result<()> {
    let version = output_of(Command::new(cargo_bin().join("cargo-fuzz")).arg("--version"))
        .unwrap_or_default();
    if version.split_whitespace().nth(1) == Some(CARGO_FUZZ_VERSION) {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-fuzz {CARGO_FUZZ_VERSION} (once)");
    run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())).args([
            "install",
            "cargo-fuzz",
            "--locked",
            "--version",
            CARGO_FUZZ_VERSION,
        ]),
    )
}

/// The page's charting library: `npm ci` in `leaktrace/web` unless
/// `node_modules` already holds the version `package-lock.json` pins.
/// `npm ci` installs exactly the lock file's packages and checks each
/// against its integrity hash; install scripts are not run (uPlot has
/// none). npm comes with node on the machines this runs on; Debian's
/// `npm` package is installed when it is missing.
fn web_assets() -> Result<()> {
    let web = workspace_root().join("leaktrace/web");
    let version = |path: &Path, pointer: &str| -> Option<String> {
        let text = std::fs::read_to_string(path).ok()?;
        let value: serde_json::Value = serde_json::from_str(&text).ok()?;
        value.pointer(pointer)?.as_str().map(str::to_owned)
    };
    let pinned = version(
        &web.join("package-lock.json"),
        "/packages/node_modules~1uplot/version",
    )
    .context("leaktrace/web/package-lock.json pins no uplot")?;
    let installed = version(&web.join("node_modules/uplot/package.json"), "/version");
    if installed.as_deref() == Some(pinned.as_str()) {
        return Ok(());
    }
    if output_of(Command::new("npm").arg("--version")).is_none() {
        apt_install(
            &["npm"],
            "the page's charting library is installed from the npm registry",
        )?;
    }
    eprintln!("xtask: installing uplot {pinned} for the page (npm ci in leaktrace/web)");
    run(Command::new("npm")
        .args(["ci", "--ignore-scripts", "--no-audit", "--no-fund"])
        .current_dir(&web))
}

/// The kernel programs attach to a tracepoint, found through tracefs.
fn tracefs() {
    if Path::new("/sys/kernel/tracing/events").exists() {
        return;
    }
    let _: Result<_, _> = Command::new("mount")
        .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
        .status();
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_mirror_is_the_bookworm_entrys_not_the_security_ones() {
        let sources = "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\nTypes: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n";
        assert_eq!(
            super::mirror_of(sources).as_deref(),
            Some("http://mirror.example/debian")
        );
        assert_eq!(
            super::mirror_of("Suites: bookworm-security\nURIs: x\n"),
            None
        );
        assert!(
            super::debian_mirror().is_some(),
            "this machine's own sources"
        );
    }
}
