//! The seed corpora that come from the unit tests' fixtures and from this
//! machine's C library, checked at every `cargo test` (the importers of
//! `diff` take what the renderers write) and written into the source tree
//! with `LEAKTRACE_WRITE_FUZZ_SEEDS=1 cargo test -p leaktrace --lib
//! fuzz::seeds`: the JSON and pprof reports of the report
//! fixtures, and the first bytes of the C library's allocator functions
//! for the placement target. The ELF seeds are small objects built from
//! `tests/fuzz_corpus/elf/*.c` (see the README there); the HTTP seeds
//! are written by hand.
use std::{fs, path::PathBuf};

use prost::Message as _;

use crate::report::{Report, fixtures, json, pprof};

fn corpus(target: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz_corpus")
        .join(target);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn with_python_frames() -> Report {
    let mut report = fixtures::report();
    let mut frame = fixtures::frame("handle", Some("app/views.py"), Some(10));
    frame.kind = crate::symbolize::FrameKind::Python;
    report.sites[0].frames.push(frame);
    report.sites[1].frames.clear();
    report
}

#[test]
fn seeds_are_what_the_importers_take() {
    let write = std::env::var_os("LEAKTRACE_WRITE_FUZZ_SEEDS").is_some_and(|v| v == "1");
    let reports = [
        ("two_sites", fixtures::report()),
        ("markup", fixtures::report_with_markup()),
        ("containers", fixtures::report_in_containers()),
        ("python_and_no_stack", with_python_frames()),
    ];
    for (name, report) in &reports {
        let json_seed = json::render(report);
        let pprof_seed = pprof::profile(report).encode_to_vec();
        // Both importers take them (a seed the importer refuses would
        // only exercise its first check).
        assert!(
            crate::diff::check_untrusted(json_seed.as_bytes()).is_some(),
            "{name}.json"
        );
        // The seed is the protobuf; `diff` reads it gzipped, as written.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &pprof_seed).unwrap();
        let gzipped = gz.finish().unwrap();
        assert!(
            crate::diff::check_untrusted(&gzipped).is_some(),
            "{name}.pb"
        );
        if write {
            fs::write(corpus("diff_json").join(format!("{name}.json")), json_seed).unwrap();
            fs::write(corpus("diff_pprof").join(format!("{name}.pb")), pprof_seed).unwrap();
        }
    }
    if !write {
        return;
    }
    // `--interval` on stdout: several documents in sequence.
    let two = format!(
        "{}\n{}",
        json::render(&reports[0].1),
        json::render(&reports[2].1)
    );
    fs::write(corpus("diff_json").join("interval.json"), two).unwrap();

    // Placement: 8 bytes of address, the protected registers (rdi, rsi,
    // rdx, rcx as bits), then the function's first 64 bytes.
    let libc = "/lib/x86_64-linux-gnu/libc.so.6";
    let data = fs::read(libc).unwrap();
    let symbols = crate::target::elf::object_symbols(&data).unwrap();
    for function in &symbols.functions {
        let start = function.file_offset as usize;
        let mut seed = function.file_offset.to_le_bytes().to_vec();
        seed.push(0x0f);
        seed.extend_from_slice(&data[start..start + 64]);
        let name = format!("libc_{}.bin", function.func.symbol());
        fs::write(corpus("placement").join(name), seed).unwrap();
    }
}
