//! Probe placement end to end. In a traced process's memory, the int3 of
//! each entry probe is at the function's first instruction with
//! `--probe-placement entry`, and with `auto` where the library on this
//! machine says it must be (glibc 2.36's free on its `je` at +3,
//! `posix_memalign` past its `cmpb` at +7), derived with objdump. And the
//! moved probes see exactly what probes at offset 0 see: both runs of
//! `leaky` are checked against its table, and against each other site by
//! site.
mod common;

use std::{
    collections::BTreeSet,
    process::{Command, Stdio},
    time::Duration,
};

use common::{
    EXPECTED_LEAKS, Guarded, TempDir, build_leaky, bytes_by_fixture_function,
    check_report_against_table, leaktrace_bin, objdump, prerequisite_missing, probed, require_root,
    run_json, serial, start_spin,
};

fn traced_leaky(dir: &TempDir, placement: &str) -> serde_json::Value {
    let leaky = build_leaky(dir);
    run_json(
        dir,
        &format!("report-{placement}"),
        &["--probe-placement", placement],
        &[leaky.to_str().unwrap()],
    )
}

#[test]
fn placed_probes_report_the_same_as_probes_at_offset_zero() {
    if !require_root("placed_probes_report_the_same_as_probes_at_offset_zero") {
        return;
    }
    let _serial = serial();
    let dir = TempDir::new("placement");
    let placed = traced_leaky(&dir, "auto");
    let at_entry = traced_leaky(&dir, "entry");
    check_report_against_table(&placed, EXPECTED_LEAKS, None);
    check_report_against_table(&at_entry, EXPECTED_LEAKS, None);
    assert_eq!(
        bytes_by_fixture_function(&placed, None),
        bytes_by_fixture_function(&at_entry, None)
    );
    for field in ["allocations", "releases", "failed_calls"] {
        assert_eq!(
            placed["totals"][field], at_entry["totals"][field],
            "totals.{field} differ between placements"
        );
    }
}

/// The C library functions whose probes are checked, with the arguments
/// leaktrace's probe reads (the registers that must not be written before
/// a moved probe).
const CHECKED: [(&str, usize); 8] = [
    ("malloc", 1),
    ("free", 1),
    ("calloc", 2),
    ("realloc", 2),
    ("posix_memalign", 3),
    ("aligned_alloc", 2),
    ("valloc", 1),
    ("pvalloc", 1),
];

/// A function of the C library and where its probe must be.
#[derive(Debug)]
struct Expected {
    name: &'static str,
    /// File offset of the function's first instruction.
    start: u64,
    size: u64,
    /// Offset of the probe from `start` under `--probe-placement auto`.
    auto: u64,
}

/// The file offsets of int3s process `pid` has in `libc` while
/// `leaktrace trace --pid PID --probe-placement PLACEMENT` runs; leaktrace
/// is then killed and the int3s seen gone.
fn int3s_while_traced(dir: &TempDir, pid: u32, libc: &str, placement: &str) -> BTreeSet<u64> {
    let mut tracer = Guarded::spawn(
        &format!("leaktrace trace --probe-placement {placement}"),
        Command::new(leaktrace_bin())
            .args(["trace", "--pid", &pid.to_string()])
            .args([
                "--probe-placement",
                placement,
                "--format",
                "json",
                "--output",
            ])
            .arg(dir.join(&format!("spin-{placement}.json")))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let tracer_err = tracer.stderr_lines();
    if let Err(e) = tracer_err.wait_for(Duration::from_mins(1), |l| {
        l.starts_with("leaktrace: tracing pid ")
    }) {
        panic!("leaktrace ({placement}) never said 'leaktrace: tracing pid ': {e}");
    }
    let int3s = probed::int3_offsets_when(pid, libc, Duration::from_secs(10), |o| !o.is_empty());
    tracer.kill_and_reap();
    let left = probed::int3_offsets_when(pid, libc, Duration::from_secs(10), BTreeSet::is_empty);
    assert!(
        left.is_empty(),
        "int3s left in {libc} after leaktrace ({placement}) was killed: {left:x?}; other tracers: {:?}",
        probed::other_tracers(&[])
    );
    int3s
}

/// The int3s in [start, start + size), as offsets from start.
fn within(int3s: &BTreeSet<u64>, start: u64, size: u64) -> Vec<u64> {
    int3s
        .range(start..start + size)
        .map(|offset| offset - start)
        .collect()
}

/// With `entry`, each checked function of the C library has its int3 on
/// its first byte; with `auto`, where objdump's decoding of the library
/// says the first instruction the kernel emulates is (free: after its
/// flags-only `test`), and the C library's free must be one that moves.
#[test]
fn auto_placement_moves_the_int3_in_the_traced_process() {
    const TEST: &str = "auto_placement_moves_the_int3_in_the_traced_process";
    if !require_root(TEST) {
        return;
    }
    let missing = objdump::missing_tools();
    if !missing.is_empty() {
        return prerequisite_missing(TEST, &format!("{missing:?} (apt-get install binutils)"));
    }
    let _serial = serial();
    let dir = TempDir::new("placement-memory");
    let (spinner, counts) = start_spin(&dir);
    let pid = spinner.pid();
    // Its first count: spin runs, its C library is mapped.
    counts
        .next(Duration::from_secs(10))
        .expect("spin printed no count in 10 s");
    let libc = probed::c_library(pid);
    let library = objdump::Library::read(&probed::rooted_path(pid, &libc));
    let mut expected = Vec::new();
    for (name, arguments) in CHECKED {
        let Some((address, size)) = library.function(name) else {
            eprintln!("{libc} has no {name}: not checked");
            continue;
        };
        let start = library
            .file_offset(address)
            .unwrap_or_else(|| panic!("{name} at {address:#x} is in no LOAD segment"));
        match library.expected_probe_offset(name, arguments) {
            Ok(auto) => expected.push(Expected {
                name,
                start,
                size,
                auto,
            }),
            Err(why) => eprintln!("{name} not checked: {why}"),
        }
    }
    eprintln!("{libc}: expected placements {expected:x?}");
    if !expected.iter().any(|e| e.name == "free" && e.auto > 0) {
        return prerequisite_missing(
            TEST,
            &format!(
                "a C library whose free starts with an instruction auto placement skips (objdump oracle: {expected:?})"
            ),
        );
    }
    probed::assert_no_int3_before_tracing(pid, &libc);

    for placement in ["entry", "auto"] {
        let int3s = int3s_while_traced(&dir, pid, &libc, placement);
        eprintln!("{placement}: int3 at {int3s:x?}");
        for function in &expected {
            let want = if placement == "entry" {
                0
            } else {
                function.auto
            };
            assert_eq!(
                within(&int3s, function.start, function.size),
                [want],
                "--probe-placement {placement}: the int3s in {} (offsets from its start), in {libc}",
                function.name
            );
        }
    }
}
