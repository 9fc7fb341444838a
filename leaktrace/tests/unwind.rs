//! Complete stacks without frame pointers (--stack-mode dwarf, the
//! default): leaks four calls below main in code built with
//! -O2 -fomit-frame-pointer, in C and in C++ through operator new, are
//! reported with the whole chain, the same frames valgrind memcheck gives
//! for them; Debian's python3 (no frame pointers) gets stacks through its
//! eval loop down to the process's entry. --stack-mode fp, for contrast,
//! loses the callers.
mod common;

use std::{path::Path, process::Command};

use common::{
    TempDir, fixture_source, loss_records, prerequisite_missing, require_root, require_tool,
    run_json, serial, sites,
};
use serde_json::Value;

const CHAIN: [&str; 5] = ["level4", "level3", "level2", "level1", "main"];

/// A C++ name without its parameter list: `level4(int)` -> `level4`.
fn bare(name: &str) -> String {
    name.split('(').next().unwrap_or(name).to_string()
}

/// Function names of a site's frames, innermost first, without C++
/// parameter lists (operator new's is kept: it is part of the name).
fn functions(site: &Value) -> Vec<String> {
    site["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let name = f["function"].as_str().unwrap_or("");
            if name.starts_with("operator") {
                name.to_string()
            } else {
                bare(name)
            }
        })
        .collect()
}

fn build(dir: &TempDir, source: &str, compiler: &str) -> std::path::PathBuf {
    let output = dir.join(&source.replace('.', "_"));
    let built = Command::new(compiler)
        .args(["-O2", "-g", "-fomit-frame-pointer", "-o"])
        .arg(&output)
        .arg(fixture_source(source))
        .output()
        .unwrap_or_else(|e| panic!("running {compiler}: {e}"));
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    output
}

fn traced(dir: &TempDir, program: &[&str], stack_mode: &str) -> Value {
    let report = run_json(
        dir,
        &format!("report-{stack_mode}"),
        &["--stack-mode", stack_mode],
        program,
    );
    assert_eq!(report["losses"]["total"], 0, "{}", report["losses"]);
    report
}

/// Sites whose stack contains `function` (main's loop may be unrolled into
/// several call sites), with their summed bytes and counts.
fn sites_through<'a>(report: &'a Value, function: &str) -> (Vec<&'a Value>, u64, u64) {
    let matching: Vec<&Value> = sites(report)
        .iter()
        .filter(|s| functions(s).iter().any(|f| f == function))
        .collect();
    let bytes = matching.iter().map(|s| s["bytes"].as_u64().unwrap()).sum();
    let count = matching.iter().map(|s| s["count"].as_u64().unwrap()).sum();
    (matching, bytes, count)
}

/// valgrind's allocation stack for the fixture's definitely lost blocks,
/// from `level4` to `main`.
fn valgrind_chain(dir: &TempDir, program: &Path) -> Vec<String> {
    let xml = dir.join("valgrind.xml");
    let status = Command::new("valgrind")
        .args(["--leak-check=full", "--show-leak-kinds=all", "--xml=yes"])
        .arg(format!("--xml-file={}", xml.display()))
        .arg(program)
        .status()
        .expect("running valgrind");
    assert!(status.success());
    let xml = std::fs::read_to_string(xml).unwrap();
    // Still reachable through the global `kept`, so not "definitely lost".
    let record = loss_records(&xml)
        .into_iter()
        .find(|r| r.functions.iter().any(|f| bare(f) == "level4"))
        .expect("valgrind reports the level4 leak");
    let names: Vec<String> = record.functions.iter().map(|f| bare(f)).collect();
    let start = names.iter().position(|f| f == "level4").unwrap();
    let end = names.iter().position(|f| f == "main").unwrap();
    names[start..=end].to_vec()
}

fn check_chain(
    test: &str,
    (source, compiler): (&str, &str),
    bytes: u64,
    count: u64,
    innermost: &str,
) {
    if !require_root(test)
        || !require_tool(test, compiler, "apt-get install build-essential")
        || !require_tool(
            test,
            "valgrind",
            "apt-get install valgrind; cargo xtask test installs it",
        )
    {
        return;
    }
    let _serial = serial();
    let dir = TempDir::new("unwind");
    let program = build(&dir, source, compiler);
    let path = program.to_str().unwrap();

    let dwarf = traced(&dir, &[path], "dwarf");
    let (matching, total_bytes, total_count) = sites_through(&dwarf, "level4");
    assert_eq!((total_bytes, total_count), (bytes, count), "{matching:#?}");
    for site in &matching {
        let frames = functions(site);
        assert!(frames[0].contains(innermost), "{frames:?}");
        let start = frames.iter().position(|f| f == "level4").unwrap();
        assert_eq!(frames[start..start + CHAIN.len()], CHAIN, "{frames:?}");
        assert_eq!(
            frames.last().unwrap(),
            "_start",
            "down to the entry: {frames:?}"
        );
        assert!(
            site["frames"]
                .as_array()
                .unwrap()
                .iter()
                .all(|f| f["fallback"] == false)
        );
    }

    assert_eq!(
        valgrind_chain(&dir, &program),
        CHAIN,
        "valgrind's stack for the leak"
    );

    // Frame pointers alone find the same blocks but lose their callers.
    let fp = traced(&dir, &[path], "fp");
    let fp_sites: Vec<&Value> = sites(&fp)
        .iter()
        .filter(|s| functions(s)[0].contains(innermost))
        .collect();
    let fp_bytes: u64 = fp_sites.iter().map(|s| s["bytes"].as_u64().unwrap()).sum();
    assert_eq!(fp_bytes, bytes, "{fp_sites:#?}");
    assert!(
        fp_sites
            .iter()
            .all(|s| !functions(s).iter().any(|f| f == "level1")),
        "frame pointers should not find level1 in an -fomit-frame-pointer build"
    );
}

#[test]
fn c_chain_without_frame_pointers_is_complete() {
    check_chain(
        "c_chain_without_frame_pointers_is_complete",
        ("deep_chain.c", "gcc"),
        3 * 777,
        3,
        "level4",
    );
}

#[test]
fn cxx_chain_through_operator_new_is_complete() {
    check_chain(
        "cxx_chain_through_operator_new_is_complete",
        ("deep_chain.cpp", "g++"),
        2 * 500,
        2,
        "operator new",
    );
}

#[test]
fn python3_allocations_reach_the_entry_through_the_python_frames() {
    if !require_root("python3_allocations_reach_the_entry_through_the_python_frames") {
        return;
    }
    let python = Path::new("/usr/bin/python3");
    if !python.exists() {
        return prerequisite_missing(
            "python3_allocations_reach_the_entry_through_the_python_frames",
            "/usr/bin/python3 (apt-get install python3)",
        );
    }
    let _serial = serial();
    let dir = TempDir::new("python");
    // os._exit skips the interpreter's finalization, which would free them.
    let script = "import os\nkept = []\ndef leak():\n    for _ in range(20):\n        kept.append(bytearray(100000))\nleak()\nos._exit(0)\n";
    let report = traced(&dir, &["/usr/bin/python3", "-c", script], "dwarf");
    let site = sites(&report)
        .iter()
        .find(|s| s["bytes"] == 20 * 100_001 && s["count"] == 20)
        .unwrap_or_else(|| panic!("no site holds the 20 bytearrays: {:#?}", sites(&report)));
    let frames = functions(site);
    // The eval loop's frames are replaced by the Python frames they ran,
    // and the native frames below them stay: the walk went all the way.
    assert!(
        !frames.iter().any(|f| f == "_PyEval_EvalFrameDefault"),
        "an eval-loop frame was not replaced by its Python frames: {frames:#?}"
    );
    for needed in [
        "leak",
        "<module>",
        "Py_BytesMain",
        "__libc_start_call_main",
        "_start",
    ] {
        assert!(
            frames.iter().any(|f| f == needed),
            "{needed} missing from {frames:#?}"
        );
    }
    assert_eq!(frames.last().unwrap(), "_start");
}

/// Code with no unwind table (here JIT-like code in an anonymous mapping)
/// is stepped over with frame pointers, the frame found that way is
/// flagged `fallback`, and the walk goes on with tables below it.
#[test]
fn code_without_tables_falls_back_to_frame_pointers_and_says_so() {
    if !require_root("code_without_tables_falls_back_to_frame_pointers_and_says_so") {
        return;
    }
    let _serial = serial();
    let dir = TempDir::new("jit");
    let program = dir.join("jit_alloc");
    let built = Command::new("gcc")
        .args(["-O0", "-g", "-fno-omit-frame-pointer", "-o"])
        .arg(&program)
        .arg(fixture_source("jit_alloc.c"))
        .output()
        .expect("running gcc");
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let report = traced(&dir, &[program.to_str().unwrap()], "dwarf");
    let site = sites(&report)
        .iter()
        .find(|s| s["bytes"] == 4321)
        .unwrap_or_else(|| panic!("no 4321-byte site: {:#?}", sites(&report)));
    let frames = site["frames"].as_array().unwrap();
    // The JIT code itself: no object, no symbol.
    assert!(
        frames[0]["function"]
            .as_str()
            .unwrap()
            .starts_with("[unknown"),
        "{site:#}"
    );
    assert_eq!(frames[0]["fallback"], false);
    // Its caller was found through the JIT code's frame pointer.
    assert_eq!(frames[1]["function"], "call_jit", "{site:#}");
    assert_eq!(frames[1]["fallback"], true, "{site:#}");
    // And the tables take over again below it.
    assert_eq!(frames[2]["function"], "main", "{site:#}");
    assert_eq!(frames[2]["fallback"], false, "{site:#}");
    assert_eq!(frames.last().unwrap()["function"], "_start");
}
