//! What a Go binary tells about reading its goroutines from outside: where
//! `runtime.allgs` and `runtime.allglen` are, where `runtime.g`'s fields
//! sit, what its wait reasons are called, which release built it. Or why
//! its goroutines cannot be read.
//!
//! Each step takes [`BinaryFacts`], what is known about the binary, and
//! tries its sources in turn: the ELF symbol table (`.symtab`) and DWARF
//! first; a binary stripped of both (`-ldflags=-s -w`) has neither, and
//! then `.gopclntab` names the runtime functions whose code refers to
//! `runtime.allgs` ([`allgs_code`]), `.go.buildinfo` names the release,
//! and the release's tables give `runtime.g`'s layout and the wait
//! reasons (releases without tables are refused, with the reason).
use std::collections::HashMap;

use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol};

use super::{
    allgs_code::{self, DATA_SECTIONS},
    binary::GoBinary as Functions,
    buildinfo,
    g_layout::{GLayout, GoRelease, TABLED_RELEASES},
    wait_reasons::{self, MAX_REASON_LEN, MAX_REASONS},
};

/// The symbols read from `.symtab`.
const WANTED: [&str; 4] = [
    "runtime.allgs",
    "runtime.allglen",
    "runtime.waitReasonStrings",
    "runtime.buildVersion",
];

/// Where a fact came from, for the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    /// The binary's own DWARF or data.
    Binary,
    /// The table of the release that built it.
    ReleaseTable,
}

/// Everything needed to read a process's goroutines, from its binary.
#[derive(Clone, Debug)]
pub(crate) struct GoroutineSource {
    /// `runtime.buildVersion`, e.g. "go1.23.4" (None: not found).
    pub version: Option<String>,
    /// Link-time addresses of `runtime.allgs` (a slice header) and
    /// `runtime.allglen`; add the load bias in a PIE.
    pub allgs: u64,
    pub allglen: u64,
    pub layout: GLayout,
    pub layout_origin: Origin,
    pub wait_reasons: Vec<String>,
    /// Loadable segments (file offset, file size, virtual address), to
    /// place the binary in a process's mappings.
    pub segments: Vec<(u64, u64, u64)>,
    /// A PIE (`ET_DYN`): its addresses move by the load bias.
    pub position_independent: bool,
}

/// A binary inspected: not Go, Go with goroutines readable, or Go with a
/// reason they are not.
#[derive(Clone, Debug)]
pub(crate) enum GoBinary {
    NotGo,
    Go(Result<GoroutineSource, String>),
}

/// What is known about one binary: each step below reads what it needs.
pub(crate) struct BinaryFacts<'data, 'file> {
    pub file: &'file object::File<'data>,
    /// Address and size of each [`WANTED`] symbol in `.symtab`.
    pub symbols: HashMap<&'static str, (u64, u64)>,
    /// The release, from `runtime.buildVersion`, else from `.go.buildinfo`
    /// (None: unread).
    pub version: Option<String>,
    /// The function table, read when `.symtab` does not name
    /// `runtime.allgs` (None: not read; an error: unreadable).
    pub functions: Option<Result<Functions, String>>,
}

impl<'data, 'file> BinaryFacts<'data, 'file> {
    pub(crate) fn read(file: &'file object::File<'data>) -> BinaryFacts<'data, 'file> {
        let mut symbols = HashMap::new();
        for symbol in file.symbols() {
            let Ok(name) = symbol.name() else { continue };
            if let Some(wanted) = WANTED.iter().find(|w| **w == name) {
                symbols
                    .entry(*wanted)
                    .or_insert((symbol.address(), symbol.size()));
            }
        }
        let version = symbols
            .get("runtime.buildVersion")
            .and_then(|&(address, _)| read_string_header(file, address, MAX_REASON_LEN))
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
        BinaryFacts {
            file,
            symbols,
            version,
            functions: None,
        }
    }

    /// Adds what a binary without `runtime.allgs` in `.symtab` still has:
    /// its function table, and the release its build info names. `data`
    /// is the file's bytes (copied, for the table to keep).
    pub(crate) fn with_code(mut self, data: &[u8]) -> BinaryFacts<'data, 'file> {
        if self.symbols.contains_key("runtime.allgs") && self.version.is_some() {
            return self;
        }
        let functions = match Functions::parse(data.to_vec()) {
            Ok(Some(functions)) => Ok(functions),
            Ok(None) => Err("it has no .gopclntab".to_owned()),
            Err(err) => Err(format!("its .gopclntab is unreadable ({err})")),
        };
        if self.version.is_none()
            && let Ok(functions) = &functions
        {
            self.version = buildinfo::inspect(functions.image()).and_then(|b| b.version);
        }
        self.functions = Some(functions);
        self
    }

    pub(crate) fn release(&self) -> Option<GoRelease> {
        self.version.as_deref().and_then(GoRelease::parse)
    }
}

/// Whether `file` is a Go binary (the sections every Go linker writes).
pub(crate) fn is_go(file: &object::File<'_>) -> bool {
    [".gopclntab", ".go.buildinfo", ".note.go.buildid"]
        .iter()
        .any(|name| file.section_by_name(name).is_some())
}

/// Inspects an ELF file's bytes.
pub(crate) fn inspect(data: &[u8]) -> GoBinary {
    let Ok(file) = object::File::parse(data) else {
        return GoBinary::NotGo;
    };
    if !is_go(&file) {
        return GoBinary::NotGo;
    }
    GoBinary::Go(source(&BinaryFacts::read(&file).with_code(data)))
}

/// Every step, in turn.
pub(crate) fn source(facts: &BinaryFacts<'_, '_>) -> Result<GoroutineSource, String> {
    let (allgs, allglen) = locate_allgs(facts)?;
    let (layout, layout_origin) = g_layout(facts)?;
    Ok(GoroutineSource {
        version: facts.version.clone(),
        allgs,
        allglen,
        layout,
        layout_origin,
        wait_reasons: wait_reason_names(facts),
        segments: facts
            .file
            .segments()
            .map(|s| {
                let (offset, size) = s.file_range();
                (offset, size, s.address())
            })
            .collect(),
        position_independent: facts.file.kind() == object::ObjectKind::Dynamic,
    })
}

/// Where `runtime.allgs` and `runtime.allglen` are: from `.symtab`, else
/// (stripped) from the code of the runtime functions that use them.
pub(crate) fn locate_allgs(facts: &BinaryFacts<'_, '_>) -> Result<(u64, u64), String> {
    match (
        facts.symbols.get("runtime.allgs"),
        facts.symbols.get("runtime.allglen"),
    ) {
        (Some(&(allgs, _)), Some(&(allglen, _))) => Ok((allgs, allglen)),
        _ if facts.file.section_by_name(".symtab").is_none() => match &facts.functions {
            Some(Ok(functions)) => allgs_code::locate(functions, &data_sections(facts.file))
                .map_err(|why| {
                    format!(
                        "stripped binary (no .symtab): runtime.allgs not found from its code: {why}"
                    )
                }),
            Some(Err(why)) => Err(format!("stripped binary (no .symtab) and {why}")),
            None => Err("stripped binary (no .symtab): its code was not read".to_owned()),
        },
        _ => Err("its symbol table has no runtime.allgs and runtime.allglen".to_owned()),
    }
}

/// The (start, end) addresses of the sections Go variables live in.
fn data_sections(file: &object::File<'_>) -> Vec<(u64, u64)> {
    file.sections()
        .filter(|s| s.name().is_ok_and(|name| DATA_SECTIONS.contains(&name)))
        .filter_map(|s| Some((s.address(), s.address().checked_add(s.size())?)))
        .collect()
}

/// Where `runtime.g`'s fields are: DWARF, else the release's table.
pub(crate) fn g_layout(facts: &BinaryFacts<'_, '_>) -> Result<(GLayout, Origin), String> {
    let dwarf = GLayout::from_dwarf(facts.file);
    if let Ok(Some(layout)) = dwarf {
        return Ok((layout, Origin::Binary));
    }
    let release = facts.release();
    if let Some(layout) = release.and_then(GLayout::for_release) {
        return Ok((layout, Origin::ReleaseTable));
    }
    let why_not_dwarf = match dwarf {
        Err(err) => format!("its DWARF does not describe runtime.g ({err:#})"),
        _ => "no DWARF".to_owned(),
    };
    Err(match (release, facts.version.as_deref()) {
        (Some(release), _) => format!(
            "{why_not_dwarf} and no runtime.g table for Go {release} (tables: Go {TABLED_RELEASES})"
        ),
        (None, Some(version)) => {
            format!("{why_not_dwarf} and release {version:?} not understood")
        }
        (None, None) => format!("{why_not_dwarf} and its release unread"),
    })
}

/// The wait reasons' names: the binary's `runtime.waitReasonStrings`, else
/// the release's table, else none (each wait is then "wait reason N").
pub(crate) fn wait_reason_names(facts: &BinaryFacts<'_, '_>) -> Vec<String> {
    if let Some(names) = facts
        .symbols
        .get("runtime.waitReasonStrings")
        .and_then(|&(address, size)| read_string_array(facts.file, address, size))
    {
        return names;
    }
    facts
        .release()
        .and_then(wait_reasons::for_release)
        .unwrap_or_default()
}

/// `[N]string` at `address` (`size` bytes: N string headers), read from
/// the file's sections; None when any part lies outside them.
pub(crate) fn read_string_array(
    file: &object::File<'_>,
    address: u64,
    size: u64,
) -> Option<Vec<String>> {
    let count = usize::try_from(size / 16).ok()?.min(MAX_REASONS);
    (0..count as u64)
        .map(|i| {
            let bytes = read_string_header(file, address.checked_add(i * 16)?, MAX_REASON_LEN)?;
            Some(String::from_utf8_lossy(&bytes).into_owned())
        })
        .collect()
}

/// The bytes of the Go string whose header (ptr, len) is at `address`,
/// from the file's sections; None when unreadable or over `cap`.
fn read_string_header(file: &object::File<'_>, address: u64, cap: usize) -> Option<Vec<u8>> {
    let header = bytes_at(file, address, 16)?;
    let pointer = u64::from_le_bytes(header.get(..8)?.try_into().ok()?);
    let length = u64::from_le_bytes(header.get(8..16)?.try_into().ok()?);
    if length > cap as u64 {
        return None;
    }
    if length == 0 {
        return Some(Vec::new());
    }
    Some(bytes_at(file, pointer, length)?.to_vec())
}

/// `length` bytes at link-time `address`, from the section holding them.
fn bytes_at<'data>(file: &object::File<'data>, address: u64, length: u64) -> Option<&'data [u8]> {
    file.sections().find_map(|section| {
        let start = section.address();
        let end = start.checked_add(section.size())?;
        if address < start || address.checked_add(length)? > end {
            return None;
        }
        section.data_range(address, length).ok().flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_c_binary_is_not_go() {
        let data = std::fs::read("/proc/self/exe").expect("own binary");
        assert!(matches!(inspect(&data), GoBinary::NotGo));
        assert!(matches!(inspect(b"not an ELF"), GoBinary::NotGo));
    }
}
