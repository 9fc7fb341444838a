//! Compiles the kernel programs (leaktrace-ebpf) with the pinned nightly and
//! bpf-linker, so that the userspace binary embeds them.

/// The nightly whose LLVM (22) the pinned bpf-linker can read; newer nightlies
/// use LLVM 23, which it cannot. xtask installs it (`cargo xtask setup`).
const EBPF_TOOLCHAIN: &str = "nightly-2026-07-01";

fn main() -> anyhow::Result<()> {
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
