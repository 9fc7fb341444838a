//! valgrind memcheck as an independent oracle for the heap rows of the
//! expected-leak table, and for leaktrace itself.
//!
//! `leaky` runs with `LEAKY_SKIP_PVALLOC=1` here: valgrind 3.19 aborts a
//! program at its first pvalloc call. valgrind does not track mmap, so the
//! mmap rows are not part of this comparison (tests/trace.rs checks them).
mod common;

use std::{collections::BTreeMap, process::Command, time::Duration};

use common::{
    EXPECTED_LEAKS, Memory, SKIP_PVALLOC, TEMPORARY_FUNCTIONS, TempDir, build_leaky,
    bytes_by_fixture_function, check_report_against_table, describe_sites, errors,
    expected_without_pvalloc, leaktrace_bin, loss_records, read_json, require_root, require_tool,
    run_with_timeout, serial,
};

const VALGRIND_TIMEOUT: Duration = Duration::from_mins(5);

/// Runs `leaky` (pvalloc skipped) under valgrind memcheck; returns its leaks
/// per fixture function: (bytes, blocks), summed over loss records whose
/// innermost fixture frame is that function. Panics if valgrind finds a
/// memory error in the fixture or a leak in a temporary function.
fn valgrind_leaks(dir: &TempDir) -> BTreeMap<String, (u64, u64)> {
    let leaky = build_leaky(dir);
    let xml_path = dir.join("valgrind.xml");
    let mut command = Command::new("valgrind");
    command
        .arg("--tool=memcheck")
        .arg("--leak-check=full")
        .arg("--show-leak-kinds=all")
        .arg("--num-callers=20")
        .arg("--xml=yes")
        .arg(format!("--xml-file={}", xml_path.display()))
        .arg(&leaky)
        .env(SKIP_PVALLOC, "1");
    run_with_timeout("valgrind leaky", &mut command, VALGRIND_TIMEOUT).succeeded("valgrind leaky");
    let xml = std::fs::read_to_string(&xml_path).expect("reading valgrind's XML");

    let memory_errors: Vec<String> = errors(&xml)
        .into_iter()
        .filter(|(kind, _)| !kind.starts_with("Leak_"))
        .map(|(kind, _)| kind)
        .collect();
    assert!(
        memory_errors.is_empty(),
        "valgrind found memory errors in leaky: {memory_errors:?}"
    );

    let mut by_function: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for record in loss_records(&xml) {
        for temp in TEMPORARY_FUNCTIONS {
            assert!(
                !record.functions.iter().any(|f| f == temp),
                "valgrind says {temp} leaks: {record:?} (the fixture is wrong)"
            );
        }
        let position = record
            .functions
            .iter()
            .position(|f| EXPECTED_LEAKS.iter().any(|row| row.function == f));
        let Some(position) = position else { continue };
        assert!(
            position >= 1,
            "a fixture function cannot be the allocator: {record:?}"
        );
        let entry = by_function
            .entry(record.functions[position].clone())
            .or_insert((0, 0));
        entry.0 += record.bytes;
        entry.1 += record.blocks;
        eprintln!(
            "valgrind: {} {} bytes in {} blocks from {}",
            record.kind, record.bytes, record.blocks, record.functions[position]
        );
    }
    by_function
}

/// Whether valgrind is there (see `common::require_tool`).
fn valgrind_available(test: &str) -> bool {
    require_tool(
        test,
        "valgrind",
        "apt-get install valgrind; cargo xtask test installs it",
    )
}

/// The heap rows of the expected-leak table are right: valgrind memcheck,
/// which replaces the allocator and knows every block, finds exactly those
/// bytes and blocks per function, and nothing for the mmap rows (it does
/// not track mmap) or the skipped pvalloc. Needs no root.
#[test]
fn valgrind_confirms_expected_table() {
    if !valgrind_available("valgrind_confirms_expected_table") {
        return;
    }
    let _serial = serial();
    let dir = TempDir::new("valgrind");
    let found = valgrind_leaks(&dir);
    let mut expected: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for row in expected_without_pvalloc() {
        if row.memory == Memory::Heap {
            expected.insert(row.function.to_string(), (row.bytes, row.count));
        }
    }
    assert_eq!(
        found, expected,
        "valgrind (left) vs the table's heap rows (right): (bytes, blocks) per function"
    );
}

/// The oracle test: valgrind's per-function leaked bytes and blocks equal
/// leaktrace's per-site bytes and counts for every malloc-family function,
/// on the same program and input, and leaktrace's report also passes the
/// full table check (mmap rows included).
#[test]
fn leaktrace_agrees_with_valgrind() {
    if !require_root("leaktrace_agrees_with_valgrind")
        || !valgrind_available("leaktrace_agrees_with_valgrind")
    {
        return;
    }
    let _serial = serial();
    let dir = TempDir::new("oracle");
    let from_valgrind = valgrind_leaks(&dir);
    assert!(
        !from_valgrind.is_empty(),
        "valgrind reported no fixture leak at all"
    );

    let leaky = dir.join("leaky");
    let report_path = dir.join("report.json");
    let mut command = Command::new(leaktrace_bin());
    command
        .args(["run", "--format", "json", "--output"])
        .arg(&report_path)
        .arg("--")
        .arg(&leaky)
        .env(SKIP_PVALLOC, "1");
    run_with_timeout(
        "leaktrace run -- leaky",
        &mut command,
        Duration::from_mins(2),
    )
    .succeeded("leaktrace run -- leaky");
    let report = read_json(&report_path);

    let heap_functions: Vec<&str> = EXPECTED_LEAKS
        .iter()
        .filter(|r| r.memory == Memory::Heap)
        .map(|r| r.function)
        .collect();
    let from_leaktrace: BTreeMap<String, (u64, u64)> = bytes_by_fixture_function(&report, None)
        .into_iter()
        .filter(|(function, _)| heap_functions.contains(&function.as_str()))
        .collect();
    assert_eq!(
        from_leaktrace,
        from_valgrind,
        "leaktrace (left) vs valgrind (right): (bytes, allocations) per function\nsites:\n{}",
        describe_sites(&report)
    );
    check_report_against_table(&report, &expected_without_pvalloc(), None);
}
