//! Fuzz targets: the parsers that read what a traced process (or a user's
//! file, or a client on the network) hands leaktrace, each behind one
//! entry point that must return for every input, without a panic, in
//! bounded time and memory.
//!
//! Why here and public: the targets need the crate's private parsers, and
//! two drivers share them: `tests/fuzz.rs` (the suite's short run: the
//! committed corpus plus a few thousand inputs made by [`mutate`]) and the
//! cargo-fuzz crate in `leaktrace/fuzz/` (`cargo xtask fuzz`, the long
//! coverage-guided campaign). Not an API: hidden from the docs.
//!
//! Each target also checks what its parser promises beyond not crashing
//! (a probe offset inside the decoded window, table rows sorted by pc), so
//! a wrong answer on odd input fails like a crash.
pub mod mutate;
#[cfg(test)]
mod seeds;

use iced_x86::Register;
use leaktrace_common::AllocFn;

use crate::{
    target::{elf, placement, procfs::Mapping},
    unwind,
};

/// A fuzz target: one parser fed untrusted bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// An ELF object's symbols, probe placements and interpreter
    /// (`target::elf`), and the load bias of a mapping of it.
    Elf,
    /// An ELF object's `.eh_frame` compiled into unwind rows (`unwind`),
    /// or a bare `.eh_frame` section's.
    EhFrame,
    /// Probe placement on a function's first bytes, and the direct branch
    /// targets of a code section (`target::placement`).
    Placement,
    /// `diff`'s JSON importer, and the diff and renderings of what it read.
    DiffJson,
    /// `diff`'s pprof importer: the input is a `profile.proto`, gzipped
    /// here (so the fuzzer mutates the protobuf, not the deflate stream);
    /// the raw input is also given as is.
    DiffPprof,
    /// `serve`'s request routing (`app::http`), on a request head.
    Http,
}

impl Target {
    pub const ALL: [Target; 6] = [
        Target::Elf,
        Target::EhFrame,
        Target::Placement,
        Target::DiffJson,
        Target::DiffPprof,
        Target::Http,
    ];

    /// The name on the command line, of the corpus folder and of the
    /// cargo-fuzz target.
    pub fn name(self) -> &'static str {
        match self {
            Target::Elf => "elf",
            Target::EhFrame => "eh_frame",
            Target::Placement => "placement",
            Target::DiffJson => "diff_json",
            Target::DiffPprof => "diff_pprof",
            Target::Http => "http",
        }
    }

    /// The folders of `tests/fuzz_corpus/` its seeds are in: its own
    /// (seeds, and the crashes found), and the ELF objects for both ELF
    /// targets.
    pub fn corpus_dirs(self) -> &'static [&'static str] {
        match self {
            Target::EhFrame => &["elf", "eh_frame"],
            _ => std::slice::from_ref(match self {
                Target::Elf => &"elf",
                Target::EhFrame => &"eh_frame",
                Target::Placement => &"placement",
                Target::DiffJson => &"diff_json",
                Target::DiffPprof => &"diff_pprof",
                Target::Http => &"http",
            }),
        }
    }

    pub fn from_name(name: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Runs the target on one input. Panics only on a bug: a crash of the
    /// parser, or an answer that breaks its promise.
    pub fn run(self, data: &[u8]) {
        match self {
            Target::Elf => elf_symbols(data),
            Target::EhFrame => eh_frame(data),
            Target::Placement => placement_window(data),
            Target::DiffJson => {
                let _: Option<usize> = crate::diff::check_untrusted(data);
            }
            Target::DiffPprof => diff_pprof(data),
            Target::Http => http_head(data),
        }
    }
}

/// The `CPython` allocator's names, as exact object mode asks for them.
const PYTHON_NAMES: [(&str, AllocFn); 3] = [
    ("_PyObject_Malloc", AllocFn::PyObjectMalloc),
    ("PyObject_Free", AllocFn::PyObjectFree),
    ("_PyObject_Realloc", AllocFn::PyObjectRealloc),
];

fn elf_symbols(data: &[u8]) {
    if let Ok(symbols) = elf::object_symbols(data) {
        for function in &symbols.functions {
            // The probe lands inside the 64 decoded bytes.
            assert!(function.placement.offset < 64, "{function:?}");
        }
    }
    let _: Option<_> = elf::named_functions(data, &PYTHON_NAMES, true).ok();
    let _: Option<_> = elf::program_interpreter(data).ok();
    if let Some(segments) = elf::loadable_segments(data) {
        // A mapping whose numbers come from the input's tail.
        let word = |i: usize| {
            let at = data.len().saturating_sub(8 * (i + 1));
            data.get(at..at + 8)
                .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
        };
        let mapping = Mapping {
            start: word(0),
            end: word(0).wrapping_add(0x1000),
            file_offset: word(1),
            executable: true,
            path: "/fuzz".into(),
        };
        let _: Option<u64> = elf::load_bias(&segments, &mapping);
    }
}

/// Input: an ELF object, or else a bare `.eh_frame` section (at 4 MiB: its
/// pc-relative addresses land above 0).
fn eh_frame(data: &[u8]) {
    let table = if data.starts_with(b"\x7fELF") {
        unwind::build_table_with_stats(data)
    } else {
        unwind::eh_frame_table(data, 0x40_0000)
    };
    if let Ok((rows, _)) = table {
        // The kernel binary-searches the rows: they must be sorted, one a pc.
        assert!(
            rows.windows(2).all(|w| w[0].pc < w[1].pc),
            "rows not strictly sorted by pc"
        );
    }
}

/// Input: 8 bytes of address, 1 byte choosing the protected registers,
/// then code.
fn placement_window(data: &[u8]) {
    const REGISTERS: [Register; 6] = [
        Register::RDI,
        Register::RSI,
        Register::RDX,
        Register::RCX,
        Register::RAX,
        Register::R8,
    ];
    let Some((head, code)) = data.split_at_checked(9) else {
        return;
    };
    let address = u64::from_le_bytes(head[..8].try_into().unwrap_or_default());
    let protected: Vec<Register> = REGISTERS
        .iter()
        .enumerate()
        .filter(|(i, _)| head[8] & (1 << i) != 0)
        .map(|(_, r)| *r)
        .collect();
    let window = &code[..code.len().min(64)];
    let placed = placement::place(window, address, &protected);
    assert!(
        placed.offset == 0 || (placed.offset as usize) < window.len(),
        "{placed:?} past {} bytes",
        window.len()
    );
    let _: Vec<u64> = placement::direct_branch_targets(code, address);
}

fn diff_pprof(data: &[u8]) {
    use std::io::Write as _;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let gzipped = gz
        .write_all(data)
        .and_then(|()| gz.finish())
        .expect("compressing into memory cannot fail");
    let _: Option<usize> = crate::diff::check_untrusted(&gzipped);
    let _: Option<usize> = crate::diff::check_untrusted(data);
}

/// A request head as a connection reads it: scanned as bytes arrive
/// (each prefix, as a slow client sends it), then its request line
/// routed. A head is never complete unless its request line is HTTP, and a
/// line whose method is not GET is never served a page.
fn http_head(data: &[u8]) {
    use crate::app::http::{Head, Page, route, scan_head};
    let data = &data[..data.len().min(16 << 10)];
    let mut verdict = Head::Incomplete;
    // Every prefix of the first 512 bytes, then one in 64 (each scan
    // reads the whole prefix).
    let ends = (1..=data.len()).filter(|&end| end < 512 || end % 64 == 0 || end == data.len());
    for end in ends {
        verdict = scan_head(&data[..end]);
        if verdict != Head::Incomplete {
            break;
        }
    }
    let text = String::from_utf8_lossy(data);
    let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
    let page = route(line);
    if verdict == Head::Complete {
        assert_ne!(page, Page::BadRequest, "{line:?}");
    }
    if line.split(' ').next() != Some("GET") {
        assert!(
            matches!(page, Page::BadMethod | Page::BadRequest),
            "{line:?}: {page:?}"
        );
    }
}
