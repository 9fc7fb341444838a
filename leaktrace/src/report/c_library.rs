//! What the C library holds for itself, apart from the leaks: the stacks
//! it caches for reuse when threads end (`allocate_stack` → mmap, 8 MiB
//! each by default), the thread-local storage blocks beside them
//! (`_dl_allocate_tls` → the dtv's calloc), and each stdio stream's buffer
//! (`_IO_file_doallocate`). Each is allocated once and kept on purpose;
//! listed among the call sites, the thread stacks were the largest "leak"
//! of every multi-threaded program (32 MiB of the bundled demo's 33), and
//! pprof's node fraction then dropped the real leaks from `go tool pprof
//! -top`. They get their own section in every report, with their bytes.
//!
//! A site is the C library's only when the frame that names the internal
//! function lies in the C library's own objects (`libc.so.6`, the dynamic
//! loader): a traced program cannot hide a leak by naming a function
//! `allocate_stack`. In a static executable the C library is part of the
//! program, and these stay among the sites.
use serde::Serialize;

use super::SiteReport;

/// What the C library holds at a site.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A thread's stack, cached by glibc for the next thread.
    ThreadStack,
    /// A thread's TLS blocks (dtv), kept with its stack.
    ThreadStorage,
    /// A stdio stream's buffer.
    StdioBuffer,
}

impl Kind {
    /// Every kind, in a fixed order.
    pub const ALL: [Kind; 3] = [Kind::ThreadStack, Kind::ThreadStorage, Kind::StdioBuffer];

    /// Its name in JSON and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Kind::ThreadStack => "thread_stack",
            Kind::ThreadStorage => "thread_storage",
            Kind::StdioBuffer => "stdio_buffer",
        }
    }

    /// What a person reads.
    pub fn describe(self) -> &'static str {
        match self {
            Kind::ThreadStack => "thread stacks (cached by the C library for reuse)",
            Kind::ThreadStorage => "thread-local storage blocks (kept with the stacks)",
            Kind::StdioBuffer => "stdio stream buffers",
        }
    }
}

/// A site the C library holds, with what it is.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CLibrarySite {
    pub kind: Kind,
    #[serde(flatten)]
    pub site: SiteReport,
}

/// Whether `module` (an object's path) is the C library or its loader.
fn is_c_library(module: &str) -> bool {
    let name = module.rsplit('/').next().unwrap_or(module);
    name.starts_with("libc.so") || name.starts_with("libc-") || name.starts_with("ld-linux")
}

/// The internal function a frame names, without glibc's `__GI_` alias.
fn internal_kind(function: &str) -> Option<Kind> {
    match function.strip_prefix("__GI_").unwrap_or(function) {
        "_dl_allocate_tls" | "allocate_dtv" | "__dl_allocate_tls" => Some(Kind::ThreadStorage),
        "allocate_stack" => Some(Kind::ThreadStack),
        "_IO_file_doallocate" | "__GI__IO_file_doallocate" => Some(Kind::StdioBuffer),
        _ => None,
    }
}

/// What the C library holds at `site`, if it is one of its own.
pub fn classify(site: &SiteReport) -> Option<Kind> {
    // The innermost internal function decides: the dtv's calloc runs
    // inside allocate_stack too.
    site.frames
        .iter()
        .filter(|frame| is_c_library(&frame.module))
        .find_map(|frame| internal_kind(&frame.function))
}

/// Splits the C library's own sites from `sites`: (the others, the C
/// library's), each in the order they came.
pub fn split(sites: Vec<SiteReport>) -> (Vec<SiteReport>, Vec<CLibrarySite>) {
    let mut others = Vec::with_capacity(sites.len());
    let mut c_library = Vec::new();
    for site in sites {
        match classify(&site) {
            Some(kind) => c_library.push(CLibrarySite { kind, site }),
            None => others.push(site),
        }
    }
    (others, c_library)
}

/// One line per kind: "32.0 MiB in 4 thread stacks (...)", largest first.
pub fn summary_lines(sites: &[CLibrarySite], human: impl Fn(u64) -> String) -> Vec<String> {
    let mut by_kind: Vec<(Kind, u64, u64)> = Vec::new();
    for site in sites {
        match by_kind.iter_mut().find(|(kind, ..)| *kind == site.kind) {
            Some(entry) => {
                entry.1 += site.site.bytes;
                entry.2 += site.site.count;
            }
            None => by_kind.push((site.kind, site.site.bytes, site.site.count)),
        }
    }
    by_kind.sort_by_key(|entry| std::cmp::Reverse(entry.1));
    by_kind
        .into_iter()
        .map(|(kind, bytes, count)| format!("{} in {count} {}", human(bytes), kind.describe()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::symbolize::{Frame, FrameKind};

    fn frame(function: &str, module: &str) -> Frame {
        Frame {
            function: function.into(),
            file: None,
            line: None,
            module: module.into(),
            address: 0,
            inlined: false,
            fallback: false,
            kind: FrameKind::Native,
            python_unmatched: false,
        }
    }

    fn site(bytes: u64, frames: Vec<Frame>) -> SiteReport {
        SiteReport {
            pid: 1,
            allocator: "mmap".into(),
            bytes,
            count: 1,
            oldest_age_ms: 0,
            growth: None,
            frames,
            ids: Vec::new(),
        }
    }

    const LIBC: &str = "/usr/lib/x86_64-linux-gnu/libc.so.6";
    const LOADER: &str = "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2";

    #[test]
    fn the_c_librarys_own_sites_are_told_from_leaks() {
        let stack = site(
            8 << 20,
            vec![
                frame("allocate_stack", LIBC),
                frame("__pthread_create_2_1", LIBC),
                frame("main", "/srv/app"),
            ],
        );
        let dtv = site(
            272,
            vec![
                frame("calloc", LOADER),
                frame("allocate_dtv", LOADER),
                frame("__GI__dl_allocate_tls", LOADER),
                frame("allocate_stack", LIBC),
                frame("main", "/srv/app"),
            ],
        );
        let stdio = site(
            4096,
            vec![
                frame("__GI__IO_file_doallocate", LIBC),
                frame("__printf", LIBC),
                frame("main", "/srv/app"),
            ],
        );
        let leak = site(100, vec![frame("new_session", "/srv/app")]);
        // A program cannot hide a leak behind the name.
        let impostor = site(5000, vec![frame("allocate_stack", "/srv/app")]);
        assert_eq!(classify(&stack), Some(Kind::ThreadStack));
        assert_eq!(classify(&dtv), Some(Kind::ThreadStorage));
        assert_eq!(classify(&stdio), Some(Kind::StdioBuffer));
        let (others, c_library) = split(vec![stack, leak.clone(), dtv, impostor.clone(), stdio]);
        assert_eq!(others, [leak, impostor]);
        let lines = summary_lines(&c_library, |b| format!("{b} B"));
        assert_eq!(
            lines,
            [
                "8388608 B in 1 thread stacks (cached by the C library for reuse)",
                "4096 B in 1 stdio stream buffers",
                "272 B in 1 thread-local storage blocks (kept with the stacks)",
            ]
        );
    }
}
