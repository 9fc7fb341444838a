//! jemalloc end to end: a program linked against Debian's libjemalloc.so.2
//! (as redis-server is) gets its allocator found in jemalloc, not libc,
//! with probes on jemalloc's malloc family and mallocx/rallocx/dallocx/
//! sdallocx, placed off their single-stepped first instructions; the report
//! has exactly the fixture's leaks (`tests/fixtures/jemalloc_leaks.c`).
mod common;

use std::path::Path;

use common::{
    TempDir, compile, innermost_function, prerequisite_missing, require_root, run_json, serial,
    sites,
};

const LIBJEMALLOC: &str = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2";

/// (function that called the allocator, allocator, bytes, count)
const EXPECTED: [(&str, &str, u64, u64); 4] = [
    ("je_leak_malloc", "malloc", 3000, 3),
    ("je_leak_calloc", "calloc", 700, 1),
    ("je_leak_mallocx", "mallocx", 1000, 2),
    ("je_leak_rallocx", "rallocx", 7000, 1),
];

#[test]
fn jemalloc_program_reports_exact_leaks() {
    if !require_root("jemalloc_program_reports_exact_leaks") {
        return;
    }
    if !Path::new(LIBJEMALLOC).exists() {
        return prerequisite_missing(
            "jemalloc_program_reports_exact_leaks",
            &format!("{LIBJEMALLOC} (apt-get install libjemalloc2; cargo xtask test installs it)"),
        );
    }
    let _serial = serial();
    let dir = TempDir::new("jemalloc");
    let program = compile(
        &dir,
        "jemalloc_leaks.c",
        "jemalloc_leaks",
        &[
            "-O0",
            "-g",
            "-fno-omit-frame-pointer",
            "-fno-inline",
            "-Wl,--no-as-needed",
            LIBJEMALLOC,
        ],
    );
    let report = run_json(&dir, "report", &[], &[program.to_str().unwrap()]);
    let objects = report["allocator_objects"].to_string();
    assert!(
        objects.contains("libjemalloc.so.2"),
        "allocator_objects: {objects}"
    );
    assert_eq!(report["losses"]["total"], 0, "{}", report["losses"]);
    let fixture_sites: Vec<_> = sites(&report)
        .iter()
        .filter(|s| innermost_function(s).starts_with("je_"))
        .collect();
    for (function, allocator, bytes, count) in EXPECTED {
        let matching: Vec<_> = fixture_sites
            .iter()
            .filter(|s| innermost_function(s) == function)
            .collect();
        assert_eq!(matching.len(), 1, "{function}: sites {matching:#?}");
        let site = matching[0];
        assert_eq!(site["allocator"], allocator, "{function}");
        assert_eq!(site["bytes"], bytes, "{function}");
        assert_eq!(site["count"], count, "{function}");
    }
    assert_eq!(
        fixture_sites.len(),
        EXPECTED.len(),
        "only the leaking functions hold memory: {fixture_sites:#?}"
    );
}
