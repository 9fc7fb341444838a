//! Probe placement end to end: the probes `--probe-placement auto` moves
//! off each function's first instruction (glibc's free onto its `je`,
//! `posix_memalign` past its `cmpb`) must see exactly what probes at offset 0
//! see. Both runs of `leaky` are checked against its table, and against
//! each other site by site.
mod common;

use common::{
    EXPECTED_LEAKS, TempDir, build_leaky, bytes_by_fixture_function, check_report_against_table,
    require_root, run_json, serial,
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
