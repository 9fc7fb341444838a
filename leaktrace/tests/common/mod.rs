//! Shared helpers for leaktrace's integration tests, in submodules:
//!
//! - [`table`]: the expected-leak table of the `leaky` fixture;
//! - [`cgroups`]: cgroup trees made by a test, and children started in them;
//! - [`environment`]: the binary under test, root checks, tools, serialization;
//! - [`prerequisite`]: a missing prerequisite fails the test, or (when
//!   `LEAKTRACE_ALLOW_SKIPS=1`, never under `CI`) is a counted skip;
//! - [`objdump`]: readelf and objdump as an oracle for where probes go;
//! - [`probed`]: where a process's memory holds the int3 of a uprobe;
//! - [`fixtures`]: temporary directories, building fixtures with gcc into
//!   them, the site markers of a fixture source;
//! - [`go`]: Go fixtures built with each Go release, stripped or not;
//! - [`http`]: starting `leaktrace serve`, GETs against it, its metrics;
//! - [`holder`]: a `leaky hold` process that leaks when told and holds on;
//! - [`process`]: child processes that are killed even when a test fails,
//!   line readers with timeouts, running leaktrace;
//! - [`python`]: Python fixtures under pyenv's interpreters, traced, and
//!   the Python frames of a report;
//! - [`report`]: reading a JSON report and checking it against the table;
//! - [`valgrind`]: reading valgrind memcheck's XML output.
//!
//! Each test file includes this with `mod common;` and uses part of it,
//! through the re-exports below (`common::NAME`).
#![allow(dead_code)]

pub(crate) mod cgroups;
pub(crate) mod environment;
pub(crate) mod fixtures;
pub(crate) mod go;
pub(crate) mod holder;
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
pub(crate) use go::{GO_RELEASES, Symbols, build_go, build_go_source, go_command};
#[allow(unused_imports)]
pub(crate) use holder::Holder;
#[allow(unused_imports)]
pub(crate) use http::{Server, get, process_sample, start_serve, start_serve_with};
#[allow(unused_imports)]
pub(crate) use prerequisite::prerequisite_missing;
#[allow(unused_imports)]
pub(crate) use process::{
    Finished, Guarded, Lines, assert_one_error_line, leaktrace, output_text, run_json,
    run_with_timeout, start_tracing, start_tracing_with,
};
#[allow(unused_imports)]
pub(crate) use python::{
    bytes_by_line_in, bytes_by_python_line, native_functions, own_version, pyenv, python_frames,
    site_lines_of, story_leak_is_at_its_line, trace_fixture,
};
#[allow(unused_imports)]
pub(crate) use report::{
    bytes_by_fixture_function, check_report_against_table, describe_sites, frame_functions,
    innermost_function, read_json, sites, wait_for_report,
};
#[allow(unused_imports)]
pub(crate) use table::{
    EXPECTED_LEAKS, Leak, Memory, PAGE, SKIP_PVALLOC, TEMPORARY_FUNCTIONS, expected_without_pvalloc,
};
#[allow(unused_imports)]
pub(crate) use valgrind::{LossRecord, errors, loss_records, tag};
