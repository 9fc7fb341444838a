//! `cargo xtask torture`: the target is never harmed. For a given time,
//! C, C++, Python and Go fixtures (`leaktrace/tests/fixtures/torture/`:
//! fork, exec, vfork, longjmp, signals inside malloc, dlopen/dlclose,
//! exceptions through allocating frames, thread and goroutine churn) run
//! under `leaktrace trace --all` and `leaktrace run`, which are killed (SIGKILL)
//! at random moments; every fixture must exit 0 with the output of its
//! untraced run, and no probe may be left behind. The loop and its checks
//! are in `torture/engine.rs`, shared with the suite's short run
//! (`leaktrace/tests/torture.rs`).
mod engine;

use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context as _, Result, bail};

use crate::{leaktrace_binary, run, workspace_root};

/// Builds the fixtures into `dir`: the C program and its plugin, the C++
/// program (frame pointers, debug info, like the tests' fixtures) and the
/// Go program with Debian's Go 1.19.
fn build(dir: &Path) -> Result<()> {
    let sources = workspace_root().join("leaktrace/tests/fixtures/torture");
    std::fs::create_dir_all(dir)?;
    let flags = ["-O1", "-g", "-fno-omit-frame-pointer", "-pthread", "-o"];
    run(Command::new("cc")
        .args(["-shared", "-fPIC"])
        .args(flags)
        .arg(dir.join("libtorture_plugin.so"))
        .arg(sources.join("plugin.c")))?;
    run(Command::new("cc")
        .args(flags)
        .arg(dir.join("torture"))
        .arg(sources.join("torture.c"))
        .arg("-ldl"))?;
    run(Command::new("c++")
        .args(flags)
        .arg(dir.join("torture_cxx"))
        .arg(sources.join("torture.cpp")))?;
    let go = ["/usr/lib/go-1.19/bin/go", "go"]
        .into_iter()
        .find(|go| Path::new(go).exists())
        .unwrap_or("go");
    run(Command::new(go)
        .args(["build", "-o"])
        .arg(dir.join("torture_go"))
        .arg(sources.join("torture.go"))
        .env("GOTOOLCHAIN", "local")
        .env("GO111MODULE", "off")
        .env("GOCACHE", dir.join("gocache"))
        .env("GOPATH", dir.join("gopath"))
        .env("HOME", dir))
    .context("building the Go fixture (Debian's golang-go; cargo xtask test installs it)")
}

/// The torture for `duration`; fails on any crash, output mismatch, probe
/// left or harness error.
pub(crate) fn run_for(duration: Duration, seed: Option<u64>) -> Result<()> {
    let dir = workspace_root().join("target/torture");
    build(&dir)?;
    let seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    eprintln!(
        "xtask: torture for {} s (seed {seed}): trace --all and run killed at random moments",
        duration.as_secs()
    );
    let python_script = workspace_root().join("leaktrace/tests/fixtures/torture/torture.py");
    let config = engine::Config {
        leaktrace: leaktrace_binary(),
        programs: engine::programs(&dir, &python_script),
        duration,
        seed,
        dir: dir.join("reports"),
    };
    let tally = engine::torture(&config).map_err(anyhow::Error::msg)?;
    print!("{}", tally.summary());
    if tally.failed() {
        bail!("the torture harmed a target or left a probe (seed {seed})");
    }
    Ok(())
}
