//! Reports whose symbolization is slow must not stall the event loop.
//! `LEAKTRACE_TEST_SLOW_SYMBOLS=SECONDS` (test only) makes every batch of
//! symbol resolution sleep that long, as the DWARF of large binaries takes
//! to read; meanwhile the `churn` fixture makes 60,000 records a second,
//! more than the 16 MiB ring buffer holds over the pause. Before reports
//! were symbolized on their own thread the loop stopped reading for the
//! whole pause and the kernel dropped over 100,000 records; now not one is
//! lost: the counts are exact.
mod common;

use std::{
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use common::{
    Guarded, TempDir, compile, get, leaktrace_bin, read_json, require_root, serial,
    start_serve_with,
};
use serde_json::Value;

/// Seconds each batch of symbols takes.
const PAUSE: u64 = 4;
/// malloc+free pairs a second: 2 records each.
const RATE: u64 = 30_000;

fn build_churn(dir: &TempDir) -> std::path::PathBuf {
    compile(
        dir,
        "churn.c",
        "churn",
        &["-O0", "-g", "-fno-omit-frame-pointer"],
    )
}

/// The one site of a churn report: `leak_block`'s blocks, 4096 bytes
/// each.
fn assert_only_the_leak(report: &Value) -> u64 {
    let sites = report["sites"].as_array().expect("sites");
    assert_eq!(sites.len(), 1, "{sites:#?}");
    assert_eq!(
        sites[0]["frames"][0]["function"], "leak_block",
        "{sites:#?}"
    );
    let bytes = sites[0]["bytes"].as_u64().expect("bytes");
    assert_eq!(bytes % 4096, 0, "{sites:#?}");
    assert_eq!(sites[0]["count"], bytes / 4096, "{sites:#?}");
    bytes / 4096
}

/// `run --interval 1s`: the first interval report symbolizes `leak_block`
/// (one slow batch) while the command churns; the loop keeps reading, so
/// the final report has every allocation and release and no loss. The
/// interval report came out during the churn, after the pause: the slow
/// symbolization did overlap the records.
#[test]
fn interval_report_symbolized_slowly_loses_no_record() {
    if !require_root("interval_report_symbolized_slowly_loses_no_record") {
        return;
    }
    let _serial = serial();
    let dir = TempDir::new("slow-symbols-run");
    let churn = build_churn(&dir);
    let report_path = dir.join("report.json");
    let started = Instant::now();
    let mut tracer = Guarded::spawn(
        "leaktrace run churn",
        Command::new(leaktrace_bin())
            .args(["run", "--sample-bytes", "0", "--interval", "1s"])
            .args(["--format", "json", "--output"])
            .arg(&report_path)
            .arg("--")
            .arg(&churn)
            .args([RATE.to_string(), "8".to_owned()])
            .env("LEAKTRACE_TEST_SLOW_SYMBOLS", PAUSE.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let churn_out = tracer.stdout_lines();
    let stderr = tracer.stderr_lines();
    // The first interval report, polled for while the command runs.
    let mut first_interval: Option<(Duration, Value)> = None;
    let mut pairs: Option<(Duration, u64)> = None;
    let deadline = Instant::now() + Duration::from_mins(2);
    while pairs.is_none() && Instant::now() < deadline {
        if first_interval.is_none()
            && let Ok(text) = std::fs::read_to_string(&report_path)
            && let Ok(report) = serde_json::from_str::<Value>(&text)
        {
            first_interval = Some((started.elapsed(), report));
        }
        if let Some(line) = churn_out.next(Duration::from_millis(50)) {
            let count = line.trim().parse().expect("churn prints its pairs");
            pairs = Some((started.elapsed(), count));
        }
    }
    let (churned_at, pairs) =
        pairs.unwrap_or_else(|| panic!("churn never finished:\n{}", stderr.text()));
    let status = tracer
        .wait_timeout(Duration::from_mins(1))
        .expect("leaktrace run ends after its command");
    assert!(status.success(), "{status:?}\n{}", stderr.text());
    assert_eq!(pairs, RATE * 8);

    let (written_at, interval) = first_interval.expect("an interval report while churn ran");
    assert_eq!(interval["final"], false);
    assert_only_the_leak(&interval);
    assert!(
        written_at >= Duration::from_secs(PAUSE) && written_at < churned_at,
        "the first interval report came at {written_at:?}, churn ended at {churned_at:?}: \
         the slow symbolization did not overlap the churn"
    );

    let last = read_json(&report_path);
    assert_eq!(last["final"], true);
    assert_eq!(last["losses"]["ring_buffer_full"], 0, "{}", last["losses"]);
    assert_eq!(last["losses"]["total"], 0, "{}", last["losses"]);
    assert_eq!(assert_only_the_leak(&last), 8, "one block a second");
    assert_eq!(
        last["totals"]["allocations"],
        pairs + 8,
        "{}",
        last["totals"]
    );
    assert_eq!(last["totals"]["releases"], pairs, "{}", last["totals"]);
}

/// The value of the unlabelled (or fully written) series `series`.
fn sample(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

/// serve: two requests that come together wait for one slow report (made
/// once for both) while the loop keeps reading the churning process's
/// records: none is lost, and the events counted grew by every record the
/// churn made during the wait.
#[test]
fn pages_wait_for_a_slow_report_while_records_are_read() {
    if !require_root("pages_wait_for_a_slow_report_while_records_are_read") {
        return;
    }
    let _serial = serial();
    let dir = TempDir::new("slow-symbols-serve");
    let churn = build_churn(&dir);
    let mut fixture = Guarded::spawn(
        "churn",
        Command::new(&churn)
            .args([RATE.to_string(), "30".to_owned()])
            .stdin(Stdio::null())
            .stdout(Stdio::null()),
    );
    let pid = fixture.pid().to_string();
    let server = start_serve_with(&["--pid", &pid, "--sample-bytes", "0"], |command| {
        command.env("LEAKTRACE_TEST_SLOW_SYMBOLS", PAUSE.to_string());
    });
    server
        .stderr
        .wait_for(Duration::from_mins(1), |l| {
            l.starts_with("leaktrace: tracing pid ")
        })
        .unwrap_or_else(|e| panic!("serve never attached: {e}"));
    // A block leaked since attach: a site whose symbols the report needs.
    thread::sleep(Duration::from_millis(1500));
    let asked = Instant::now();
    let (done_tx, done) = mpsc::channel();
    for path in ["/metrics", "/api/series"] {
        let (address, done_tx) = (server.address.clone(), done_tx.clone());
        thread::spawn(move || {
            let (status, body) = get(&address, path);
            // The test may have given up waiting: nothing to do then.
            let _: Result<_, _> = done_tx.send((path, status, asked.elapsed(), body));
        });
    }
    let mut answers: Vec<_> = (0..2)
        .map(|_| {
            done.recv_timeout(Duration::from_mins(1))
                .expect("both requests answered")
        })
        .collect();
    answers.sort_by_key(|a| a.0);
    for (path, status, took, _) in &answers {
        assert_eq!(*status, 200, "{path}");
        assert!(
            *took >= Duration::from_secs(PAUSE),
            "{path} answered in {took:?}, before the slow symbolization could end"
        );
    }
    let during = String::from_utf8_lossy(&answers[1].3).to_string();
    assert_eq!(answers[1].0, "/metrics");
    assert_eq!(
        sample(&during, "leaktrace_reports_built_total"),
        1,
        "{during}"
    );
    // A second later the next report needs no new symbol: no pause.
    thread::sleep(Duration::from_secs(1));
    let before_next = Instant::now();
    let (status, after) = get(&server.address, "/metrics");
    let took = before_next.elapsed();
    assert_eq!(status, 200);
    assert!(took < Duration::from_secs(PAUSE), "{took:?}");
    let after = String::from_utf8_lossy(&after).to_string();
    assert_eq!(
        sample(&after, "leaktrace_reports_built_total"),
        2,
        "{after}"
    );
    assert_eq!(
        sample(
            &after,
            "leaktrace_lost_events_total{reason=\"ring_buffer_full\"}"
        ),
        0,
        "{after}"
    );
    // Read during the pause: at least the records of the pause itself
    // (two per pair, at RATE pairs a second), counted by now.
    let events = sample(&after, "leaktrace_events_total");
    assert!(events >= 2 * RATE * PAUSE, "{events} events\n{after}");
    fixture.kill_and_reap();
}
