//! The test environment: the leaktrace binary under test, root and tool
//! checks (a failure, or a counted skip: see `prerequisite`), tools on
//! PATH, and the lock that makes tracing tests run one at a time.

use super::prerequisite::prerequisite_missing;
use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard},
};

/// The leaktrace binary under test.
pub(crate) fn leaktrace_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_leaktrace"))
}

/// Effective uid, from /proc/self/status.
pub(crate) fn effective_uid() -> u32 {
    let status = fs::read_to_string("/proc/self/status").expect("reading /proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .expect("/proc/self/status has a Uid: line");
    line.split_whitespace()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .expect("effective uid")
}

pub(crate) fn is_root() -> bool {
    effective_uid() == 0
}

/// True when the test may proceed. Not root: the test fails, saying so,
/// unless skips are allowed (`LEAKTRACE_ALLOW_SKIPS=1`, never under `CI`):
/// then it prints a loud SKIPPED line, the skip is counted and this
/// returns false (see [`prerequisite_missing`]).
pub(crate) fn require_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    prerequisite_missing(
        test,
        "root (leaktrace loads eBPF programs: run the tests as root)",
    );
    false
}

/// True when `tool` is on PATH; otherwise [`prerequisite_missing`] (with
/// `hint`, e.g. the package to install) and false when skips are allowed.
pub(crate) fn require_tool(test: &str, tool: &str, hint: &str) -> bool {
    if have_tool(tool) {
        return true;
    }
    prerequisite_missing(test, &format!("{tool} ({hint})"));
    false
}

/// Whether `tool` is on PATH.
pub(crate) fn have_tool(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| is_executable(&dir.join(tool)))
    })
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Tests that trace run one at a time: two tracers at once would disturb
/// each other's timing (and the machine may have two cores).
pub(crate) fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
