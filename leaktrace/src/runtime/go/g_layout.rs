//! Where a goroutine's facts sit in `runtime.g`: its id, status, wait
//! reason, the PCs of its `go` statement and start function, and its
//! stack's bounds.
//!
//! The layout changes across releases (`atomicstatus` became an
//! `atomic.Uint32` in 1.20, `goid` unsigned in 1.20, fields were added
//! before `gopc` in 1.21 and 1.23), so it is read from the binary's own
//! DWARF when it has one ([`GLayout::from_dwarf`]); a per-release table
//! ([`GLayout::for_release`]) stands in when it does not. The tables are
//! checked against DWARF of a binary built by each release (the tests).
use std::{borrow::Cow, collections::HashMap};

use anyhow::{Context as _, Result, anyhow, bail};
use gimli::{AttributeValue, EndianSlice, LittleEndian};
use object::{CompressionFormat, Object, ObjectSection};

/// The largest DWARF section decompressed (Go's are zlib-compressed; a
/// hostile header could claim any size).
const MAX_SECTION: u64 = 512 << 20;
/// Entries visited in `.debug_info` at most (a runaway file).
const MAX_ENTRIES: usize = 20_000_000;
/// The largest `runtime.g` believed (it is ~400 bytes in every release).
const MAX_G_SIZE: u64 = 4096;

/// A Go release, `go1.23.4` read as 1.23: layouts change between minor
/// releases only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct GoRelease {
    pub major: u32,
    pub minor: u32,
}

impl GoRelease {
    /// Reads `go1.23.4`, `go1.21rc2` or `go1.19`; None for anything else
    /// (`devel +abc`, garbage).
    pub(crate) fn parse(version: &str) -> Option<GoRelease> {
        let rest = version.strip_prefix("go")?;
        let mut parts = rest.splitn(3, '.');
        let major = parts.next()?.parse().ok()?;
        let minor_text = parts.next()?;
        let digits: String = minor_text
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        let minor = digits.parse().ok()?;
        Some(GoRelease { major, minor })
    }
}

impl std::fmt::Display for GoRelease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// The releases [`GLayout::for_release`] has a table for, as notes name
/// them (a test checks each has one).
pub(crate) const TABLED_RELEASES: &str = "1.19, 1.21, 1.22, 1.23";

/// Byte offsets of the fields read from each `runtime.g`, and how many of
/// its bytes cover them all (one read per goroutine).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GLayout {
    /// `stack.lo` and `stack.hi` (uintptr each).
    pub stack_lo: u64,
    pub stack_hi: u64,
    /// `atomicstatus` (uint32, or the `value` of an `atomic.Uint32`).
    pub atomicstatus: u64,
    /// `goid` (int64 until 1.19, uint64 since).
    pub goid: u64,
    /// `waitreason` (a uint8 `waitReason` since 1.11).
    pub waitreason: u64,
    /// `gopc`: the PC just after the `go` statement's call to `newproc`.
    pub gopc: u64,
    /// `startpc`: the entry of the function the goroutine runs.
    pub startpc: u64,
}

impl GLayout {
    /// How many bytes from a `g`'s start cover every field read.
    pub(crate) fn span(&self) -> u64 {
        let GLayout {
            stack_lo,
            stack_hi,
            atomicstatus,
            goid,
            waitreason,
            gopc,
            startpc,
        } = *self;
        [
            stack_lo + 8,
            stack_hi + 8,
            atomicstatus + 4,
            goid + 8,
            waitreason + 1,
            gopc + 8,
            startpc + 8,
        ]
        .into_iter()
        .max()
        .unwrap_or(0)
    }

    /// The table for `release` (measured from DWARF of a binary each
    /// release built; see the tests), or None for a release not tabled.
    pub(crate) fn for_release(release: GoRelease) -> Option<GLayout> {
        // 1.23 added `syscallbp` before `param`: everything after moved 8.
        let (shift, gopc, startpc) = match (release.major, release.minor) {
            (1, 19) => (0, 296, 312),
            (1, 21 | 22) => (0, 280, 296),
            (1, 23) => (8, 288, 304),
            _ => return None,
        };
        Some(GLayout {
            stack_lo: 0,
            stack_hi: 8,
            atomicstatus: 144 + shift,
            goid: 152 + shift,
            waitreason: 176 + shift,
            gopc,
            startpc,
        })
    }

    /// The layout from the binary's DWARF: `Ok(None)` when it has no
    /// `.debug_info` (stripped with `-w`), an error when its DWARF is there
    /// but does not describe `runtime.g` as expected.
    pub(crate) fn from_dwarf(file: &object::File<'_>) -> Result<Option<GLayout>> {
        if file.section_by_name(".debug_info").is_none() {
            return Ok(None);
        }
        let structs = read_structs(file)?;
        let g = structs
            .by_name("runtime.g")
            .ok_or_else(|| anyhow!("DWARF has no runtime.g"))?;
        let field = |name: &str| -> Result<&Member> {
            g.members
                .iter()
                .find(|m| m.name == name)
                .ok_or_else(|| anyhow!("runtime.g has no field {name}"))
        };
        let stack = field("stack")?;
        let stack_type = structs
            .at(stack.type_offset)
            .ok_or_else(|| anyhow!("runtime.g.stack's type is not a struct"))?;
        let inner = |of: &Struct, name: &str| -> Result<u64> {
            of.members
                .iter()
                .find(|m| m.name == name)
                .map(|m| m.offset)
                .ok_or_else(|| anyhow!("{} has no field {name}", of.name))
        };
        let status = field("atomicstatus")?;
        // Since 1.20 an atomic.Uint32: its `value` (after a zero-size noCopy).
        let status_value = match structs.at(status.type_offset) {
            Some(atomic) => inner(atomic, "value")?,
            None => 0,
        };
        let layout = GLayout {
            stack_lo: stack.offset + inner(stack_type, "lo")?,
            stack_hi: stack.offset + inner(stack_type, "hi")?,
            atomicstatus: status.offset + status_value,
            goid: field("goid")?.offset,
            waitreason: field("waitreason")?.offset,
            gopc: field("gopc")?.offset,
            startpc: field("startpc")?.offset,
        };
        if layout.span() > g.size.min(MAX_G_SIZE) {
            bail!(
                "runtime.g's fields end at {} but it is {} bytes",
                layout.span(),
                g.size
            );
        }
        Ok(Some(layout))
    }
}

/// A struct member: its name, offset, and its type's `.debug_info` offset.
struct Member {
    name: String,
    offset: u64,
    type_offset: u64,
}

struct Struct {
    name: String,
    size: u64,
    members: Vec<Member>,
}

/// The runtime's named structs, by `.debug_info` offset.
struct Structs {
    at: HashMap<u64, Struct>,
    by_name: HashMap<String, u64>,
    /// Typedefs (offset → their type's offset), followed when a member's
    /// type is one.
    typedefs: HashMap<u64, u64>,
}

impl Structs {
    fn by_name(&self, name: &str) -> Option<&Struct> {
        self.at.get(self.by_name.get(name)?)
    }

    fn at(&self, mut offset: u64) -> Option<&Struct> {
        for _ in 0..8 {
            if let Some(found) = self.at.get(&offset) {
                return Some(found);
            }
            offset = *self.typedefs.get(&offset)?;
        }
        None
    }
}

/// Whether a struct's members are kept: the runtime's own and its atomics.
fn wanted(name: &str) -> bool {
    name.starts_with("runtime.") || name.contains("/atomic.")
}

/// A DWARF section's bytes, decompressed (zlib, as Go writes them) with
/// the size capped; empty when absent.
pub(crate) fn section_bytes<'a>(file: &object::File<'a>, name: &str) -> Result<Cow<'a, [u8]>> {
    let Some(section) = file.section_by_name(name) else {
        return Ok(Cow::Borrowed(&[]));
    };
    let compressed = section
        .compressed_data()
        .with_context(|| format!("reading {name}"))?;
    match compressed.format {
        CompressionFormat::None => Ok(Cow::Borrowed(compressed.data)),
        CompressionFormat::Zlib => {
            if compressed.uncompressed_size > MAX_SECTION {
                bail!(
                    "{name} claims {} bytes uncompressed",
                    compressed.uncompressed_size
                );
            }
            let mut out = Vec::with_capacity(compressed.uncompressed_size as usize);
            let mut inflate = flate2::Decompress::new(true);
            inflate
                .decompress_vec(compressed.data, &mut out, flate2::FlushDecompress::Finish)
                .with_context(|| format!("inflating {name}"))?;
            Ok(Cow::Owned(out))
        }
        other => bail!("{name} is compressed as {other:?}"),
    }
}

/// Every struct `wanted` names, with its members, and every typedef.
fn read_structs(file: &object::File<'_>) -> Result<Structs> {
    // Only what struct members need: no line programs, no locations.
    let sections: HashMap<&str, Cow<'_, [u8]>> = [".debug_info", ".debug_abbrev", ".debug_str"]
        .into_iter()
        .map(|name| Ok((name, section_bytes(file, name)?)))
        .collect::<Result<_>>()?;
    let dwarf = gimli::Dwarf::load(|id| -> Result<EndianSlice<'_, LittleEndian>> {
        let bytes = sections.get(id.name()).map_or(&[][..], |c| &c[..]);
        Ok(EndianSlice::new(bytes, LittleEndian))
    })?;
    let mut structs = Structs {
        at: HashMap::new(),
        by_name: HashMap::new(),
        typedefs: HashMap::new(),
    };
    let mut visited = 0usize;
    let mut units = dwarf.units();
    while let Some(header) = units.next()? {
        // The header, not `dwarf.unit`: that would parse line programs too.
        let abbreviations = header.abbreviations(&dwarf.debug_abbrev)?;
        let global = |offset: gimli::UnitOffset| -> Option<u64> {
            offset.to_debug_info_offset(&header).map(|o| o.0 as u64)
        };
        let name_of = |entry: &gimli::DebuggingInformationEntry<_>| -> Option<String> {
            let value = entry.attr_value(gimli::DW_AT_name)?;
            let text = value.string_value(&dwarf.debug_str)?;
            Some(text.to_string_lossy().into_owned())
        };
        let type_of = |entry: &gimli::DebuggingInformationEntry<_>| -> Option<u64> {
            match entry.attr_value(gimli::DW_AT_type)? {
                AttributeValue::UnitRef(offset) => global(offset),
                AttributeValue::DebugInfoRef(offset) => Some(offset.0 as u64),
                _ => None,
            }
        };
        // The struct whose members are being read, and its depth.
        let mut current: Option<(u64, isize)> = None;
        let mut entries = header.entries(&abbreviations);
        while let Some(entry) = entries.next_dfs()? {
            visited += 1;
            if visited > MAX_ENTRIES {
                bail!("over {MAX_ENTRIES} DWARF entries");
            }
            let depth = entry.depth();
            if current.is_some_and(|(_, at)| depth <= at) {
                current = None;
            }
            let tag = entry.tag();
            if tag == gimli::DW_TAG_member {
                let Some((owner, at)) = current else { continue };
                if depth != at + 1 {
                    continue;
                }
                let Some(name) = name_of(entry) else {
                    continue;
                };
                let offset = entry
                    .attr(gimli::DW_AT_data_member_location)
                    .and_then(gimli::Attribute::udata_value)
                    .unwrap_or(0);
                let type_offset = type_of(entry).unwrap_or(u64::MAX);
                if let Some(owner) = structs.at.get_mut(&owner) {
                    owner.members.push(Member {
                        name,
                        offset,
                        type_offset,
                    });
                }
                continue;
            }
            let Some(offset) = global(entry.offset()) else {
                continue;
            };
            if tag == gimli::DW_TAG_typedef {
                if let Some(target) = type_of(entry) {
                    structs.typedefs.insert(offset, target);
                }
                continue;
            }
            if tag != gimli::DW_TAG_structure_type {
                continue;
            }
            let Some(name) = name_of(entry) else {
                continue;
            };
            if !wanted(&name) {
                continue;
            }
            let size = entry
                .attr(gimli::DW_AT_byte_size)
                .and_then(gimli::Attribute::udata_value)
                .unwrap_or(0);
            structs.by_name.entry(name.clone()).or_insert(offset);
            structs.at.insert(
                offset,
                Struct {
                    name,
                    size,
                    members: Vec::new(),
                },
            );
            current = Some((offset, depth));
        }
    }
    Ok(structs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_read_from_build_versions() {
        let at = |major, minor| Some(GoRelease { major, minor });
        assert_eq!(GoRelease::parse("go1.23.4"), at(1, 23));
        assert_eq!(GoRelease::parse("go1.19"), at(1, 19));
        assert_eq!(GoRelease::parse("go1.21rc2"), at(1, 21));
        assert_eq!(GoRelease::parse("go1.22.0 X:boringcrypto"), at(1, 22));
        assert_eq!(GoRelease::parse("devel +abcdef"), None);
        assert_eq!(GoRelease::parse("go"), None);
        assert_eq!(GoRelease::parse("go1.x"), None);
    }

    #[test]
    fn the_releases_notes_name_are_exactly_those_tabled() {
        let tabled: Vec<String> = (0..64)
            .map(|minor| GoRelease { major: 1, minor })
            .filter(|&r| GLayout::for_release(r).is_some())
            .map(|r| r.to_string())
            .collect();
        assert_eq!(tabled.join(", "), TABLED_RELEASES);
        for release in TABLED_RELEASES.split(", ") {
            let release = GoRelease::parse(&format!("go{release}")).expect("a release");
            assert!(super::super::wait_reasons::for_release(release).is_some());
        }
    }

    #[test]
    fn every_tabled_release_has_its_fields_in_order() {
        for minor in [19, 21, 22, 23] {
            let layout = GLayout::for_release(GoRelease { major: 1, minor }).expect("tabled");
            assert!(layout.atomicstatus < layout.goid, "1.{minor}");
            assert!(layout.goid < layout.waitreason, "1.{minor}");
            assert!(layout.waitreason < layout.gopc, "1.{minor}");
            assert!(layout.gopc < layout.startpc, "1.{minor}");
            assert_eq!(layout.span(), layout.startpc + 8, "1.{minor}");
        }
        assert_eq!(
            GLayout::for_release(GoRelease {
                major: 1,
                minor: 20
            }),
            None
        );
        assert_eq!(
            GLayout::for_release(GoRelease {
                major: 2,
                minor: 19
            }),
            None
        );
    }
}
