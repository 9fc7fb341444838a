//! Sampled tracing (--sample-bytes): on a fixture that allocates ~2.4 GiB
//! and leaks known totals at sites of very different sizes and counts
//! (tests/fixtures/sampling.c), the estimated outstanding bytes and counts
//! per site at the default continuous-mode rate (512 KiB) are within 10% of
//! the truth, the report says it is sampled, and nothing is lost. The
//! churned blocks, freed right away, leave (almost) nothing behind: their
//! frees are matched in the kernel against the sampled blocks.
mod common;

use common::{TempDir, compile, innermost_function, require_root, run_json, serial, sites};
use serde_json::Value;

/// (function, bytes, count) leaked by the fixture.
const TRUTH: [(&str, f64, f64); 3] = [
    ("leak_big", 300.0 * 1048576.0, 300.0),
    ("leak_medium", 40000.0 * 16384.0, 40000.0),
    ("leak_small", 2000000.0 * 256.0, 2000000.0),
];

fn summed(report: &Value, function: &str) -> (f64, f64) {
    sites(report)
        .iter()
        .filter(|s| innermost_function(s) == function)
        .fold((0.0, 0.0), |(bytes, count), s| {
            (
                bytes + s["bytes"].as_f64().unwrap(),
                count + s["count"].as_f64().unwrap(),
            )
        })
}

#[test]
fn sampled_estimates_are_within_ten_percent() {
    if !require_root("sampled_estimates_are_within_ten_percent") {
        return;
    }
    let _serial = serial();
    let dir = TempDir::new("sampling");
    let program = compile(
        &dir,
        "sampling.c",
        "sampling",
        &["-O1", "-g", "-fno-omit-frame-pointer", "-fno-inline"],
    );
    let report = run_json(
        &dir,
        "report",
        &["--sample-bytes", "512k"],
        &[program.to_str().unwrap()],
    );
    assert_eq!(report["sample_bytes"], 524288);
    assert_eq!(report["losses"]["total"], 0, "{}", report["losses"]);
    for (function, bytes, count) in TRUTH {
        let (estimated_bytes, estimated_count) = summed(&report, function);
        let byte_error = estimated_bytes / bytes - 1.0;
        let count_error = estimated_count / count - 1.0;
        eprintln!(
            "{function}: {estimated_bytes:.0} bytes ({:+.1}%), {estimated_count:.0} blocks ({:+.1}%)",
            byte_error * 100.0,
            count_error * 100.0
        );
        assert!(
            byte_error.abs() < 0.10,
            "{function}: bytes off by {:.1}%",
            byte_error * 100.0
        );
        assert!(
            count_error.abs() < 0.10,
            "{function}: count off by {:.1}%",
            count_error * 100.0
        );
    }
    // 1 GiB churned through malloc/free leaves nothing behind.
    let (churn_bytes, _) = summed(&report, "churn");
    assert!(churn_bytes < 1_048_576.0, "churn left {churn_bytes} bytes");
    // Far fewer records than calls: unsampled calls cost no record.
    let events = report["totals"]["events"].as_u64().unwrap();
    assert!(events < 100_000, "{events} records for ~2.6 million calls");
}

/// Pins the calling thread, and so every process it starts, to CPU 0.
fn pin_to_cpu_zero() {
    // SAFETY: cpu_set_t is plain data, for which all zeroes is a valid value.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes bit 0 of the set it is given.
    unsafe { libc::CPU_SET(0, &mut set) };
    // SAFETY: pid 0 is this thread; the set outlives the call.
    let result =
        unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set) };
    assert_eq!(
        result,
        0,
        "sched_setaffinity: {}",
        std::io::Error::last_os_error()
    );
}

/// Estimated (bytes, count) of every leaking function.
fn estimates(report: &Value) -> Vec<(String, f64, f64)> {
    TRUTH
        .iter()
        .map(|(function, _, _)| {
            let (bytes, count) = summed(report, function);
            ((*function).to_string(), bytes, count)
        })
        .collect()
}

/// `--sample-seed` fixes the kernel's sampling: on one CPU, the same seed
/// samples the same blocks, so two runs give the same estimates to the
/// byte. Without the seed (a clock seed each run) they differ.
#[test]
fn the_same_seed_samples_the_same_blocks() {
    if !require_root("the_same_seed_samples_the_same_blocks") {
        return;
    }
    let _serial = serial();
    let dir = TempDir::new("sampling-seed");
    let program = compile(
        &dir,
        "sampling.c",
        "sampling",
        &["-O1", "-g", "-fno-omit-frame-pointer", "-fno-inline"],
    );
    pin_to_cpu_zero();
    let run = |name: &str, seed: Option<&str>| {
        let mut extra = vec!["--sample-bytes", "512k"];
        if let Some(seed) = seed {
            extra.extend_from_slice(&["--sample-seed", seed]);
        }
        estimates(&run_json(&dir, name, &extra, &[program.to_str().unwrap()]))
    };
    let first = run("seed-42-first", Some("42"));
    let second = run("seed-42-second", Some("42"));
    assert_eq!(first, second, "the same seed sampled differently");
    let unseeded = run("clock-seed", None);
    assert_ne!(
        first, unseeded,
        "a clock seed sampled exactly as seed 42: is the seed ignored?"
    );
}
