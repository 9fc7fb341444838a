//! Fixtures: temporary directories (kept when a test fails), compiling the C
//! programs of `tests/fixtures/` with gcc, and the `/* SITE name */` line
//! markers of a fixture source.

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{SystemTime, UNIX_EPOCH},
};

pub(crate) fn fixture_source(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A fresh directory under the system temp dir, removed on drop unless the
/// test is failing (then it is kept, and its path printed, for a look).
pub(crate) struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub(crate) fn new(tag: &str) -> TempDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = std::env::temp_dir().join(format!(
            "leaktrace-test-{tag}-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        // Readable and searchable by anyone: the non-root test runs from here.
        let _: Result<_, _> = fs::set_permissions(&path, fs::Permissions::from_mode(0o755));
        TempDir { path }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "(test failed: keeping {} for inspection)",
                self.path.display()
            );
        } else {
            let _: Result<_, _> = fs::remove_dir_all(&self.path);
        }
    }
}

/// Compiles `tests/fixtures/<source>` with gcc into `dir/<output>`.
pub(crate) fn compile(dir: &TempDir, source: &str, output: &str, flags: &[&str]) -> PathBuf {
    let src = fixture_source(source);
    let out = dir.join(output);
    let result = Command::new("gcc")
        .args(flags)
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| panic!("running gcc (is it installed?): {e}"));
    assert!(
        result.status.success(),
        "gcc {flags:?} {} failed:\n{}",
        src.display(),
        String::from_utf8_lossy(&result.stderr)
    );
    out
}

/// The leaky fixture, with exact frames: no optimization, no inlining,
/// frame pointers, debug info.
pub(crate) fn build_leaky(dir: &TempDir) -> PathBuf {
    compile(
        dir,
        "leaky.c",
        "leaky",
        &[
            "-O0",
            "-g",
            "-fno-omit-frame-pointer",
            "-fno-inline",
            "-pthread",
        ],
    )
}

pub(crate) fn build_spin(dir: &TempDir) -> PathBuf {
    compile(
        dir,
        "spin.c",
        "spin",
        &["-O0", "-g", "-fno-omit-frame-pointer"],
    )
}

/// Builds `spin` in `dir` and starts it; its counts (one line each 200 ms)
/// come through the returned lines.
pub(crate) fn start_spin(dir: &TempDir) -> (super::Guarded, super::Lines) {
    let spin = build_spin(dir);
    let mut spinner = super::Guarded::spawn(
        "spin",
        Command::new(&spin)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null()),
    );
    let counts = spinner.stdout_lines();
    (spinner, counts)
}

/// A static program with no libc, hence no malloc anywhere.
pub(crate) fn build_nomalloc(dir: &TempDir) -> PathBuf {
    compile(dir, "nomalloc.c", "nomalloc", &["-static", "-nostdlib"])
}

/// Line number of each `/* SITE name */` marker in a fixture source.
pub(crate) fn site_lines(source: &str) -> HashMap<String, u32> {
    let text = fs::read_to_string(fixture_source(source)).expect("reading fixture source");
    let mut lines = HashMap::new();
    for (index, line) in text.lines().enumerate() {
        if let Some(rest) = line.split("/* SITE ").nth(1) {
            let name = rest.split_whitespace().next().unwrap_or_default();
            lines.insert(name.to_string(), index as u32 + 1);
        }
    }
    lines
}
