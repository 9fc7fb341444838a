//! A Go object file held in memory, read by virtual address: the few
//! sections the Go readers need, and its loadable segments to turn an
//! address into bytes of the file (and a file offset into an address).
//!
//! The file is the target's: hostile. Every range is checked against the
//! file's length with checked arithmetic; a read that does not fit is
//! `None`, never a panic.
use std::ops::Range;

use object::{Object as _, ObjectSection as _, ObjectSegment as _};

/// One loadable segment: where it is mapped and which bytes of the file
/// back it (the rest, up to `mem_size`, is zero-filled `.bss`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Segment {
    pub address: u64,
    pub mem_size: u64,
    pub file_offset: u64,
    pub file_size: u64,
}

/// A section's place in the address space and in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Section {
    pub name: String,
    pub address: u64,
    /// Its bytes in the file (empty for `.bss`-like sections).
    pub file_range: Range<usize>,
}

/// An object file's bytes, with its segments and sections.
pub(crate) struct Image {
    pub data: Vec<u8>,
    pub little_endian: bool,
    pub pointer_size: usize,
    pub segments: Vec<Segment>,
    pub sections: Vec<Section>,
}

/// Sections and segments are counted, not trusted: a file claiming more
/// is refused rather than walked.
const MAX_SECTIONS: usize = 1 << 16;

impl Image {
    /// Reads the ELF headers of `data` (None: not an ELF object this
    /// reader understands).
    pub(crate) fn parse(data: Vec<u8>) -> Option<Image> {
        let (little_endian, pointer_size, segments, sections) = {
            let file = object::File::parse(&*data).ok()?;
            let segments: Vec<Segment> = file
                .segments()
                .take(MAX_SECTIONS)
                .map(|s| {
                    let (file_offset, file_size) = s.file_range();
                    Segment {
                        address: s.address(),
                        mem_size: s.size(),
                        file_offset,
                        file_size,
                    }
                })
                .collect();
            let mut sections = Vec::new();
            for section in file.sections().take(MAX_SECTIONS) {
                let Ok(name) = section.name() else { continue };
                let file_range = section
                    .file_range()
                    .and_then(|(start, size)| {
                        let start = usize::try_from(start).ok()?;
                        let end = start.checked_add(usize::try_from(size).ok()?)?;
                        (end <= data.len()).then_some(start..end)
                    })
                    .unwrap_or(0..0);
                sections.push(Section {
                    name: name.to_string(),
                    address: section.address(),
                    file_range,
                });
            }
            let pointer_size = if file.is_64() { 8 } else { 4 };
            (file.is_little_endian(), pointer_size, segments, sections)
        };
        Some(Image {
            data,
            little_endian,
            pointer_size,
            segments,
            sections,
        })
    }

    /// The first section called `name`.
    pub(crate) fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.name == name)
    }

    /// A section's bytes in the file.
    pub(crate) fn section_bytes(&self, section: &Section) -> &[u8] {
        self.data
            .get(section.file_range.clone())
            .unwrap_or_default()
    }

    /// Up to `len` bytes at virtual `address`, as far as one segment's file
    /// bytes reach (fewer near their end; None when none are there).
    pub(crate) fn bytes_at(&self, address: u64, len: usize) -> Option<&[u8]> {
        for segment in &self.segments {
            let Some(into) = address.checked_sub(segment.address) else {
                continue;
            };
            if into >= segment.mem_size.min(segment.file_size) {
                continue;
            }
            let available = segment.file_size - into;
            let begin = usize::try_from(segment.file_offset.checked_add(into)?).ok()?;
            let take = usize::try_from(available).unwrap_or(usize::MAX).min(len);
            let end = begin.checked_add(take)?;
            if let Some(bytes) = self.data.get(begin..end.min(self.data.len()))
                && !bytes.is_empty()
            {
                return Some(bytes);
            }
        }
        None
    }

    /// Exactly `len` bytes at `address`, or None.
    pub(crate) fn exact_at(&self, address: u64, len: usize) -> Option<&[u8]> {
        self.bytes_at(address, len).filter(|b| b.len() == len)
    }

    /// A pointer-sized word at `address`, in the file's byte order.
    pub(crate) fn pointer_at(&self, address: u64) -> Option<u64> {
        let bytes = self.exact_at(address, self.pointer_size)?;
        Some(self.word(bytes))
    }

    /// An unsigned integer from up to 8 bytes, in the file's byte order.
    pub(crate) fn word(&self, bytes: &[u8]) -> u64 {
        let fold = |value: u64, &b: &u8| (value << 8) | u64::from(b);
        if self.little_endian {
            bytes.iter().take(8).rev().fold(0, fold)
        } else {
            bytes.iter().take(8).fold(0, fold)
        }
    }

    /// The virtual address a file offset is loaded at (None: no loadable
    /// segment maps it).
    pub(crate) fn address_of_offset(&self, offset: u64) -> Option<u64> {
        self.segments.iter().find_map(|s| {
            let into = offset.checked_sub(s.file_offset)?;
            (into < s.file_size.min(s.mem_size)).then(|| s.address.checked_add(into))?
        })
    }
}
