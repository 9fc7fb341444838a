//! JSON reports: reading one, looking at its sites and frames, describing
//! them for failure messages, and checking a report of a `leaky` run against
//! the expected-leak table.

use std::{
    collections::BTreeMap,
    fs,
    path::Path,
    time::{Duration, Instant},
};

use serde_json::Value;

use super::{
    fixtures::site_lines,
    table::{EXPECTED_LEAKS, Leak, TEMPORARY_FUNCTIONS},
};

pub(crate) fn read_json(path: &Path) -> Value {
    let text = fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading report {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "report {} is not one JSON document: {e}\n{text}",
            path.display()
        )
    })
}

pub(crate) fn sites(report: &Value) -> &Vec<Value> {
    report["sites"]
        .as_array()
        .expect("report has a sites array")
}

/// Function names of a site's frames, innermost first.
pub(crate) fn frame_functions(site: &Value) -> Vec<&str> {
    site["frames"]
        .as_array()
        .map(|frames| {
            frames
                .iter()
                .map(|f| f["function"].as_str().unwrap_or(""))
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn innermost_function(site: &Value) -> &str {
    site["frames"][0]["function"].as_str().unwrap_or("")
}

/// One line per site, for failure messages.
pub(crate) fn describe_sites(report: &Value) -> String {
    sites(report)
        .iter()
        .map(|s| {
            let frames: Vec<String> = s["frames"]
                .as_array()
                .map(|fs| {
                    fs.iter()
                        .take(6)
                        .map(|f| {
                            format!(
                                "{}@{}:{}",
                                f["function"].as_str().unwrap_or("?"),
                                f["file"]
                                    .as_str()
                                    .map_or("?", |p| p.rsplit('/').next().unwrap_or(p)),
                                f["line"]
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            format!(
                "  {} {} bytes / {} allocs: {}",
                s["allocator"],
                s["bytes"],
                s["count"],
                frames.join(" <- ")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Checks a final JSON report of a `leaky` run against `expected`:
///
/// - each row: exactly one site whose `frames[0]` is the function, with an
///   accepted allocator name, the exact bytes and count, the right pid,
///   `frames[1]` the expected caller, `frames[0]` symbolized to leaky.c at
///   the marked line, in the fixture's module;
/// - no site mentions a temporary function in any frame, and the table's
///   functions appear only as `frames[0]` (nothing is double-counted, e.g.
///   an arena mmap made inside malloc);
/// - the sites whose `frames[0]` is a fixture function add up to exactly the
///   table (what the C runtime itself leaves, e.g. thread stacks, is not the
///   fixture's and is not counted);
/// - totals are consistent with the sites; nothing was lost; the report is final.
///
/// Collects every failure and panics once with all of them and the sites.
pub(crate) fn check_report_against_table(report: &Value, expected: &[Leak], pid: Option<u32>) {
    let mut failures: Vec<String> = Vec::new();
    let lines = site_lines("leaky.c");
    let all_sites = sites(report);

    for row in expected {
        let matching: Vec<&Value> = all_sites
            .iter()
            .filter(|s| innermost_function(s) == row.function)
            .collect();
        if matching.len() != 1 {
            failures.push(format!(
                "{}: expected exactly one site with frames[0] = {}, found {}",
                row.function,
                row.function,
                matching.len()
            ));
            continue;
        }
        let site = matching[0];
        let allocator = site["allocator"].as_str().unwrap_or("");
        if !row.allocators.contains(&allocator) {
            failures.push(format!(
                "{}: allocator {allocator:?}, expected one of {:?}",
                row.function, row.allocators
            ));
        }
        if site["bytes"].as_u64() != Some(row.bytes) {
            failures.push(format!(
                "{}: {} bytes, expected {}",
                row.function, site["bytes"], row.bytes
            ));
        }
        if site["count"].as_u64() != Some(row.count) {
            failures.push(format!(
                "{}: count {}, expected {}",
                row.function, site["count"], row.count
            ));
        }
        if let Some(pid) = pid
            && site["pid"].as_u64() != Some(u64::from(pid))
        {
            failures.push(format!(
                "{}: pid {}, expected {pid}",
                row.function, site["pid"]
            ));
        }
        let functions = frame_functions(site);
        if functions.get(1).copied() != Some(row.caller) {
            failures.push(format!(
                "{}: frames[1] should be its caller {}, frames are {functions:?}",
                row.function, row.caller
            ));
        }
        if row.caller == "main" && !functions.contains(&"main") {
            failures.push(format!(
                "{}: main is not in the frames {functions:?}",
                row.function
            ));
        }
        let frame = &site["frames"][0];
        let file = frame["file"].as_str().unwrap_or("");
        if !file.ends_with("leaky.c") {
            failures.push(format!(
                "{}: frames[0].file is {:?}, expected .../leaky.c",
                row.function, frame["file"]
            ));
        }
        if let Some(&line) = lines.get(row.function)
            && frame["line"].as_u64() != Some(u64::from(line))
        {
            failures.push(format!(
                "{}: frames[0].line is {}, the allocator call is on leaky.c:{line}",
                row.function, frame["line"]
            ));
        }
        let module = frame["module"].as_str().unwrap_or("");
        if !module.ends_with("/leaky") {
            failures.push(format!(
                "{}: frames[0].module is {:?}, expected the fixture binary",
                row.function, frame["module"]
            ));
        }
        if frame["inlined"].as_bool() != Some(false) {
            failures.push(format!(
                "{}: frames[0].inlined is {}, built with -fno-inline",
                row.function, frame["inlined"]
            ));
        }
    }

    // The C library's own memory (the 4 threads' cached stacks) is in its
    // section, never among the sites.
    if let Some(site) = all_sites
        .iter()
        .find(|s| frame_functions(s).contains(&"allocate_stack"))
    {
        failures.push(format!(
            "a thread stack is among the sites: {}",
            frame_functions(site).join(" < ")
        ));
    }
    let stacks: Vec<&Value> = report["c_library"]
        .as_array()
        .map(|sites| {
            sites
                .iter()
                .filter(|s| s["kind"] == "thread_stack")
                .filter(|s| pid.is_none_or(|pid| s["pid"].as_u64() == Some(u64::from(pid))))
                .collect()
        })
        .unwrap_or_default();
    let stack_count: u64 = stacks.iter().filter_map(|s| s["count"].as_u64()).sum();
    let stack_bytes: u64 = stacks.iter().filter_map(|s| s["bytes"].as_u64()).sum();
    if stack_count != 4 || stack_bytes < 4 * (8 << 20) {
        failures.push(format!(
            "c_library: {stack_count} thread stacks of {stack_bytes} bytes, expected the 4 threads' 8 MiB stacks"
        ));
    }

    // Rows the fixture did not produce must not be reported either.
    for row in EXPECTED_LEAKS {
        if !expected.iter().any(|e| e.function == row.function)
            && all_sites
                .iter()
                .any(|s| frame_functions(s).contains(&row.function))
        {
            failures.push(format!(
                "{}: reported, but the fixture was told not to leak there",
                row.function
            ));
        }
    }

    for site in all_sites {
        let functions = frame_functions(site);
        for temp in TEMPORARY_FUNCTIONS {
            if functions.contains(temp) {
                failures.push(format!(
                    "{temp} frees everything it allocates, yet a site mentions it: {} {} bytes / {} allocs, frames {functions:?}",
                    site["allocator"], site["bytes"], site["count"]
                ));
            }
        }
        for (index, function) in functions.iter().enumerate().skip(1) {
            if EXPECTED_LEAKS.iter().any(|row| row.function == *function) {
                failures.push(format!(
                    "{function} calls the allocator directly, yet it is frames[{index}] of a site ({} {} bytes): an allocator-internal call was reported (double counting)",
                    site["allocator"], site["bytes"]
                ));
            }
        }
    }

    let fixture_sites: Vec<&Value> = all_sites
        .iter()
        .filter(|s| {
            expected
                .iter()
                .any(|row| row.function == innermost_function(s))
        })
        .collect();
    let fixture_bytes: u64 = fixture_sites
        .iter()
        .filter_map(|s| s["bytes"].as_u64())
        .sum();
    let fixture_count: u64 = fixture_sites
        .iter()
        .filter_map(|s| s["count"].as_u64())
        .sum();
    let table_bytes: u64 = expected.iter().map(|r| r.bytes).sum();
    let table_count: u64 = expected.iter().map(|r| r.count).sum();
    if fixture_bytes != table_bytes || fixture_count != table_count {
        failures.push(format!(
            "fixture sites hold {fixture_bytes} bytes in {fixture_count} allocations, the table says {table_bytes} in {table_count}"
        ));
    }

    let site_bytes: u64 = all_sites.iter().filter_map(|s| s["bytes"].as_u64()).sum();
    let site_count: u64 = all_sites.iter().filter_map(|s| s["count"].as_u64()).sum();
    let totals = &report["totals"];
    if totals["outstanding_bytes"].as_u64() != Some(site_bytes) {
        failures.push(format!(
            "totals.outstanding_bytes {} != sum of sites {site_bytes}",
            totals["outstanding_bytes"]
        ));
    }
    if totals["outstanding_allocations"].as_u64() != Some(site_count) {
        failures.push(format!(
            "totals.outstanding_allocations {} != sum of sites {site_count}",
            totals["outstanding_allocations"]
        ));
    }
    if totals["call_sites"].as_u64() != Some(all_sites.len() as u64) {
        failures.push(format!(
            "totals.call_sites {} != {} sites",
            totals["call_sites"],
            all_sites.len()
        ));
    }
    if totals["outstanding_bytes"].as_u64().unwrap_or(0) < table_bytes {
        failures.push(format!(
            "totals.outstanding_bytes {} < the table's {table_bytes}",
            totals["outstanding_bytes"]
        ));
    }
    // leaky's temporaries alone make thousands of allocations and releases.
    if totals["allocations"].as_u64().unwrap_or(0) < 10_000
        || totals["releases"].as_u64().unwrap_or(0) < 10_000
    {
        failures.push(format!(
            "totals.allocations {} / releases {}: leaky makes more than 10000 of each",
            totals["allocations"], totals["releases"]
        ));
    }
    // realloc(p, SIZE_MAX/2), calloc and reallocarray overflows (at least).
    if totals["failed_calls"].as_u64().unwrap_or(0) < 3 {
        failures.push(format!(
            "totals.failed_calls {}: leaky makes at least 3 failing calls",
            totals["failed_calls"]
        ));
    }
    if report["losses"]["total"].as_u64() != Some(0) {
        failures.push(format!("events were lost: {}", report["losses"]));
    }
    if report["final"].as_bool() != Some(true) {
        failures.push(format!("final is {}, expected true", report["final"]));
    }
    if let Some(pid) = pid
        && report["pids"] != serde_json::json!([pid])
    {
        failures.push(format!("pids is {}, expected [{pid}]", report["pids"]));
    }

    assert!(
        failures.is_empty(),
        "the report does not match leaky's expected leaks:\n- {}\n\nsites reported:\n{}\ntotals: {}\nlosses: {}",
        failures.join("\n- "),
        describe_sites(report),
        report["totals"],
        report["losses"]
    );
}

/// Per function of the table: (bytes, count) of the site whose `frames[0]`
/// is that function, for reports compared against another oracle; with
/// `pid`, only that process's sites count (reports of several processes).
pub(crate) fn bytes_by_fixture_function(
    report: &Value,
    pid: Option<u32>,
) -> BTreeMap<String, (u64, u64)> {
    let mut by_function = BTreeMap::new();
    for site in sites(report) {
        if pid.is_some_and(|pid| site["pid"].as_u64() != Some(u64::from(pid))) {
            continue;
        }
        let function = innermost_function(site);
        if EXPECTED_LEAKS.iter().any(|r| r.function == function) {
            let entry = by_function.entry(function.to_string()).or_insert((0, 0));
            entry.0 += site["bytes"].as_u64().unwrap_or(0);
            entry.1 += site["count"].as_u64().unwrap_or(0);
        }
    }
    by_function
}

/// The report in `path` once `ready` holds for it (rewritten at every
/// interval), or a panic with the last one after `timeout`.
pub(crate) fn wait_for_report(
    path: &Path,
    timeout: Duration,
    ready: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let report = fs::read(path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok());
        match report {
            Some(report) if ready(&report) => return report,
            Some(report) if Instant::now() > deadline => panic!(
                "no report as expected within {timeout:?}; the last one:\nprocesses {}\ntotals {}\nlosses {}\nsites:\n{}",
                report["processes"],
                report["totals"],
                report["losses"],
                describe_sites(&report)
            ),
            None if Instant::now() > deadline => panic!("no report at {}", path.display()),
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}
