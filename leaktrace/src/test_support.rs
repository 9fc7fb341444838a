//! Helpers for the unit tests, the same files the integration tests use
//! (`tests/common`): what a test does when a prerequisite is missing, and
//! the binutils oracle for tests about the libraries on this machine.

#[path = "../tests/common/prerequisite.rs"]
mod prerequisite;

#[path = "../tests/common/objdump.rs"]
#[allow(dead_code)]
pub(crate) mod objdump;

pub(crate) use prerequisite::prerequisite_missing;

/// The contents of `path`, or None after [`prerequisite_missing`] said it
/// is missing (when skipping is allowed; otherwise the test fails there).
pub(crate) fn read_or_missing(test: &str, path: &str) -> Option<Vec<u8>> {
    match std::fs::read(path) {
        Ok(data) => Some(data),
        Err(e) => {
            prerequisite_missing(test, &format!("{path} ({e})"));
            None
        }
    }
}

/// Whether readelf and objdump are there; if not, [`prerequisite_missing`]
/// has been told (and false returned, when skipping is allowed).
pub(crate) fn require_binutils(test: &str) -> bool {
    let missing = objdump::missing_tools();
    if missing.is_empty() {
        return true;
    }
    prerequisite_missing(
        test,
        &format!("{} (apt-get install binutils)", missing.join(" and ")),
    );
    false
}

/// Whether the test runs as root; if not, [`prerequisite_missing`] has been
/// told (and false returned, when skipping is allowed).
pub(crate) fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    prerequisite_missing(test, "root (it reads other processes' page frames)");
    false
}
