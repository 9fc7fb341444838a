//! A Go binary's function table, ready for lookups: its `.gopclntab`
//! located and its header checked once, `moduledata.gofunc` found, the
//! file kept so that inline trees are read from it on demand.
use std::ops::Range;

use super::{
    data_refs::{DataRef, MAX_CODE, data_refs},
    image::Image,
    moduledata,
    pclntab::{GoFrame, GoFunction, Memory, Pclntab, PclntabError},
};

/// A Go binary's function table.
pub(crate) struct GoBinary {
    image: Image,
    /// `.gopclntab`'s bytes in the file, and its address.
    table: Range<usize>,
    gofunc: Option<u64>,
}

impl Memory for Image {
    fn exact_at(&self, address: u64, len: usize) -> Option<&[u8]> {
        Image::exact_at(self, address, len)
    }
}

impl GoBinary {
    /// Reads the function table of the object file `data`: `Ok(None)` when
    /// it has none (not Go, or not ELF), an error when it has one that
    /// cannot be read.
    pub(crate) fn parse(data: Vec<u8>) -> Result<Option<GoBinary>, PclntabError> {
        let Some(image) = Image::parse(data) else {
            return Ok(None);
        };
        let Some(section) = image.section(".gopclntab") else {
            return Ok(None);
        };
        let (table, table_address) = (section.file_range.clone(), section.address);
        let gofunc = {
            let parsed = Pclntab::parse(image.data.get(table.clone()).unwrap_or_default(), None)?;
            parsed.text_range()?;
            moduledata::gofunc(&image, &parsed, table_address)
        };
        Ok(Some(GoBinary {
            image,
            table,
            gofunc,
        }))
    }

    /// The table, its header parsed again (a few reads).
    fn pclntab(&self) -> Result<Pclntab<'_>, PclntabError> {
        let data = self.image.data.get(self.table.clone()).unwrap_or_default();
        Pclntab::parse(data, self.gofunc)
    }

    /// The frames at `pc` (a link-time address), innermost first; None
    /// outside the Go functions.
    pub(crate) fn frames(&self, pc: u64) -> Result<Option<Vec<GoFrame>>, PclntabError> {
        self.pclntab()?.frames(pc, &self.image)
    }

    /// The function called `name` (e.g. `runtime.allgadd`).
    pub(crate) fn function_named(&self, name: &str) -> Result<Option<GoFunction>, PclntabError> {
        self.pclntab()?.function_named(name)
    }

    /// The function holding `pc`.
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "for the goroutine reader, and the tests")
    )]
    pub(crate) fn function_at(&self, pc: u64) -> Result<Option<GoFunction>, PclntabError> {
        self.pclntab()?.function_at(pc)
    }

    /// Whether inlined calls can be expanded: false for a 1.18+ table whose
    /// `gofunc` was not found (frames are then the outermost function's).
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "for the goroutine reader, and the tests")
    )]
    pub(crate) fn expands_inlined_calls(&self) -> bool {
        self.gofunc.is_some()
            || self
                .pclntab()
                .is_ok_and(|t| t.format() == super::pclntab::Format::Go116)
    }

    /// The data addresses the code of the function called `name` refers
    /// to, in code order ([`data_refs`]); `Ok(None)` when no function has
    /// that name, or its code is not in the file.
    pub(crate) fn data_refs(&self, name: &str) -> Result<Option<Vec<DataRef>>, PclntabError> {
        let Some(function) = self.function_named(name)? else {
            return Ok(None);
        };
        let Some(length) = function
            .end
            .checked_sub(function.entry)
            .and_then(|l| usize::try_from(l).ok())
            .filter(|&l| l <= MAX_CODE)
        else {
            return Ok(None);
        };
        Ok(self
            .image
            .exact_at(function.entry, length)
            .map(|code| data_refs(code, function.entry)))
    }

    /// The object file, read by address.
    pub(crate) fn image(&self) -> &Image {
        &self.image
    }

    /// The link-time address of a file offset of the binary.
    pub(crate) fn address_of_offset(&self, offset: u64) -> Option<u64> {
        self.image.address_of_offset(offset)
    }
}
