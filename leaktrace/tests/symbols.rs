//! Symbolization end to end: C++ names come back demangled (a method of a
//! class in a namespace, libstdc++'s operator new), and a malloc inside an
//! always-inlined helper is reported as an inlined frame inside its caller,
//! with file and line (`tests/fixtures/cxx_leaks.cpp`).
mod common;

use std::process::Command;

use common::{TempDir, fixture_source, require_root, run_json, serial, sites};
use serde_json::Value;

fn functions(site: &Value) -> Vec<String> {
    site["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["function"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn cxx_names_are_demangled_and_inlined_calls_expanded() {
    if !require_root("cxx_names_are_demangled_and_inlined_calls_expanded") {
        return;
    }
    let _serial = serial();
    let dir = TempDir::new("symbols");
    let program = dir.join("cxx_leaks");
    let built = Command::new("g++")
        .args(["-O1", "-g", "-fno-omit-frame-pointer", "-o"])
        .arg(&program)
        .arg(fixture_source("cxx_leaks.cpp"))
        .output()
        .expect("running g++");
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let report = run_json(&dir, "report", &[], &[program.to_str().unwrap()]);
    let all = sites(&report);
    let find = |innermost: &str| -> &Value {
        all.iter()
            .find(|s| functions(s).first().is_some_and(|f| f.contains(innermost)))
            .unwrap_or_else(|| panic!("no site starting in {innermost}: {all:#?}"))
    };

    // main's loop may be unrolled into several call sites: sum them.
    let baskets: Vec<&Value> = all
        .iter()
        .filter(|s| {
            functions(s)
                .first()
                .is_some_and(|f| f.contains("shop::Store::open_basket"))
        })
        .collect();
    assert_eq!(functions(baskets[0])[0], "shop::Store::open_basket()");
    assert_eq!(
        baskets
            .iter()
            .map(|s| s["bytes"].as_u64().unwrap())
            .sum::<u64>(),
        3 * 96
    );
    assert_eq!(
        baskets
            .iter()
            .map(|s| s["count"].as_u64().unwrap())
            .sum::<u64>(),
        3
    );
    assert!(
        baskets.iter().all(|s| functions(s)[1] == "main"),
        "{baskets:#?}"
    );

    let widget = find("operator new");
    assert_eq!(widget["bytes"], 200);
    assert!(
        widget["frames"][0]["module"]
            .as_str()
            .unwrap()
            .contains("libstdc++"),
        "{widget:#}"
    );

    let inlined = find("grab");
    assert_eq!(inlined["bytes"], 321);
    let frames = inlined["frames"].as_array().unwrap();
    assert_eq!(frames[0]["inlined"], true, "{inlined:#}");
    assert!(
        frames[0]["file"]
            .as_str()
            .unwrap()
            .ends_with("cxx_leaks.cpp")
    );
    assert_eq!(frames[1]["function"], "inlined_caller()", "{inlined:#}");
    assert_eq!(frames[1]["inlined"], false);
    assert_eq!(frames[0]["address"], frames[1]["address"]);
}
