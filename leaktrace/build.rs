//! Embeds the kernel programs (leaktrace-ebpf), built with the pinned
//! nightly and bpf-linker.
//!
//! `cargo xtask` builds the eBPF object in a step of its own and names it
//! in LEAKTRACE_EBPF_OBJECT: on fresh clones, building it from here (with
//! aya-build's nested cargo) while the outer cargo compiled other crates in
//! parallel was seen failing deterministically at the nested cargo's first
//! rustc probe, which read another compiler's diagnostics as its program.
//! A plain `cargo build` still builds it here with aya-build.
use std::{env, fs, path::PathBuf};

use anyhow::Context as _;

/// The nightly whose LLVM bpf-linker can read (see DESIGN.md).
const EBPF_TOOLCHAIN: &str = "nightly-2026-07-01";

fn main() -> anyhow::Result<()> {
    let root_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../leaktrace-ebpf");
    println!("cargo:rerun-if-env-changed=LEAKTRACE_EBPF_OBJECT");
    if let Some(object) = env::var_os("LEAKTRACE_EBPF_OBJECT") {
        let object = PathBuf::from(object);
        println!("cargo:rerun-if-changed={}", object.display());
        println!("cargo:rerun-if-changed={root_dir}");
        let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
        fs::copy(&object, out_dir.join("leaktrace"))
            .with_context(|| format!("copying the eBPF object {}", object.display()))?;
        return Ok(());
    }
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "leaktrace-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(EBPF_TOOLCHAIN),
    )
}
