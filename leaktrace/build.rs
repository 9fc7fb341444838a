//! Compiles the kernel programs (leaktrace-ebpf) with the pinned nightly and
//! bpf-linker, so that the userspace binary embeds them.

/// The nightly whose LLVM bpf-linker can read (see DESIGN.md).
const EBPF_TOOLCHAIN: &str = "nightly-2026-07-01";

/// Attempts at the nested eBPF build. On a fresh clone, with cargo compiling
/// other crates in parallel, the nested cargo's first rustc probe has been
/// seen (twice in about ten runs) reading another compiler's diagnostics as
/// its input and failing at once, before compiling anything; the same build
/// passes when run again. A real error fails every attempt.
const ATTEMPTS: usize = 3;

fn main() -> anyhow::Result<()> {
    let root_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../leaktrace-ebpf");
    let mut attempt = 1;
    loop {
        let built = aya_build::build_ebpf(
            [aya_build::Package {
                name: "leaktrace-ebpf",
                root_dir,
                ..Default::default()
            }],
            aya_build::Toolchain::Custom(EBPF_TOOLCHAIN),
        );
        match built {
            Ok(()) => return Ok(()),
            Err(err) if attempt < ATTEMPTS => {
                println!(
                    "cargo:warning=eBPF build attempt {attempt} of {ATTEMPTS} failed ({err}); trying again"
                );
                attempt += 1;
            }
            Err(err) => return Err(err),
        }
    }
}
