//! The running kernel's BTF (`/sys/kernel/btf/vmlinux`), read just far
//! enough to find where a field sits in a kernel struct.
//!
//! Why: the Python frame walker must know which thread is allocating in the
//! terms `CPython` uses, `pthread_self()`, which on x86-64 is the thread's FS
//! base. The kernel keeps it in `task_struct.thread.fsbase`, whose offset
//! changes with the kernel's version and configuration. aya 0.14's eBPF side
//! has no CO-RE field relocations, so userspace looks the offset up here and
//! passes it in with the settings fixed at load.
//!
//! The format (Documentation/bpf/btf.rst): a header, a type section of
//! variable-length records (type ids count from 1 in order), and a string
//! section. Every read is bounds-checked: a malformed blob is an error.
use anyhow::{Context as _, Result, anyhow, bail};

const MAGIC: u16 = 0xeb9f;

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// One type record: where it starts in the type section, and its header.
#[derive(Clone, Copy, Debug)]
struct TypeRecord {
    /// Byte offset of the record in the type section.
    at: usize,
    name_off: u32,
    info: u32,
    /// `size` or `type`, depending on the kind.
    size_or_type: u32,
}

impl TypeRecord {
    fn kind(self) -> u32 {
        (self.info >> 24) & 0x1f
    }

    fn vlen(self) -> usize {
        (self.info & 0xffff) as usize
    }

    fn kind_flag(self) -> bool {
        self.info >> 31 != 0
    }
}

/// A parsed BTF blob: its type records, and the sections they point into.
pub(crate) struct Btf<'a> {
    types: &'a [u8],
    strings: &'a [u8],
    /// Index i is type id i + 1.
    records: Vec<TypeRecord>,
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        bytes.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        bytes.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

/// The section `[offset, offset + len)` of `bytes`, past the header.
fn section(bytes: &[u8], header_len: usize, offset: u32, len: u32) -> Option<&[u8]> {
    let start = header_len.checked_add(offset as usize)?;
    bytes.get(start..start.checked_add(len as usize)?)
}

impl<'a> Btf<'a> {
    /// Parses a little-endian BTF blob.
    pub(crate) fn parse(bytes: &'a [u8]) -> Result<Btf<'a>> {
        let truncated = || anyhow!("BTF header is truncated");
        if u16_at(bytes, 0).ok_or_else(truncated)? != MAGIC {
            bail!("not BTF (bad magic)");
        }
        let header_len = u32_at(bytes, 4).ok_or_else(truncated)? as usize;
        let field = |at| u32_at(bytes, at).ok_or_else(truncated);
        let (type_off, type_len) = (field(8)?, field(12)?);
        let (str_off, str_len) = (field(16)?, field(20)?);
        let types = section(bytes, header_len, type_off, type_len)
            .ok_or_else(|| anyhow!("BTF type section lies outside the blob"))?;
        let strings = section(bytes, header_len, str_off, str_len)
            .ok_or_else(|| anyhow!("BTF string section lies outside the blob"))?;
        let mut records = Vec::new();
        let mut at = 0;
        while at < types.len() {
            let bad = || anyhow!("BTF type record at {at} is truncated");
            let record = TypeRecord {
                at,
                name_off: u32_at(types, at).ok_or_else(bad)?,
                info: u32_at(types, at + 4).ok_or_else(bad)?,
                size_or_type: u32_at(types, at + 8).ok_or_else(bad)?,
            };
            let extra = match record.kind() {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * record.vlen(),
                KIND_ENUM | KIND_FUNC_PROTO => 8 * record.vlen(),
                kind if kind <= KIND_TYPE_TAG + 1 => 0,
                kind => bail!("BTF type record at {at} has unknown kind {kind}"),
            };
            records.push(record);
            at += 12 + extra;
        }
        if at != types.len() {
            bail!("BTF type section ends inside a record");
        }
        Ok(Btf {
            types,
            strings,
            records,
        })
    }

    fn name(&self, offset: u32) -> &'a [u8] {
        let rest = self.strings.get(offset as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        &rest[..end]
    }

    fn record(&self, id: u32) -> Option<TypeRecord> {
        self.records.get((id as usize).checked_sub(1)?).copied()
    }

    /// The struct or union a type id names, through typedefs and
    /// qualifiers (a bounded number of them: a cycle is an error).
    fn resolve(&self, mut id: u32) -> Result<TypeRecord> {
        for _ in 0..32 {
            let record = self
                .record(id)
                .ok_or_else(|| anyhow!("BTF type id {id} does not exist"))?;
            match record.kind() {
                KIND_STRUCT | KIND_UNION => return Ok(record),
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = record.size_or_type;
                }
                kind => bail!("BTF type id {id} is of kind {kind}, not a struct"),
            }
        }
        bail!("BTF type id {id}: typedef chain too long")
    }

    /// The struct named `name` (the first one, as the kernel's own lookup).
    fn named_struct(&self, name: &str) -> Result<TypeRecord> {
        self.records
            .iter()
            .find(|r| r.kind() == KIND_STRUCT && self.name(r.name_off) == name.as_bytes())
            .copied()
            .ok_or_else(|| anyhow!("the kernel's BTF has no struct {name}"))
    }

    /// Byte offset of `member` in `record`, and the member's type id.
    /// Members of anonymous structs and unions are searched too.
    fn member(&self, record: TypeRecord, member: &str, depth: u32) -> Result<Option<(u64, u32)>> {
        if depth > 8 {
            bail!("BTF: anonymous members nested too deep");
        }
        for index in 0..record.vlen() {
            let at = record.at + 12 + 12 * index;
            let bad = || anyhow!("BTF member record at {at} is truncated");
            let name_off = u32_at(self.types, at).ok_or_else(bad)?;
            let type_id = u32_at(self.types, at + 4).ok_or_else(bad)?;
            let offset = u32_at(self.types, at + 8).ok_or_else(bad)?;
            let bits = if record.kind_flag() {
                offset & 0x00ff_ffff
            } else {
                offset
            };
            let name = self.name(name_off);
            if name == member.as_bytes() {
                if bits % 8 != 0 {
                    bail!("BTF: member {member} is a bit field");
                }
                return Ok(Some((u64::from(bits / 8), type_id)));
            }
            if name.is_empty()
                && let Ok(inner) = self.resolve(type_id)
                && let Some((inner_offset, inner_type)) = self.member(inner, member, depth + 1)?
            {
                return Ok(Some((u64::from(bits / 8) + inner_offset, inner_type)));
            }
        }
        Ok(None)
    }

    /// Byte offset of `path` (member names, outermost first) inside the
    /// struct `name`: `["thread", "fsbase"]` in `task_struct`.
    pub(crate) fn offset_of(&self, name: &str, path: &[&str]) -> Result<u64> {
        let mut record = self.named_struct(name)?;
        let mut total = 0u64;
        let mut where_ = name.to_string();
        for (index, member) in path.iter().enumerate() {
            let (offset, type_id) = self
                .member(record, member, 0)?
                .ok_or_else(|| anyhow!("the kernel's BTF has no member {member} in {where_}"))?;
            total += offset;
            where_ = format!("{where_}.{member}");
            if index + 1 < path.len() {
                record = self.resolve(type_id)?;
            }
        }
        Ok(total)
    }
}

/// Offset of the FS base register in `task_struct` (`thread.fsbase`), from
/// the running kernel's BTF: where the kernel keeps each thread's
/// `pthread_self()` on x86-64.
pub(crate) fn task_fsbase_offset() -> Result<u32> {
    task_struct_offset(&["thread", "fsbase"])
}

/// Offsets of `pid` and `tgid` in `task_struct`, from the running kernel's
/// BTF: the fork tracepoint reads them from the new task to tell a new
/// process (`pid == tgid`) from a new thread.
pub(crate) fn task_id_offsets() -> Result<(u32, u32)> {
    Ok((
        task_struct_offset(&["pid"])?,
        task_struct_offset(&["tgid"])?,
    ))
}

/// Offsets of `group_leader` and `start_time` in `task_struct`, from the
/// running kernel's BTF: the kernel tells a stale sampled block (of an
/// earlier process with the same pid) by the process's start time.
pub(crate) fn task_start_offsets() -> Result<(u32, u32)> {
    Ok((
        task_struct_offset(&["group_leader"])?,
        task_struct_offset(&["start_time"])?,
    ))
}

/// Offset of the member at `path` in the running kernel's `task_struct`.
fn task_struct_offset(path: &[&str]) -> Result<u32> {
    let file = "/sys/kernel/btf/vmlinux";
    let bytes = std::fs::read(file).with_context(|| format!("reading {file}"))?;
    let offset = Btf::parse(&bytes)
        .with_context(|| format!("parsing {file}"))?
        .offset_of("task_struct", path)?;
    u32::try_from(offset).with_context(|| format!("task_struct.{} is past 4 GiB", path.join(".")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob with `struct inner { int a; long b; }` and
    /// `struct outer { int x; struct inner in; union { long y; long z; }; }`.
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0long\0inner\0a\0b\0outer\0x\0in\0y\0z\0";
        let name = |s: &str| {
            let needle: Vec<u8> = [&[0u8][..], s.as_bytes(), &[0]].concat();
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_slice())
                .unwrap() as u32
                + 1
        };
        let mut types = Vec::new();
        let mut push = |words: &[u32]| {
            for w in words {
                types.extend_from_slice(&w.to_le_bytes());
            }
        };
        // 1: int (4 bytes), 2: long (8 bytes)
        push(&[name("int"), KIND_INT << 24, 4, 32]);
        push(&[name("long"), KIND_INT << 24, 8, 64]);
        // 3: struct inner { int a @0; long b @64 bits }
        push(&[name("inner"), (KIND_STRUCT << 24) | 2, 16]);
        push(&[name("a"), 1, 0, name("b"), 2, 64]);
        // 4: anonymous union { long y; long z; }
        push(&[0, (KIND_UNION << 24) | 2, 8]);
        push(&[name("y"), 2, 0, name("z"), 2, 0]);
        // 5: const struct inner
        push(&[0, KIND_CONST << 24, 3]);
        // 6: struct outer { int x @0; const inner in @64; union @192 }
        push(&[name("outer"), (KIND_STRUCT << 24) | 3, 32]);
        push(&[name("x"), 1, 0, name("in"), 5, 64, 0, 4, 192]);
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&MAGIC.to_le_bytes());
        bytes.extend_from_slice(&[1, 0]);
        for w in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            bytes.extend_from_slice(&w.to_le_bytes());
        }
        bytes.extend_from_slice(&types);
        bytes.extend_from_slice(strings);
        bytes
    }

    #[test]
    fn offsets_through_members_qualifiers_and_anonymous_unions() {
        let bytes = blob();
        let btf = Btf::parse(&bytes).unwrap();
        assert_eq!(btf.offset_of("outer", &["x"]).unwrap(), 0);
        assert_eq!(btf.offset_of("outer", &["in", "b"]).unwrap(), 8 + 8);
        assert_eq!(btf.offset_of("outer", &["z"]).unwrap(), 24);
        assert_eq!(btf.offset_of("inner", &["b"]).unwrap(), 8);
        let missing = btf.offset_of("outer", &["in", "c"]).unwrap_err();
        assert_eq!(
            missing.to_string(),
            "the kernel's BTF has no member c in outer.in"
        );
        assert!(btf.offset_of("nothing", &["x"]).is_err());
        // `x` is an int, not a struct: nothing inside it.
        assert!(btf.offset_of("outer", &["x", "y"]).is_err());
    }

    #[test]
    fn malformed_blobs_are_errors_never_panics() {
        let bytes = blob();
        for len in 0..bytes.len() {
            // Truncated anywhere: an error, or (cut inside the strings)
            // lookups that fail cleanly.
            if let Ok(btf) = Btf::parse(&bytes[..len]) {
                let _: Result<u64> = btf.offset_of("outer", &["in", "b"]);
            }
        }
        let mut bad_magic = bytes.clone();
        bad_magic[0] = 0;
        assert!(Btf::parse(&bad_magic).is_err());
        // A section length pointing past the end.
        let mut past = bytes.clone();
        past[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Btf::parse(&past).is_err());
        // A typedef loop is cut, not followed forever.
        let mut looped = bytes;
        // Make type 5 (const) point at itself.
        let at = 24 + 16 + 16 + 12 + 24 + 12 + 24 + 8;
        looped[at..at + 4].copy_from_slice(&5u32.to_le_bytes());
        let btf = Btf::parse(&looped).unwrap();
        assert!(btf.offset_of("outer", &["in", "b"]).is_err());
    }

    /// The running kernel's `task_struct.thread.fsbase`, against pahole's
    /// reading of the same BTF (the oracle: dwarves' own BTF loader).
    #[test]
    fn task_fsbase_offset_matches_pahole() {
        let offset = task_fsbase_offset().unwrap();
        let Some(expected) = pahole_offset("task_struct", "thread") else {
            crate::test_support::prerequisite_missing(
                "task_fsbase_offset_matches_pahole",
                "pahole (apt-get install dwarves; cargo xtask test installs it)",
            );
            return;
        };
        let fsbase = pahole_offset("thread_struct", "fsbase").expect("thread_struct.fsbase");
        assert_eq!(u64::from(offset), expected + fsbase);
    }

    /// The running kernel's `task_struct.group_leader` and `start_time`,
    /// against pahole.
    #[test]
    fn task_start_offsets_match_pahole() {
        let (leader, start) = task_start_offsets().unwrap();
        let Some(expected) = pahole_offset("task_struct", "group_leader") else {
            crate::test_support::prerequisite_missing(
                "task_start_offsets_match_pahole",
                "pahole (apt-get install dwarves; cargo xtask test installs it)",
            );
            return;
        };
        assert_eq!(u64::from(leader), expected);
        assert_eq!(
            Some(u64::from(start)),
            pahole_offset("task_struct", "start_time")
        );
    }

    /// The running kernel's `task_struct.pid` and `tgid`, against pahole.
    #[test]
    fn task_id_offsets_match_pahole() {
        let (pid, tgid) = task_id_offsets().unwrap();
        let Some(expected) = pahole_offset("task_struct", "pid") else {
            crate::test_support::prerequisite_missing(
                "task_id_offsets_match_pahole",
                "pahole (apt-get install dwarves; cargo xtask test installs it)",
            );
            return;
        };
        assert_eq!(u64::from(pid), expected);
        assert_eq!(Some(u64::from(tgid)), pahole_offset("task_struct", "tgid"));
    }

    /// The byte offset pahole prints for `member` of `structure`.
    fn pahole_offset(structure: &str, member: &str) -> Option<u64> {
        let output = std::process::Command::new("pahole")
            .args(["-C", structure, "/sys/kernel/btf/vmlinux"])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&output.stdout);
        // "\tstruct thread_struct      thread;            /*  5120   240 */"
        text.lines().find_map(|line| {
            let (declaration, comment) = line.split_once("/*")?;
            let name = declaration
                .trim()
                .trim_end_matches(';')
                .rsplit([' ', '*'])
                .next()?;
            (name == member)
                .then(|| {
                    comment
                        .split_whitespace()
                        .next()?
                        .split(':')
                        .next()?
                        .parse()
                        .ok()
                })
                .flatten()
        })
    }
}
