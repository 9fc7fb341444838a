//! The per-release tables against binaries each release built: a fixture
//! built with every Go release on the machine, its DWARF's `runtime.g`
//! layout equal to the table's, its own `runtime.waitReasonStrings` equal
//! to the table's; then its goroutines read live and counted as the
//! program counts them itself.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Command, Stdio},
};

use object::{Object as _, ObjectSection as _};

use super::{
    allgs_code,
    g_layout::GLayout,
    goroutine_source::{
        BinaryFacts, GoBinary, Origin, g_layout, inspect, locate_allgs, wait_reason_names,
    },
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

/// A stripped build (`-ldflags=-s -w`) of each release: `runtime.allgs`
/// and `runtime.allglen` found from its code where the unstripped twin's
/// `.symtab` puts them, the layout and wait reasons from the release's
/// tables equal to the twin's DWARF and `runtime.waitReasonStrings`.
///
/// The twins are not laid out at the same addresses: the stripped build's
/// `.go.buildinfo` records `-ldflags=-s -w` (32 bytes more) and its
/// `.rodata` is smaller, so the data sections after them move. Their
/// contents do not: each data section keeps its size (checked), and a
/// variable its offset into it. That offset is what is compared, and
/// the same reading on the unstripped build must give its `.symtab`'s
/// addresses exactly.
#[test]
fn a_stripped_binarys_goroutines_are_found_where_its_twins_symtab_says() {
    const TEST: &str = "a_stripped_binarys_goroutines_are_found_where_its_twins_symtab_says";
    let dir = TempDir::new("go-stripped");
    for release in GO_RELEASES {
        let Some(kept) = build_go(TEST, &dir, "goroutine_leak", release, Symbols::Kept) else {
            return;
        };
        let Some(stripped) = build_go(TEST, &dir, "goroutine_leak", release, Symbols::Stripped)
        else {
            return;
        };
        let (kept_data, stripped_data) = (
            std::fs::read(&kept).expect("reading the fixture"),
            std::fs::read(&stripped).expect("reading the stripped fixture"),
        );
        let kept_file = object::File::parse(&*kept_data).expect("an ELF");
        let stripped_file = object::File::parse(&*stripped_data).expect("an ELF");
        let (kept_data_sections, stripped_data_sections) =
            (data_sections(&kept_file), data_sections(&stripped_file));
        assert_eq!(
            stripped_data_sections
                .iter()
                .map(|(name, _, size)| (name, size))
                .collect::<Vec<_>>(),
            kept_data_sections
                .iter()
                .map(|(name, _, size)| (name, size))
                .collect::<Vec<_>>(),
            "Go {release}: the data sections differ"
        );
        let kept_facts = BinaryFacts::read(&kept_file);
        let symtab = (
            kept_facts.symbols["runtime.allgs"].0,
            kept_facts.symbols["runtime.allglen"].0,
        );
        let placed = |sections: &[(String, u64, u64)], (allgs, allglen): (u64, u64)| {
            [allgs, allglen].map(|address| in_section(sections, address))
        };
        assert!(
            placed(&kept_data_sections, symtab)
                .iter()
                .all(Option::is_some),
            "Go {release}: .symtab's {symtab:#x?} outside the data sections"
        );
        let mut facts = BinaryFacts::read(&stripped_file).with_code(&stripped_data);
        assert!(
            facts.symbols.is_empty(),
            "Go {release}: {:?}",
            facts.symbols
        );
        let found = locate_allgs(&facts).unwrap_or_else(|why| panic!("Go {release}: {why}"));
        assert_eq!(
            placed(&stripped_data_sections, found),
            placed(&kept_data_sections, symtab),
            "Go {release}: found {found:#x?}, .symtab says {symtab:#x?}"
        );
        // The same reading on the unstripped build gives its own symbols.
        let kept_code = super::binary::GoBinary::parse(kept_data.clone())
            .expect("a function table")
            .expect("a Go binary");
        let bounds: Vec<(u64, u64)> = kept_data_sections
            .iter()
            .map(|&(_, address, size)| (address, address + size))
            .collect();
        assert_eq!(allgs_code::locate(&kept_code, &bounds), Ok(symtab));

        let GoBinary::Go(Ok(source)) = inspect(&stripped_data) else {
            panic!("Go {release}: {:?}", inspect(&stripped_data));
        };
        assert_eq!((source.allgs, source.allglen), found, "Go {release}");
        assert_eq!(source.version, kept_facts.version, "Go {release}");
        assert_eq!(source.layout_origin, Origin::ReleaseTable, "Go {release}");
        let dwarf = GLayout::from_dwarf(&kept_file).expect("DWARF read");
        assert_eq!(Some(source.layout), dwarf, "Go {release}");
        assert_eq!(
            source.wait_reasons,
            wait_reason_names(&kept_facts),
            "Go {release}"
        );
        // A release without tables is refused, and says so.
        facts.version = Some("go1.20.14".to_owned());
        let why = g_layout(&facts).unwrap_err();
        assert!(
            why.contains("no DWARF and no runtime.g table for Go 1.20 (tables: Go 1.19, 1.21"),
            "{why}"
        );
    }
}

/// The name, address and size of each section Go variables live in.
fn data_sections(file: &object::File<'_>) -> Vec<(String, u64, u64)> {
    [".noptrdata", ".data", ".bss", ".noptrbss"]
        .into_iter()
        .map(|name| {
            let section = file.section_by_name(name).expect(name);
            (name.to_owned(), section.address(), section.size())
        })
        .collect()
}

/// The section holding `address`, and the offset into it.
fn in_section(sections: &[(String, u64, u64)], address: u64) -> Option<(String, u64)> {
    sections.iter().find_map(|(name, start, size)| {
        let into = address.checked_sub(*start)?;
        (into < *size).then(|| (name.clone(), into))
    })
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
