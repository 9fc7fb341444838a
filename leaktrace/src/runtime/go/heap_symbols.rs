//! Where a Go binary keeps its heap profile: `runtime.mbuckets` (the head
//! of the bucket list) and `runtime.MemProfileRate` (the sampling rate,
//! 0 when the linker turned profiling off), as link-time addresses.
//!
//! `.symtab` names them where present. A stripped binary (`-s -w`) has no
//! `.symtab`, so they are found from the code that uses them, located by
//! name in `.gopclntab` and decoded:
//! - `mbuckets` is the only global `runtime.mProf_FlushLocked` loads
//!   (1.19 to 1.23: `head := mbuckets.Load()`; the loop reads nothing else
//!   by address);
//! - `MemProfileRate` is the global that all of `runtime.mallocgc`,
//!   `runtime.profilealloc` and `runtime.allocmcache` load (see
//!   [`RATE_READERS`]) that lies in `.noptrdata` holding the runtime's
//!   initial value 512 KiB in the file (1.21+), or in `.noptrbss` (1.19,
//!   where `runtime.init` sets it). Exactly one such address must be
//!   found, or none is used.
//!
//! Every address must lie in one of the data sections; the reader of the
//! live process then checks what it finds there (buckets carry their own
//! hash).
use object::{Object as _, ObjectSymbol as _};

use super::{binary::GoBinary, image::Image};

/// `runtime.MemProfileRate`'s initial value (`512 * 1024`).
const DEFAULT_RATE: u64 = 512 * 1024;
/// The data sections a Go global lives in.
const DATA_SECTIONS: [&str; 4] = [".data", ".bss", ".noptrdata", ".noptrbss"];
/// The runtime functions that read `MemProfileRate`: `mallocgc` (`if rate
/// := MemProfileRate; rate > 0`), and `profilealloc` and `allocmcache`
/// (the inlined `nextSample`).
const RATE_READERS: [&str; 3] = [
    "runtime.mallocgc",
    "runtime.profilealloc",
    "runtime.allocmcache",
];
/// No runtime function read here is longer.
const MAX_FUNCTION_BYTES: u64 = 1 << 16;

/// The two globals, at link-time addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProfileSymbols {
    pub mbuckets: u64,
    pub mem_profile_rate: u64,
    /// Found in the code of a stripped binary, not named by `.symtab`.
    pub from_code: bool,
}

/// Finds both globals in the Go binary `data`, or says why not.
pub(crate) fn profile_symbols(data: Vec<u8>) -> Result<ProfileSymbols, String> {
    if let Some(found) = from_symtab(&data) {
        return Ok(found);
    }
    let binary = GoBinary::parse(data.clone())
        .map_err(|e| format!("its function table cannot be read ({e})"))?
        .ok_or("it is not a Go binary")?;
    let sections = data_sections(&data);
    let image = Image::parse(data).ok_or("it is not an ELF file")?;
    if image.pointer_size != 8 || !image.little_endian {
        return Err("only 64-bit little-endian (x86-64) Go binaries are read".into());
    }
    let rip_loads = |name: &str| -> Vec<u64> {
        let Ok(Some(function)) = binary.function_named(name) else {
            return Vec::new();
        };
        let len = function.end.saturating_sub(function.entry);
        if len == 0 || len > MAX_FUNCTION_BYTES {
            return Vec::new();
        }
        image
            .bytes_at(function.entry, len as usize)
            .map(|code| rip_relative_targets(code, function.entry))
            .unwrap_or_default()
    };
    let mut buckets: Vec<u64> = rip_loads("runtime.mProf_FlushLocked")
        .into_iter()
        .filter(|&a| in_section(&sections, None, a))
        .collect();
    buckets.sort_unstable();
    buckets.dedup();
    // The globals every reader of the rate loads, then those that can be
    // the rate: initialized to 512 KiB in the file (1.21+), or zero-filled
    // and set by `runtime.init` (1.19).
    let mut rates: Option<Vec<u64>> = None;
    for name in RATE_READERS {
        let loads = rip_loads(name);
        if loads.is_empty() {
            continue;
        }
        rates = Some(match rates {
            None => loads,
            Some(mut so_far) => {
                so_far.retain(|a| loads.contains(a));
                so_far
            }
        });
    }
    let mut rates: Vec<u64> = rates
        .unwrap_or_default()
        .into_iter()
        .filter(|&a| {
            (in_section(&sections, Some(".noptrdata"), a)
                && image.exact_at(a, 8).map(|b| image.word(b)) == Some(DEFAULT_RATE))
                || in_section(&sections, Some(".noptrbss"), a)
        })
        .collect();
    rates.sort_unstable();
    rates.dedup();
    match (&buckets[..], &rates[..]) {
        (&[mbuckets], &[mem_profile_rate]) => Ok(ProfileSymbols {
            mbuckets,
            mem_profile_rate,
            from_code: true,
        }),
        _ => Err(format!(
            "stripped, and its code does not show where the heap profile is ({} candidates for runtime.mbuckets, {} for runtime.MemProfileRate)",
            buckets.len(),
            rates.len()
        )),
    }
}

/// Both globals from `.symtab`, each in a data section.
fn from_symtab(data: &[u8]) -> Option<ProfileSymbols> {
    let file = object::File::parse(data).ok()?;
    let (mut mbuckets, mut rate) = (None, None);
    for symbol in file.symbols() {
        match symbol.name() {
            Ok("runtime.mbuckets") => mbuckets = Some(symbol.address()),
            Ok("runtime.MemProfileRate") => rate = Some(symbol.address()),
            _ => {}
        }
    }
    let sections = data_sections(data);
    let (mbuckets, mem_profile_rate) = (mbuckets?, rate?);
    (in_section(&sections, None, mbuckets) && in_section(&sections, None, mem_profile_rate))
        .then_some(ProfileSymbols {
            mbuckets,
            mem_profile_rate,
            from_code: false,
        })
}

/// The data sections' names and address ranges.
type Sections = Vec<(String, std::ops::Range<u64>)>;

fn data_sections(data: &[u8]) -> Sections {
    use object::ObjectSection as _;
    let Ok(file) = object::File::parse(data) else {
        return Vec::new();
    };
    file.sections()
        .filter_map(|s| {
            let name = s.name().ok()?;
            DATA_SECTIONS.contains(&name).then(|| {
                (
                    name.to_string(),
                    s.address()..s.address().saturating_add(s.size()),
                )
            })
        })
        .collect()
}

/// Whether the 8 bytes at `address` lie in a data section (`name`, or
/// any with None).
fn in_section(sections: &Sections, name: Option<&str>, address: u64) -> bool {
    sections.iter().any(|(section, range)| {
        name.is_none_or(|n| n == section)
            && range.contains(&address)
            && address.saturating_add(8) <= range.end
    })
}

/// The addresses of the RIP-relative memory operands of `code` (loaded at
/// `address`): the globals a function reads, writes or takes the address of.
pub(crate) fn rip_relative_targets(code: &[u8], address: u64) -> Vec<u64> {
    super::data_refs::data_refs(code, address)
        .into_iter()
        .map(|reference| reference.address)
        .collect()
}
