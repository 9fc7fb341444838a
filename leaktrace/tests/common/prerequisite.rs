//! What a test does when something it needs is missing (root, a tool, a
//! library, a file): it fails, naming what is missing. Only when
//! `LEAKTRACE_ALLOW_SKIPS=1` is set, and `CI` is not, does it skip instead:
//! it prints a loud SKIPPED line and appends one line (the test's name and
//! the reason) to the file named by `LEAKTRACE_SKIP_LOG`, which
//! `cargo xtask test` reads to count and list the skips.
//!
//! The unit tests in `src` use this same file (`src/test_support.rs`
//! includes it), so both kinds of test skip, or refuse to, the same way.

use std::io::Write as _;

/// The environment variable that allows skipping.
pub(super) const ALLOW_SKIPS: &str = "LEAKTRACE_ALLOW_SKIPS";
/// The environment variable naming the file skips are appended to.
pub(super) const SKIP_LOG: &str = "LEAKTRACE_SKIP_LOG";

/// `test` cannot run because `missing` is missing. Panics (the test fails)
/// unless skipping is allowed; when it is, records the skip and returns,
/// and the test must then return at once:
///
/// ```ignore
/// if !have_tool("valgrind") {
///     return prerequisite_missing("my_test", "valgrind (apt-get install valgrind)");
/// }
/// ```
pub(crate) fn prerequisite_missing(test: &str, missing: &str) {
    let missing = missing.replace(['\n', '\t'], " ");
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: missing {missing}; CI is set, so the test fails instead of skipping"
    );
    assert!(
        std::env::var_os(ALLOW_SKIPS).is_some_and(|v| v == "1"),
        "{test}: missing {missing} (set {ALLOW_SKIPS}=1 to skip such tests instead, counted by cargo xtask test)"
    );
    // Straight to stderr, not through eprintln!, which the test harness
    // captures (and shows only for failed tests).
    let rule = "=".repeat(65);
    let _: std::io::Result<()> = std::io::stderr()
        .write_all(format!("\n{rule}\nSKIPPED: {test}: missing {missing}\n{rule}\n\n").as_bytes());
    if let Some(log) = std::env::var_os(SKIP_LOG) {
        let line = format!("{test}\t{missing}\n");
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|mut file| file.write_all(line.as_bytes()))
            .unwrap_or_else(|e| {
                panic!(
                    "{test}: skipped, but the skip cannot be counted: appending to {SKIP_LOG}={}: {e}",
                    log.to_string_lossy()
                )
            });
    }
}
