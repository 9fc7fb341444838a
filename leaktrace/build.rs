//! Compiles the kernel programs (leaktrace-ebpf) with the pinned nightly and
//! bpf-linker, so that the userspace binary embeds them; and finds the
//! charting library the page embeds (uPlot, installed from npm into
//! `web/node_modules` by `cargo xtask setup`), checking that it is the
//! version `web/package-lock.json` pins.
use std::path::Path;

use anyhow::{Context as _, bail};

/// The nightly whose LLVM (22) the pinned bpf-linker can read; newer nightlies
/// use LLVM 23, which it cannot. xtask installs it (`cargo xtask setup`).
const EBPF_TOOLCHAIN: &str = "nightly-2026-07-01";

fn main() -> anyhow::Result<()> {
    web_assets()?;
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

/// Points `LEAKTRACE_UPLOT_*` at uPlot's installed files, for
/// `include_bytes!` in `src/report/assets.rs`. Missing or another version
/// than the lock file's: the build fails, saying what to run (a build
/// script fetches nothing).
fn web_assets() -> anyhow::Result<()> {
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
    let lock_path = web.join("package-lock.json");
    let installed = web.join("node_modules/uplot");
    println!("cargo:rerun-if-changed={}", lock_path.display());
    println!(
        "cargo:rerun-if-changed={}",
        installed.join("package.json").display()
    );
    let lock: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&lock_path)
            .with_context(|| format!("reading {}", lock_path.display()))?,
    )
    .with_context(|| format!("parsing {}", lock_path.display()))?;
    let pinned = lock["packages"]["node_modules/uplot"]["version"]
        .as_str()
        .context("package-lock.json pins no uplot")?;
    let found = std::fs::read_to_string(installed.join("package.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|package| package["version"].as_str().map(str::to_owned));
    match found {
        Some(version) if version == pinned => {}
        Some(version) => bail!(
            "leaktrace's page embeds uplot {pinned} (web/package-lock.json), but web/node_modules has {version}: run `cargo xtask setup` (it runs npm ci in leaktrace/web)"
        ),
        None => bail!(
            "leaktrace's page embeds uplot {pinned}, not installed in leaktrace/web/node_modules: run `cargo xtask setup` (it runs npm ci in leaktrace/web) before building"
        ),
    }
    for (name, file) in [
        ("LEAKTRACE_UPLOT_JS", "dist/uPlot.iife.min.js"),
        ("LEAKTRACE_UPLOT_CSS", "dist/uPlot.min.css"),
        ("LEAKTRACE_UPLOT_LICENSE", "LICENSE"),
    ] {
        let path = installed.join(file);
        if !path.is_file() {
            bail!(
                "{} is missing: run `cargo xtask setup` (it runs npm ci in leaktrace/web)",
                path.display()
            );
        }
        println!("cargo:rerun-if-changed={}", path.display());
        println!("cargo:rustc-env={name}={}", path.display());
    }
    Ok(())
}
