//! Is an object file a Go binary, and which Go release built it.
//!
//! Marks of a Go binary: the `.note.go.buildid` note (the Go linker's build
//! id, ELF note "Go" of type 4), the `.go.buildinfo` section (Go 1.13+) and
//! `.gopclntab`, all kept by `-ldflags=-s -w`. The release is read from
//! `.go.buildinfo`: after its 14-byte magic, a pointer size and a flags
//! byte; with flag 2 (Go 1.18+) the version follows the 32-byte header as a
//! varint-length string, before it the header holds the address of the
//! `runtime.buildVersion` string header. Where `.symtab` names
//! `runtime.buildVersion`, the string it holds is read too, to confirm.
//!
//! The file is hostile: every read is bounds-checked through [`Image`],
//! strings are capped and read lossily.
use object::{Object as _, ObjectSymbol as _};

use super::image::Image;

const BUILDINFO_MAGIC: &[u8] = b"\xff Go buildinf:";
/// No Go release string is longer (`go1.22.12`, `devel go1.23-abcdef...`).
const MAX_VERSION: u64 = 256;
const MAX_BUILD_ID: usize = 1024;

/// What a Go binary says of its build.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct GoBuild {
    /// `go1.22.12`, as `go version BINARY` prints it; None when unreadable.
    pub version: Option<String>,
    /// The Go build id from the note, when there is one.
    pub build_id: Option<String>,
    /// `runtime.buildVersion` read through `.symtab` (unstripped only).
    pub symbol_version: Option<String>,
    /// The release as `.go.buildinfo` wrote it: inline (1.18+) or through
    /// a pointer (1.13-1.17).
    pub inline_format: bool,
}

/// The Go build of `image`, or None when nothing marks it as Go.
pub(crate) fn inspect(image: &Image) -> Option<GoBuild> {
    let build_id = image
        .section(".note.go.buildid")
        .and_then(|s| go_note(image.section_bytes(s)));
    let buildinfo = image
        .section(".go.buildinfo")
        .map(|s| image.section_bytes(s))
        .filter(|b| b.starts_with(BUILDINFO_MAGIC));
    if build_id.is_none() && buildinfo.is_none() && image.section(".gopclntab").is_none() {
        return None;
    }
    let (version, inline_format) = match buildinfo.and_then(|b| buildinfo_version(image, b)) {
        Some((version, inline)) => (Some(version), inline),
        None => (None, false),
    };
    Some(GoBuild {
        version,
        build_id,
        symbol_version: symbol_version(image),
        inline_format,
    })
}

/// The build id of a `.note.go.buildid` section: a note named "Go" of
/// type 4 (`ELF_NOTE_GOBUILDID_TAG`).
fn go_note(bytes: &[u8]) -> Option<String> {
    let field = |at: usize| {
        let b = bytes.get(at..at.checked_add(4)?)?;
        usize::try_from(u32::from_le_bytes(b.try_into().ok()?)).ok()
    };
    let (name_size, desc_size, kind) = (field(0)?, field(4)?, field(8)?);
    if name_size != 4 || kind != 4 || bytes.get(12..16)? != b"Go\0\0" {
        return None;
    }
    let desc = bytes.get(16..16usize.checked_add(desc_size.min(MAX_BUILD_ID))?)?;
    Some(String::from_utf8_lossy(desc).into_owned())
}

/// The release `.go.buildinfo` holds, and whether it was inline.
fn buildinfo_version(image: &Image, bytes: &[u8]) -> Option<(String, bool)> {
    let (&pointer_size, &flags) = (bytes.get(14)?, bytes.get(15)?);
    if flags & 2 != 0 {
        let (length, used) = uvarint(bytes.get(32..)?)?;
        let start = 32usize.checked_add(used)?;
        let length = usize::try_from(length.min(MAX_VERSION)).ok()?;
        let text = bytes.get(start..start.checked_add(length)?)?;
        return Some((String::from_utf8_lossy(text).into_owned(), true));
    }
    // Pre-1.18: the address of runtime.buildVersion's string header.
    if usize::from(pointer_size) != image.pointer_size || flags & 1 != 0 && image.little_endian {
        return None;
    }
    let header = image.word(bytes.get(16..16 + usize::from(pointer_size))?);
    Some((go_string(image, header)?, false))
}

/// The Go string whose header (data pointer, length) is at `address`.
fn go_string(image: &Image, address: u64) -> Option<String> {
    let data = image.pointer_at(address)?;
    let length = image.pointer_at(address.checked_add(image.pointer_size as u64)?)?;
    if length == 0 || length > MAX_VERSION {
        return None;
    }
    let text = image.exact_at(data, usize::try_from(length).ok()?)?;
    Some(String::from_utf8_lossy(text).into_owned())
}

/// `runtime.buildVersion` through `.symtab`, where there is one.
fn symbol_version(image: &Image) -> Option<String> {
    let file = object::File::parse(&*image.data).ok()?;
    let symbol = file
        .symbols()
        .find(|s| s.name() == Ok("runtime.buildVersion"))?;
    go_string(image, symbol.address())
}

/// An unsigned LEB128 value and its length (at most 10 bytes).
fn uvarint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (index, &byte) in bytes.iter().take(10).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            return Some((value, index + 1));
        }
    }
    None
}
