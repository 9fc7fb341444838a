//! `moduledata.gofunc`, the base of every funcdata offset from Go 1.18 on
//! (the `go:func.*` symbol; `go.func.*` before 1.20). A stripped binary
//! has no symbol for it, but the runtime's `firstmoduledata` sits in the
//! binary's data, starting with a pointer to the `.gopclntab` header and
//! the table's slices: found by that pointer, checked by two more fields,
//! its `gofunc` is read from it.
//!
//! The layout (`runtime/symtab.go`): `pcHeader` (word 0), six slices
//! (words 1-18: `funcnametab` first), `findfunctab`, `minpc`, `maxpc`,
//! `text` (word 22), `etext`, then the data, bss and noptrbss bounds;
//! Go 1.20 added `covctrs, ecovctrs` before `end, gcdata, gcbss`, `types,
//! etypes`, `rodata` and `gofunc`: word 38 in 1.18/1.19, 40 from 1.20.
use object::{Object as _, ObjectSymbol as _};

use super::{
    image::Image,
    pclntab::{Format, Pclntab},
};

/// Word indexes in `moduledata`.
const FUNCNAMETAB: u64 = 1;
const TEXT: u64 = 22;
const GOFUNC_GO118: u64 = 38;
const GOFUNC_GO120: u64 = 40;

/// Bytes of data scanned for the moduledata, at most (it lies in
/// `.noptrdata`, a few hundred KiB in large binaries).
const MAX_SCAN: usize = 64 << 20;

/// `gofunc` for the 1.18+ table `table` whose header is at
/// `table_address`: from the moduledata, else from the `go:func.*`
/// symbol of an unstripped binary. None for 1.16/1.17 tables (their
/// funcdata are absolute) and when neither is found.
pub(crate) fn gofunc(image: &Image, table: &Pclntab<'_>, table_address: u64) -> Option<u64> {
    let index = match table.format() {
        Format::Go116 => return None,
        Format::Go118 => GOFUNC_GO118,
        Format::Go120 => GOFUNC_GO120,
    };
    from_moduledata(image, table, table_address, index).or_else(|| from_symbol(image))
}

fn from_moduledata(
    image: &Image,
    table: &Pclntab<'_>,
    table_address: u64,
    gofunc_index: u64,
) -> Option<u64> {
    let size = image.pointer_size;
    let funcnametab = table_address.checked_add(table.funcnames_offset() as u64)?;
    let mut scanned = 0usize;
    let data_sections = image
        .sections
        .iter()
        .filter(|s| s.name.starts_with(".noptrdata") || s.name.starts_with(".data"));
    for section in data_sections {
        let bytes = image.section_bytes(section);
        let bytes = &bytes[..bytes.len().min(MAX_SCAN.saturating_sub(scanned))];
        scanned += bytes.len();
        for (index, chunk) in bytes.chunks_exact(size).enumerate() {
            if image.word(chunk) != table_address {
                continue;
            }
            let Some(start) = section.address.checked_add((index * size) as u64) else {
                continue;
            };
            let word = |n: u64| image.pointer_at(start.checked_add(n * size as u64)?);
            if word(FUNCNAMETAB) != Some(funcnametab) || word(TEXT) != Some(table.text_start()) {
                continue;
            }
            if let Some(gofunc) = word(gofunc_index)
                && image.exact_at(gofunc, 1).is_some()
            {
                return Some(gofunc);
            }
        }
    }
    None
}

/// `go:func.*` (1.20+) or `go.func.*` (1.18, 1.19) in `.symtab`.
fn from_symbol(image: &Image) -> Option<u64> {
    let file = object::File::parse(&*image.data).ok()?;
    file.symbols()
        .find(|s| matches!(s.name(), Ok("go:func.*" | "go.func.*")))
        .map(|s| s.address())
}
