//! `leaktrace serve` against a running process that leaks slowly
//! (`tests/fixtures/slow_leak.c`: 5000 bytes every 10 ms from `grow_cache)`:
//! /metrics exposes its outstanding bytes (a multiple of 5000), a pprof
//! profile from /debug/pprof/heap decodes to `grow_cache`'s samples, the page
//! at / shows the site, /flamegraph.svg draws it, /api/series gives its
//! bytes over time, the charting library is served from the binary,
//! unknown paths are 404, SIGTERM
//! ends it with a final report; and it refuses a non-loopback address
//! unless --allow-remote is given.
mod common;

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use common::{
    Guarded, Server, TempDir, assert_one_error_line, compile, get, leaktrace, process_sample,
    require_root, serial, start_serve,
};
use leaktrace::report::pprof;

/// Builds and starts the slow-leak fixture (killed when dropped).
fn start_slow_leak(dir: &TempDir) -> Guarded {
    let program = compile(
        dir,
        "slow_leak.c",
        "slow_leak",
        &["-O1", "-g", "-fno-omit-frame-pointer", "-fno-inline"],
    );
    Guarded::spawn("slow_leak", Command::new(&program).stdin(Stdio::null()))
}

#[test]
fn serve_exposes_metrics_pprof_and_a_page() {
    if !require_root("serve_exposes_metrics_pprof_and_a_page") {
        return;
    }
    let _serial = serial();
    let dir = TempDir::new("serve");
    let fixture = start_slow_leak(&dir);
    let pid = fixture.pid().to_string();
    let Server {
        process: mut server,
        stdout,
        stderr,
        address,
    } = start_serve(&["--pid", &pid, "--sample-bytes", "0"]);
    stderr
        .wait_for(Duration::from_mins(1), |l| {
            l.starts_with("leaktrace: tracing pid ")
        })
        .unwrap_or_else(|e| panic!("never attached: {e}"));
    std::thread::sleep(Duration::from_millis(1500));

    let (status, metrics) = get(&address, "/metrics");
    assert_eq!(status, 200);
    let metrics = String::from_utf8(metrics).unwrap();
    let (labels, bytes) = process_sample(&metrics, "leaktrace_outstanding_bytes", fixture.pid())
        .unwrap_or_else(|| panic!("no outstanding bytes for {pid}:\n{metrics}"));
    assert!(
        labels.starts_with(&format!("{{pid=\"{pid}\",comm=\"slow_leak\",cgroup=\"/")),
        "{labels}"
    );
    assert!(
        bytes >= 5 * 5000 && bytes.is_multiple_of(5000),
        "{bytes}\n{metrics}"
    );
    assert!(metrics.contains("leaktrace_daemon_resident_bytes "));

    let (status, heap) = get(&address, "/debug/pprof/heap");
    assert_eq!(status, 200);
    let profile = pprof::decode(&heap).expect("a pprof profile");
    let grow_cache = profile
        .function
        .iter()
        .find(|f| profile.string(f.name) == "grow_cache")
        .expect("grow_cache in the profile")
        .id;
    let leaf_of = |sample: &pprof::Sample| -> Option<u64> {
        let leaf = *sample.location_id.first()?;
        let location = profile.location.iter().find(|l| l.id == leaf)?;
        Some(location.line.first()?.function_id)
    };
    let leaked: i64 = profile
        .sample
        .iter()
        .filter(|s| leaf_of(s) == Some(grow_cache))
        .map(|s| s.value[0])
        .sum();
    assert!(leaked > 0 && leaked % 5000 == 0, "{leaked}");

    let (status, page) = get(&address, "/");
    assert_eq!(status, 200);
    let page = String::from_utf8(page).unwrap();
    assert!(
        page.contains("grow_cache") && page.contains("<object id=\"flamegraph\""),
        "{page}"
    );
    let (status, svg) = get(&address, "/flamegraph.svg");
    assert_eq!(status, 200);
    let svg = String::from_utf8(svg).unwrap();
    assert!(svg.contains("<svg") && svg.contains("grow_cache"), "{svg}");
    // The page's data: grow_cache's series, named by its frame.
    let (status, series) = get(&address, &format!("/api/series?pid={pid}"));
    assert_eq!(status, 200);
    let series: serde_json::Value = serde_json::from_slice(&series).unwrap();
    assert_eq!(series["mode"], "allocations");
    let site = &series["site_series"][0];
    assert!(
        site["label"]
            .as_str()
            .is_some_and(|l| l.starts_with("grow_cache (slow_leak.c:")),
        "{series}"
    );
    let values = site["values"].as_array().unwrap();
    assert_eq!(values.len(), series["times"].as_array().unwrap().len());
    assert!(
        values.last().unwrap().as_u64().unwrap() >= 5 * 5000,
        "{series}"
    );
    // The page's library, from the binary.
    let (status, uplot) = get(&address, "/assets/uPlot.iife.min.js");
    assert_eq!(status, 200);
    assert!(uplot.starts_with(b"/*! https://github.com/leeoniya/uPlot (v"));
    assert_eq!(get(&address, "/nope").0, 404);

    // SIGTERM: a final report, exit 0.
    // SAFETY: signalling our own child.
    unsafe { libc_kill(server.pid() as i32, 15) };
    let status = server
        .wait_timeout(Duration::from_secs(30))
        .expect("serve exits on SIGTERM");
    assert!(status.success(), "{status:?}\n{}", stderr.text());
    assert!(
        stdout.text().contains("grow_cache"),
        "final report:\n{}",
        stdout.text()
    );
}

#[test]
fn serve_refuses_a_remote_address_unless_asked() {
    let finished = leaktrace(
        &["serve", "--pid", "1", "--listen", "0.0.0.0:0"],
        Duration::from_secs(30),
    );
    let line = assert_one_error_line("serve on 0.0.0.0", &finished);
    assert!(line.contains("--allow-remote"), "{line}");
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, signal: i32) -> i32;
}

/// Growth over intervals: the slow leak (5000 bytes every 10 ms, about
/// 500 KB/s) is ranked as growing steadily, at roughly its real rate.
#[test]
fn a_steady_leak_is_ranked_with_its_rate() {
    if !require_root("a_steady_leak_is_ranked_with_its_rate") {
        return;
    }
    let _serial = serial();
    let dir = TempDir::new("growth");
    let fixture = start_slow_leak(&dir);
    let report_path = dir.join("report.json");
    let finished = leaktrace(
        &[
            "trace",
            "--pid",
            &fixture.pid().to_string(),
            "--duration",
            "4500ms",
            "--interval",
            "1s",
            "--format",
            "json",
            "--output",
            report_path.to_str().unwrap(),
        ],
        Duration::from_mins(1),
    );
    finished.succeeded("leaktrace trace --interval 1s");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
    let site = report["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["frames"][0]["function"] == "grow_cache")
        .expect("grow_cache's site");
    let growth = &site["growth"];
    assert_eq!(growth["steady"], true, "{growth}");
    assert!(growth["samples"].as_u64().unwrap() >= 4, "{growth}");
    let rate = growth["bytes_per_second"].as_f64().unwrap();
    assert!((250_000.0..=600_000.0).contains(&rate), "{rate} B/s");
}
