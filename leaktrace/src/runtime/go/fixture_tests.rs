//! The per-release tables against binaries each release built: a fixture
//! built with every Go release on the machine, its DWARF's `runtime.g`
//! layout equal to the table's, its own `runtime.waitReasonStrings` equal
//! to the table's; then its goroutines read live and counted as the
//! program counts them itself.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Command, Stdio},
};

use super::{
    g_layout::GLayout,
    goroutine_source::{BinaryFacts, GoBinary, Origin, inspect, wait_reason_names},
    goroutines_live::{Limits, VmReader, read_goroutines},
    wait_reasons,
};
use crate::test_support::{
    TempDir,
    go::{GO_RELEASES, Symbols, build_go},
};

#[test]
fn each_releases_tables_match_its_binarys_dwarf_and_wait_reasons() {
    const TEST: &str = "each_releases_tables_match_its_binarys_dwarf_and_wait_reasons";
    let dir = TempDir::new("go-layout");
    for release in GO_RELEASES {
        let Some(binary) = build_go(TEST, &dir, "goroutine_leak", release, Symbols::Kept) else {
            return;
        };
        let data = std::fs::read(&binary).expect("reading the fixture");
        let file = object::File::parse(&*data).expect("an ELF");
        let facts = BinaryFacts::read(&file);
        let built = facts.release().expect("runtime.buildVersion read");
        assert_eq!(built.to_string(), release, "{:?}", facts.version);
        let dwarf = GLayout::from_dwarf(&file)
            .expect("DWARF read")
            .expect("DWARF present");
        assert_eq!(
            GLayout::for_release(built),
            Some(dwarf),
            "Go {release}: the table differs from DWARF's runtime.g"
        );
        let from_binary = wait_reason_names(&facts);
        assert!(from_binary.len() > 20, "Go {release}: {from_binary:?}");
        assert_eq!(
            wait_reasons::for_release(built).as_ref(),
            Some(&from_binary),
            "Go {release}: the wait reasons differ from runtime.waitReasonStrings"
        );
        let GoBinary::Go(Ok(source)) = inspect(&data) else {
            panic!("Go {release}: goroutines not readable");
        };
        assert_eq!(source.layout_origin, Origin::Binary);
        assert_eq!(source.layout, dwarf);
    }
}

#[test]
fn a_stripped_binary_says_why_its_goroutines_are_not_read() {
    const TEST: &str = "a_stripped_binary_says_why_its_goroutines_are_not_read";
    let dir = TempDir::new("go-stripped");
    let Some(binary) = build_go(TEST, &dir, "goroutine_leak", "1.23", Symbols::Stripped) else {
        return;
    };
    let data = std::fs::read(&binary).expect("reading the fixture");
    match inspect(&data) {
        GoBinary::Go(Err(why)) => assert!(why.contains("stripped"), "{why}"),
        other => panic!("{other:?}"),
    }
}

/// The fixture's goroutines read live, against its own count of them
/// (`runtime.Stack`'s "created by" lines) after it finished.
#[test]
fn goroutines_read_live_match_the_programs_own_count() {
    const TEST: &str = "goroutines_read_live_match_the_programs_own_count";
    let dir = TempDir::new("go-live");
    for release in ["1.19", "1.23"] {
        let Some(binary) = build_go(TEST, &dir, "goroutine_leak", release, Symbols::Kept) else {
            return;
        };
        let data = std::fs::read(&binary).expect("reading the fixture");
        let GoBinary::Go(Ok(source)) = inspect(&data) else {
            panic!("Go {release}: goroutines not readable");
        };
        let mut child = Command::new(&binary)
            .arg("5")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the fixture");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(b"go\n").expect("go");
        let mut own: Vec<String> = Vec::new();
        for line in BufReader::new(child.stdout.take().expect("stdout")).lines() {
            let line = line.expect("a line");
            if line == "end" {
                break;
            }
            own.push(line);
        }
        let snapshot =
            read_goroutines(&VmReader { pid: child.id() }, &source, 0, Limits::default());
        let _: Result<_, _> = child.kill();
        let _: Result<_, _> = child.wait();
        let created: u64 = own
            .iter()
            .filter_map(|l| l.strip_prefix("created "))
            .filter(|l| l.contains("goroutine_leak.go"))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum();
        assert_eq!(created, 40, "Go {release}: {own:?}");
        let leak = snapshot
            .groups
            .values()
            .find(|g| g.count == created)
            .unwrap_or_else(|| panic!("Go {release}: no group of {created}: {snapshot:?}"));
        assert_eq!(
            leak.wait_reasons.get("chan send"),
            Some(&created),
            "Go {release}"
        );
        assert!(leak.stack_bytes >= created * 2048, "Go {release}");
        let total: u64 = own
            .iter()
            .find_map(|l| l.strip_prefix("goroutines "))
            .and_then(|n| n.parse().ok())
            .expect("its NumGoroutine");
        // NumGoroutine leaves out the runtime's own goroutines.
        assert!(snapshot.stats.live >= total, "Go {release}: {snapshot:?}");
        assert_eq!(snapshot.stats.failed_reads, 0, "Go {release}");
    }
}
