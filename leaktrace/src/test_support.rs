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

/// The Go releases the fixtures are built with, and how (the same file the
/// integration tests use), with the two helpers it needs from theirs.
#[path = "../tests/common/go.rs"]
#[allow(dead_code)]
pub(crate) mod go;

pub(crate) use go_scratch::{TempDir, fixture_source};

/// A scratch directory for the Go fixtures a unit test builds, removed on
/// drop, and where those fixtures' sources are.
mod go_scratch {
    use std::{
        fs,
        path::{Path, PathBuf},
        sync::atomic::{AtomicU32, Ordering},
    };

    pub(crate) fn fixture_source(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    pub(crate) struct TempDir {
        path: PathBuf,
    }

    impl TempDir {
        pub(crate) fn new(tag: &str) -> TempDir {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let path = std::env::temp_dir().join(format!(
                "leaktrace-unit-{tag}-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            fs::create_dir_all(&path)
                .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
            TempDir { path }
        }

        pub(crate) fn join(&self, name: &str) -> PathBuf {
            self.path.join(name)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _: Result<_, _> = fs::remove_dir_all(&self.path);
        }
    }
}
