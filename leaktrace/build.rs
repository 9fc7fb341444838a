//! Compiles the kernel programs (leaktrace-ebpf) with the pinned nightly and
//! bpf-linker, so that the userspace binary embeds them.

use std::os::fd::AsRawFd as _;

/// The nightly whose LLVM bpf-linker can read (see DESIGN.md).
const EBPF_TOOLCHAIN: &str = "nightly-2026-07-01";

/// Gives this build script (and so the nested cargo that aya-build spawns
/// with an inherited stdin) an empty stdin. On fresh clones, with cargo
/// compiling other crates in parallel, the nested cargo's first rustc probe
/// (`rustc -`, which reads its program from stdin) was seen reading another
/// compiler's diagnostics and failing before compiling anything; whatever
/// fd 0 was then, /dev/null is the only right stdin for a build.
fn empty_stdin() {
    let before = std::fs::read_link("/proc/self/fd/0")
        .map_or_else(|e| format!("unreadable ({e})"), |p| p.display().to_string());
    if before != "/dev/null" {
        println!("cargo:warning=build script stdin was {before}; using /dev/null");
    }
    if let Ok(null) = std::fs::File::open("/dev/null") {
        // SAFETY: dup2 onto fd 0 of this process, with an fd we own.
        unsafe { libc::dup2(null.as_raw_fd(), 0) };
    }
}

/// The nested cargo (a different, pinned toolchain) must not use the outer
/// cargo's jobserver: it would take the file descriptors cargo names in
/// CARGO_MAKEFLAGS as the jobserver's, whatever they are in this process.
fn own_jobserver() {
    for variable in ["CARGO_MAKEFLAGS", "MAKEFLAGS", "MFLAGS"] {
        // SAFETY: the build script is single-threaded here.
        unsafe { std::env::remove_var(variable) };
    }
}

fn main() -> anyhow::Result<()> {
    empty_stdin();
    own_jobserver();
    let root_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../leaktrace-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "leaktrace-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(EBPF_TOOLCHAIN),
    )
}
