//! A small deterministic mutator for the suite's short fuzz run: no
//! coverage feedback (that is the cargo-fuzz campaign's job), but the
//! mutations that break binary parsers: flipped bits, boundary integers
//! written over header fields (of ELF headers, section and program
//! headers in particular, where offsets and sizes are read), cut, grown
//! and spliced inputs. Seeded, so a failing input is found again by its
//! seed and index.

/// xorshift64*: enough randomness for mutations, no dependency.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
}

/// Values that sit on the edges of the widths headers use.
const INTERESTING: [u64; 14] = [
    0,
    1,
    8,
    0x40,
    0x7f,
    0x80,
    0xff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    0x1_0000_0000,
    0x7fff_ffff_ffff_ffff,
    u64::MAX - 7,
    u64::MAX,
];

/// Writes the low `width` bytes of `value` at `at`, little-endian, where
/// they fit.
fn put(data: &mut [u8], at: usize, width: usize, value: u64) {
    let end = at.saturating_add(width).min(data.len());
    for (i, byte) in data[at.min(end)..end].iter_mut().enumerate() {
        *byte = (value >> (8 * i)) as u8;
    }
}

fn word(data: &[u8], at: usize, width: usize) -> u64 {
    (0..width).fold(0, |v, i| {
        v | u64::from(data.get(at.wrapping_add(i)).copied().unwrap_or(0)) << (8 * i)
    })
}

/// The ELF64 header tables whose entries' fields [`elf_field`] breaks:
/// (where the header keeps the table's offset, where its entry count, an
/// entry's size, the offsets in an entry of the fields worth breaking).
const TABLES: [(usize, usize, usize, [usize; 5]); 2] = [
    // Section headers: addr/offset/size/link/entsize.
    (0x28, 0x3c, 64, [0x10, 0x18, 0x20, 0x28, 0x38]),
    // Program headers: type/offset/vaddr/filesz/memsz.
    (0x20, 0x38, 56, [0, 0x8, 0x10, 0x20, 0x28]),
];

/// An offset where an ELF64 header, section header or program header
/// keeps a field worth breaking; any offset for other inputs.
fn elf_field(data: &[u8], rng: &mut Rng) -> usize {
    // e_entry, e_phoff, e_shoff, e_phentsize/e_phnum, e_shentsize/e_shnum/e_shstrndx.
    const HEADER: [usize; 8] = [0x18, 0x20, 0x28, 0x36, 0x38, 0x3a, 0x3c, 0x3e];
    if !data.starts_with(b"\x7fELF") || data.len() < 64 {
        return rng.below(data.len());
    }
    let table = rng.below(3);
    if table == 0 {
        return HEADER[rng.below(HEADER.len())];
    }
    let (offset_at, count_at, entry_size, fields) = TABLES[table - 1];
    let offset = word(data, offset_at, 8) as usize;
    let count = word(data, count_at, 2) as usize;
    let field = fields[rng.below(fields.len())];
    offset
        .saturating_add(entry_size.saturating_mul(rng.below(count.max(1))))
        .saturating_add(field)
}

/// One mutation of `input` (with `others` to splice from), 1 to 8
/// changes.
pub fn mutate(input: &[u8], others: &[Vec<u8>], rng: &mut Rng) -> Vec<u8> {
    let mut data = input.to_vec();
    for _ in 0..=rng.below(8) {
        match rng.below(9) {
            0 if !data.is_empty() => {
                let at = rng.below(data.len());
                data[at] ^= 1 << rng.below(8);
            }
            1 if !data.is_empty() => {
                let at = rng.below(data.len());
                data[at] = rng.next_u64() as u8;
            }
            2 | 3 if !data.is_empty() => {
                let at = elf_field(&data, rng);
                let width = [1, 2, 4, 8][rng.below(4)];
                let value = if rng.below(4) == 0 {
                    rng.next_u64()
                } else {
                    INTERESTING[rng.below(INTERESTING.len())]
                };
                put(&mut data, at, width, value);
            }
            4 => data.truncate(rng.below(data.len() + 1)),
            5 => {
                let at = rng.below(data.len() + 1);
                let run: Vec<u8> = (0..=rng.below(16)).map(|_| rng.next_u64() as u8).collect();
                data.splice(at..at, run);
            }
            6 if !data.is_empty() => {
                // Repeat a chunk (tokens, JSON values, instructions).
                let from = rng.below(data.len());
                let len = rng.below((data.len() - from).min(64)) + 1;
                let chunk = data[from..from + len].to_vec();
                let at = rng.below(data.len() + 1);
                data.splice(at..at, chunk);
            }
            7 if !data.is_empty() => {
                let from = rng.below(data.len());
                let len = rng.below((data.len() - from).min(64)) + 1;
                data.drain(from..from + len);
            }
            8 if !others.is_empty() => {
                let other = &others[rng.below(others.len())];
                let cut = rng.below(data.len() + 1);
                let from = rng.below(other.len() + 1);
                data.truncate(cut);
                data.extend_from_slice(&other[from..]);
            }
            _ => {}
        }
    }
    data
}
