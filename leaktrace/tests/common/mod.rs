//! Shared helpers for leaktrace's integration tests, in submodules:
//!
//! - [`table`]: the expected-leak table of the `leaky` fixture;
//! - [`environment`]: the binary under test, root checks, tools, serialization;
//! - [`prerequisite`]: a missing prerequisite fails the test, or (when
//!   `LEAKTRACE_ALLOW_SKIPS=1`, never under `CI`) is a counted skip;
//! - [`objdump`]: readelf and objdump as an oracle for where probes go;
//! - [`probed`]: where a process's memory holds the int3 of a uprobe;
//! - [`fixtures`]: temporary directories, building fixtures with gcc into
//!   them, the site markers of a fixture source;
//! - [`http`]: starting `leaktrace serve` and GETs against it;
//! - [`process`]: child processes that are killed even when a test fails,
//!   line readers with timeouts, running leaktrace;
//! - [`python`]: pyenv's interpreters, Python fixtures traced, reports read
//!   by Python frame;
//! - [`report`]: reading a JSON report and checking it against the table;
//! - [`valgrind`]: reading valgrind memcheck's XML output.
//!
//! Each test file includes this with `mod common;` and uses part of it,
//! through the re-exports below (`common::NAME`).
#![allow(dead_code)]

pub(crate) mod environment;
pub(crate) mod fixtures;
pub(crate) mod http;
pub(crate) mod objdump;
pub(crate) mod prerequisite;
pub(crate) mod probed;
pub(crate) mod process;
pub(crate) mod python;
pub(crate) mod report;
pub(crate) mod table;
pub(crate) mod valgrind;

// Each test file uses only some of these: the rest are unused there.
#[allow(unused_imports)]
pub(crate) use environment::{
    effective_uid, have_tool, is_root, leaktrace_bin, require_root, require_tool, serial,
};
#[allow(unused_imports)]
pub(crate) use fixtures::{
    TempDir, build_leaky, build_nomalloc, build_spin, compile, fixture_source, site_lines,
    start_spin,
};
#[allow(unused_imports)]
pub(crate) use http::{Server, get, start_serve};
#[allow(unused_imports)]
pub(crate) use prerequisite::prerequisite_missing;
#[allow(unused_imports)]
pub(crate) use process::{
    Finished, Guarded, Lines, assert_one_error_line, leaktrace, output_text, run_json,
    run_with_timeout,
};
#[allow(unused_imports)]
pub(crate) use report::{
    bytes_by_fixture_function, check_report_against_table, describe_sites, frame_functions,
    innermost_function, read_json, sites,
};
#[allow(unused_imports)]
pub(crate) use table::{
    EXPECTED_LEAKS, Leak, Memory, PAGE, SKIP_PVALLOC, TEMPORARY_FUNCTIONS, expected_without_pvalloc,
};
#[allow(unused_imports)]
pub(crate) use valgrind::{LossRecord, errors, loss_records, tag};
