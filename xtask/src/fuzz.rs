//! `cargo xtask fuzz [--target NAME] [--runs N | --seconds S]`: the long,
//! coverage-guided campaign over leaktrace's parsers of untrusted input
//! (`leaktrace::fuzz::Target`), with cargo-fuzz (libFuzzer, address
//! sanitizer, overflow checks on) on the pinned nightly. The suite's
//! short run (`leaktrace/tests/fuzz.rs`) replays the same corpora.
//!
//! Each target starts from its committed seeds
//! (`leaktrace/tests/fuzz_corpus/`) and keeps what it learns in the target
//! directory (`fuzz/corpus/NAME`, reused by the next campaign); a crash
//! lands in `fuzz/artifacts/NAME/`. Every input has 10 s and 2 GiB (RSS;
//! one allocation at most 1 GiB): more is a hang or a memory bomb, and
//! fails like a crash. Prints the inputs each target ran.
use std::{fs, path::PathBuf, process::Command, time::Instant};

use anyhow::{Context as _, Result, bail};

use crate::{setup, workspace_root};

/// The targets, as `leaktrace/fuzz/Cargo.toml` names them.
pub(crate) const TARGETS: [&str; 6] = [
    "elf",
    "eh_frame",
    "placement",
    "diff_json",
    "diff_pprof",
    "http",
];

/// How long each target runs.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Budget {
    Runs(u64),
    Seconds(u64),
}

/// Where the campaign builds and keeps its corpora: `fuzz/` in the
/// target directory (`CARGO_TARGET_DIR`, else `target`).
fn fuzz_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|dir| !dir.is_empty())
        .unwrap_or_else(|| "target".into());
    workspace_root().join(target).join("fuzz")
}

/// The number libFuzzer's final statistics give for `stat`.
fn final_stat(log: &str, stat: &str) -> Option<u64> {
    log.lines()
        .find_map(|line| line.strip_prefix(&format!("stat::{stat}:")))
        .and_then(|value| value.trim().parse().ok())
}

pub(crate) fn run_campaign(target: Option<&str>, budget: Budget) -> Result<()> {
    let targets: Vec<&str> = match target {
        Some(name) if TARGETS.contains(&name) => vec![name],
        Some(name) => bail!("no fuzz target {name} (targets: {})", TARGETS.join(", ")),
        None => TARGETS.to_vec(),
    };
    setup::cargo_fuzz()?;
    let out = fuzz_dir();
    let seeds = workspace_root().join("leaktrace/tests/fuzz_corpus");
    let mut summary = Vec::new();
    for name in targets {
        let corpus = out.join("corpus").join(name);
        let artifacts = out.join("artifacts").join(name);
        fs::create_dir_all(&corpus)?;
        fs::create_dir_all(&artifacts)?;
        let log_path = out.join(format!("{name}.log"));
        let log = fs::File::create(&log_path)?;
        // rustup's proxy (not `$CARGO`, the stable cargo running xtask):
        // it takes `+nightly`.
        let mut command = Command::new("cargo");
        setup::add_tool_paths(&mut command);
        command
            .current_dir(workspace_root().join("leaktrace"))
            .args([
                &format!("+{}", setup::NIGHTLY),
                "fuzz",
                "run",
                "--debug-assertions",
                "--fuzz-dir",
                "fuzz",
                name,
            ])
            .arg(&corpus)
            .arg(seeds.join(name));
        if name == "eh_frame" {
            command.arg(seeds.join("elf"));
        }
        command
            .env("CARGO_TARGET_DIR", &out)
            .arg("--")
            .arg(match budget {
                Budget::Runs(runs) => format!("-runs={runs}"),
                Budget::Seconds(seconds) => format!("-max_total_time={seconds}"),
            })
            .args([
                "-timeout=10",
                "-rss_limit_mb=2048",
                "-malloc_limit_mb=1024",
                "-max_len=65536",
                "-print_final_stats=1",
            ])
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .stderr(log);
        eprintln!(
            "xtask: fuzzing {name} ({budget:?}; libFuzzer's output in {})",
            log_path.display()
        );
        let started = Instant::now();
        let status = command
            .status()
            .with_context(|| format!("running {command:?}"))?;
        let text = fs::read_to_string(&log_path).unwrap_or_default();
        let runs = final_stat(&text, "number_of_executed_units");
        let line = format!(
            "{name}: {} inputs ({} a second) in {:.0} s with the build, peak RSS {} MiB, {}",
            runs.map_or_else(|| "?".into(), |r| r.to_string()),
            final_stat(&text, "average_exec_per_sec").map_or_else(|| "?".into(), |r| r.to_string()),
            started.elapsed().as_secs_f64(),
            final_stat(&text, "peak_rss_mb").map_or_else(|| "?".into(), |r| r.to_string()),
            if status.success() {
                "no crash".to_string()
            } else {
                format!("FAILED ({status}): see {}", artifacts.display())
            }
        );
        eprintln!("xtask: {line}");
        summary.push((line, status.success()));
    }
    eprintln!("xtask: fuzz campaign:");
    for (line, _) in &summary {
        eprintln!("  {line}");
    }
    if summary.iter().any(|(_, ok)| !ok) {
        bail!(
            "a fuzz target failed: reproduce with `cargo +{} fuzz run --fuzz-dir fuzz NAME ARTIFACT` in leaktrace/, fix, and add the input to leaktrace/tests/fuzz_corpus/NAME/",
            setup::NIGHTLY
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_final_stats() {
        let log = "Done 1000000 runs in 42 second(s)\nstat::number_of_executed_units: 1000000\nstat::average_exec_per_sec:     23809\nstat::peak_rss_mb:              394\n";
        assert_eq!(final_stat(log, "number_of_executed_units"), Some(1_000_000));
        assert_eq!(final_stat(log, "peak_rss_mb"), Some(394));
        assert_eq!(final_stat(log, "slowest_unit_time_sec"), None);
    }
}
