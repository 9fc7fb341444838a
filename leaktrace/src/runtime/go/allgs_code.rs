//! Where `runtime.allgs` and `runtime.allglen` are in a binary without
//! `.symtab`, read from the code of three runtime functions that
//! `.gopclntab` still names (the same in Go 1.17 to 1.23, `proc.go`):
//!
//! - `runtime.forEachG` locks `allglock`, then ranges over `allgs`: it
//!   loads the slice's pointer and length, two 8-byte loads 8 bytes
//!   apart, and no other such pair;
//! - `runtime.forEachGRace` starts with `atomicAllG()`, which loads
//!   `allglen` first, then `allgptr`;
//! - `runtime.allgadd` appends to `allgs` (its pointer, length and
//!   capacity at +0, +8, +16) and atomically stores `allglen`: what the
//!   two others gave is checked against it.
//!
//! Each address must also lie in a data section (`.noptrbss`, `.bss`,
//! `.data`, `.noptrdata`), whole. Anything else is refused with the
//! reason: a wrong address would read garbage as goroutines.
use super::{
    binary::GoBinary,
    data_refs::{Access, DataRef},
};

/// The functions read, in the order [`from_refs`] takes their references.
pub(crate) const FUNCTIONS: [&str; 3] = [
    "runtime.forEachG",
    "runtime.forEachGRace",
    "runtime.allgadd",
];

/// The sections a Go variable may live in.
pub(crate) const DATA_SECTIONS: [&str; 4] = [".noptrdata", ".data", ".bss", ".noptrbss"];

/// `runtime.allgs` and `runtime.allglen` from `binary`'s code; `sections`
/// are the data sections' (start, end) addresses.
pub(crate) fn locate(binary: &GoBinary, sections: &[(u64, u64)]) -> Result<(u64, u64), String> {
    let mut refs = Vec::with_capacity(FUNCTIONS.len());
    for name in FUNCTIONS {
        match binary.data_refs(name) {
            Ok(Some(found)) => refs.push(found),
            Ok(None) => return Err(format!("its .gopclntab has no {name}")),
            Err(err) => return Err(format!("reading {name} from .gopclntab: {err}")),
        }
    }
    let in_data = |address: u64, size: u64| {
        address.checked_add(size).is_some_and(|end| {
            sections
                .iter()
                .any(|&(start, stop)| start <= address && end <= stop)
        })
    };
    from_refs(&refs[0], &refs[1], &refs[2], &in_data)
}

/// `runtime.allgs` and `runtime.allglen` from the references of
/// [`FUNCTIONS`]; `in_data(address, size)` says whether `size` bytes at
/// `address` lie in one data section.
pub(crate) fn from_refs(
    for_each_g: &[DataRef],
    for_each_g_race: &[DataRef],
    allgadd: &[DataRef],
    in_data: &dyn Fn(u64, u64) -> bool,
) -> Result<(u64, u64), String> {
    let mut pairs: Vec<u64> = for_each_g
        .iter()
        .filter(|r| r.loads(8))
        .map(|r| r.address)
        .filter(|&a| {
            a.checked_add(8)
                .is_some_and(|next| for_each_g.iter().any(|r| r.loads(8) && r.address == next))
        })
        .collect();
    pairs.sort_unstable();
    pairs.dedup();
    let [allgs] = pairs[..] else {
        return Err(format!(
            "runtime.forEachG loads {} slice headers, not one (runtime.allgs)",
            pairs.len()
        ));
    };
    let allglen = for_each_g_race
        .iter()
        .find(|r| r.loads(8))
        .map(|r| r.address)
        .ok_or("runtime.forEachGRace loads no runtime.allglen")?;
    let referred = |address: u64| allgadd.iter().any(|r| r.address == address);
    let slice_fields = [0, 8, 16].map(|field| allgs.checked_add(field));
    if !slice_fields.iter().all(|f| f.is_some_and(referred)) {
        return Err(format!(
            "runtime.allgadd does not append to the slice runtime.forEachG reads ({allgs:#x})"
        ));
    }
    if !allgadd.iter().any(|r| {
        r.address == allglen
            && matches!(
                r.access,
                Access::Address | Access::Store | Access::LoadStore
            )
    }) {
        return Err(format!(
            "runtime.allgadd does not store the length runtime.forEachGRace reads ({allglen:#x})"
        ));
    }
    if allglen.abs_diff(allgs) < 24 {
        return Err(format!(
            "runtime.allglen ({allglen:#x}) overlaps runtime.allgs ({allgs:#x})"
        ));
    }
    if !in_data(allgs, 24) || !in_data(allglen, 8) {
        return Err(format!(
            "runtime.allgs ({allgs:#x}) or runtime.allglen ({allglen:#x}) lies outside the data sections"
        ));
    }
    Ok((allgs, allglen))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(address: u64) -> DataRef {
        DataRef {
            at: 0,
            address,
            access: Access::Load,
            size: 8,
        }
    }

    fn with(address: u64, access: Access) -> DataRef {
        DataRef {
            access,
            size: if access == Access::Address { 0 } else { 8 },
            ..load(address)
        }
    }

    const ALLGS: u64 = 0x55_cb40;
    const ALLGLEN: u64 = 0x57_c870;
    const ALLGPTR: u64 = 0x55_c8a0;
    const ALLGLOCK: u64 = 0x57_c868;

    /// As Go 1.23 built them (`go tool objdump` of the fixture).
    fn go_1_23() -> [Vec<DataRef>; 3] {
        let for_each_g = vec![
            with(ALLGLOCK, Access::Address),
            load(ALLGS),
            load(ALLGS + 8),
            with(ALLGLOCK, Access::Address),
        ];
        let for_each_g_race = vec![load(ALLGLEN), load(ALLGPTR)];
        let allgadd = vec![
            with(ALLGLOCK, Access::Address),
            load(ALLGS + 16),
            load(ALLGS + 8),
            load(ALLGS),
            with(ALLGS + 16, Access::Store),
            with(ALLGS, Access::Store),
            with(ALLGS + 8, Access::Store),
            load(ALLGPTR),
            with(ALLGPTR, Access::Address),
            load(ALLGS + 8),
            with(ALLGLEN, Access::Address),
            with(ALLGLOCK, Access::Address),
        ];
        [for_each_g, for_each_g_race, allgadd]
    }

    fn anywhere(_: u64, _: u64) -> bool {
        true
    }

    #[test]
    fn the_runtimes_own_references_give_both_addresses() {
        let [a, b, c] = go_1_23();
        assert_eq!(from_refs(&a, &b, &c, &anywhere), Ok((ALLGS, ALLGLEN)));
        let bss = |address: u64, size: u64| {
            (0x55_c000..0x58_0000).contains(&address) && address + size <= 0x58_0000
        };
        assert_eq!(from_refs(&a, &b, &c, &bss), Ok((ALLGS, ALLGLEN)));
    }

    #[test]
    fn anything_ambiguous_or_unchecked_is_refused() {
        let [a, b, c] = go_1_23();
        // Outside the data sections.
        let nowhere = |_: u64, _: u64| false;
        let err = from_refs(&a, &b, &c, &nowhere).unwrap_err();
        assert!(err.contains("outside the data sections"), "{err}");
        // A second slice header read in forEachG.
        let mut two = a.clone();
        two.extend([load(0x60_0000), load(0x60_0008)]);
        let err = from_refs(&two, &b, &c, &anywhere).unwrap_err();
        assert!(err.contains("2 slice headers"), "{err}");
        // None at all.
        let err = from_refs(&a[..2], &b, &c, &anywhere).unwrap_err();
        assert!(err.contains("0 slice headers"), "{err}");
        // forEachGRace loading nothing.
        let err = from_refs(&a, &[], &c, &anywhere).unwrap_err();
        assert!(err.contains("no runtime.allglen"), "{err}");
        // allgadd not touching the capacity.
        let no_cap: Vec<DataRef> = c
            .iter()
            .copied()
            .filter(|r| r.address != ALLGS + 16)
            .collect();
        let err = from_refs(&a, &b, &no_cap, &anywhere).unwrap_err();
        assert!(err.contains("does not append"), "{err}");
        // allgadd only reading the length forEachGRace gave.
        let read_only: Vec<DataRef> = c
            .iter()
            .map(|r| {
                if r.address == ALLGLEN {
                    load(ALLGLEN)
                } else {
                    *r
                }
            })
            .collect();
        let err = from_refs(&a, &b, &read_only, &anywhere).unwrap_err();
        assert!(err.contains("does not store the length"), "{err}");
        // forEachGRace's first load inside the slice header.
        let err = from_refs(&a, &[load(ALLGS + 8)], &c, &anywhere).unwrap_err();
        assert!(err.contains("overlaps"), "{err}");
    }
}
