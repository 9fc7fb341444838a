//! Python versions and the three encodings an interpreter carries of its
//! own: `PY_VERSION_HEX` (in `Py_Version` and `_Py_DebugOffsets`), and the
//! `PY_VERSION` string that `Py_GetVersion` formats into `sys.version`.
//! Pure functions on bytes and numbers; what they are given comes from the
//! target's files and is checked here.
use std::fmt;

use iced_x86::{Decoder, DecoderOptions, OpKind, Register};

/// A `CPython` release, as `sys.version_info[:3]` says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct PythonVersion {
    pub major: u8,
    pub minor: u8,
    pub micro: u8,
}

impl fmt::Display for PythonVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

impl PythonVersion {
    /// Releases this reader knows to exist: 2.x and 3.x (a major of 0, 1
    /// or 4+ in a target's bytes means we are reading something else).
    fn plausible(self) -> bool {
        matches!(self.major, 2 | 3)
    }

    /// From `PY_VERSION_HEX`: `0xMMmmuuLS` (major, minor, micro, release
    /// level, serial). Only the low 32 bits are the version; anything above
    /// them means the value is not one.
    pub(crate) fn from_hex(hex: u64) -> Option<PythonVersion> {
        if hex > u64::from(u32::MAX) {
            return None;
        }
        let [major, minor, micro, level_serial] = (hex as u32).to_be_bytes();
        // Release level: 0xA alpha, 0xB beta, 0xC candidate, 0xF final.
        if !(0xA..=0xF).contains(&(level_serial >> 4)) {
            return None;
        }
        let version = PythonVersion {
            major,
            minor,
            micro,
        };
        version.plausible().then_some(version)
    }

    /// From `PY_VERSION`: "3.6.15", "3.13.0rc2", "3.12.1+" (a build from a
    /// branch). The whole string must be that shape: nothing before the
    /// major, nothing after the release suffix.
    pub(crate) fn from_version_string(text: &[u8]) -> Option<PythonVersion> {
        let text = std::str::from_utf8(text).ok()?;
        let mut parts = text.splitn(3, '.');
        let major = parse_number(parts.next()?)?;
        let minor = parse_number(parts.next()?)?;
        let rest = parts.next()?;
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let micro = parse_number(rest.get(..digits)?)?;
        let suffix = rest.get(digits..)?;
        let suffix = suffix.strip_suffix('+').unwrap_or(suffix);
        let level_ok = suffix.is_empty()
            || ["a", "b", "rc"].iter().any(|level| {
                suffix.strip_prefix(level).is_some_and(|serial| {
                    !serial.is_empty() && serial.bytes().all(|b| b.is_ascii_digit())
                })
            });
        let version = PythonVersion {
            major,
            minor,
            micro,
        };
        (level_ok && version.plausible()).then_some(version)
    }
}

/// A decimal number of 1 to 3 digits that fits a byte.
fn parse_number(text: &str) -> Option<u8> {
    if text.is_empty() || text.len() > 3 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// The cookie `_Py_DebugOffsets` starts with (3.13+), for debuggers and
/// profilers to check they are reading a runtime state.
pub(crate) const DEBUG_OFFSETS_COOKIE: &[u8; 8] = b"xdebugpy";

/// What the start of `_PyRuntime` says, read from the file's `.data`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DebugOffsets {
    /// No cookie: a runtime before 3.13 (nothing to cross-check).
    Absent,
    /// The cookie and the version after it.
    Version(PythonVersion),
    /// The cookie, followed by something that is no `PY_VERSION_HEX`.
    Malformed(u64),
}

/// Reads `_Py_DebugOffsets { char cookie[8]; uint64_t version; ... }` from
/// the first bytes of `_PyRuntime` (`head`, at least 16 bytes for a
/// verdict) given the file's byte order.
pub(crate) fn debug_offsets(head: &[u8], little_endian: bool) -> DebugOffsets {
    let (Some(cookie), Some(version)) = (head.get(..8), head.get(8..16)) else {
        return DebugOffsets::Absent;
    };
    if cookie != DEBUG_OFFSETS_COOKIE {
        return DebugOffsets::Absent;
    }
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(version);
    let hex = if little_endian {
        u64::from_le_bytes(bytes)
    } else {
        u64::from_be_bytes(bytes)
    };
    PythonVersion::from_hex(hex).map_or(DebugOffsets::Malformed(hex), DebugOffsets::Version)
}

/// The format `Py_GetVersion` hands `PY_VERSION` to, in every `CPython` from
/// 2.0 to 3.13: `"%.80s (%.80s) %.80s"` (version, build info, compiler).
pub(crate) const GET_VERSION_FORMAT: &[u8] = b"%.80s (%.80s) %.80s";

/// The addresses `Py_GetVersion`'s code takes: rip-relative operands
/// (`lea 0x..(%rip)` in position-independent builds) and 32-bit immediates
/// (`mov $0x6d26fe,%edx` in Debian's non-PIE `python3`). The string
/// constants among them are the format and `PY_VERSION` itself.
///
/// Why this way: `PY_VERSION` is a string literal with no symbol of its
/// own, and scanning `.rodata` for anything shaped like "3.11.2" also finds
/// the versions of expat, zlib or OpenSSL compiled in. The one function
/// that formats the interpreter's version names exactly its string, next
/// to the format above, in every build (shared, static, LTO, PGO).
pub(crate) fn addresses_taken(code: &[u8], address: u64, bitness: u32) -> Vec<u64> {
    let mut found = Vec::new();
    let mut decoder = Decoder::with_ip(bitness, code, address, DecoderOptions::NONE);
    while decoder.can_decode() {
        let instruction = decoder.decode();
        if instruction.is_invalid() {
            break;
        }
        for operand in 0..instruction.op_count() {
            match instruction.op_kind(operand) {
                OpKind::Memory if instruction.is_ip_rel_memory_operand() => {
                    found.push(instruction.ip_rel_memory_address());
                }
                OpKind::Memory if instruction.memory_base() == Register::None => {
                    found.push(instruction.memory_displacement64());
                }
                OpKind::Immediate32 | OpKind::Immediate32to64 => {
                    found.push(instruction.immediate(operand));
                }
                OpKind::Immediate64 => found.push(instruction.immediate64()),
                _ => {}
            }
        }
    }
    found.sort_unstable();
    found.dedup();
    found
}

/// `PY_VERSION` among the strings `Py_GetVersion` takes: the format must
/// be one of them (otherwise this is not the function we think), and
/// exactly one distinct version string the other.
pub(crate) fn version_among(strings: &[&[u8]]) -> Result<PythonVersion, &'static str> {
    if !strings.iter().any(|s| s.starts_with(GET_VERSION_FORMAT)) {
        return Err("Py_GetVersion does not take its usual format");
    }
    let mut versions: Vec<PythonVersion> = strings
        .iter()
        .filter_map(|s| PythonVersion::from_version_string(s))
        .collect();
    versions.sort_unstable();
    versions.dedup();
    match versions[..] {
        [version] => Ok(version),
        [] => Err("Py_GetVersion takes no version string"),
        _ => Err("Py_GetVersion takes several version strings"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(major: u8, minor: u8, micro: u8) -> PythonVersion {
        PythonVersion {
            major,
            minor,
            micro,
        }
    }

    #[test]
    fn hex_versions_decode_and_nonsense_does_not() {
        assert_eq!(PythonVersion::from_hex(0x030b07f0), Some(v(3, 11, 7)));
        assert_eq!(PythonVersion::from_hex(0x030d00c2), Some(v(3, 13, 0)));
        assert_eq!(PythonVersion::from_hex(0x020712f0), Some(v(2, 7, 18)));
        // Bad release level, impossible major, bits above 32.
        assert_eq!(PythonVersion::from_hex(0x030b0700), None);
        assert_eq!(PythonVersion::from_hex(0x090b07f0), None);
        assert_eq!(PythonVersion::from_hex(0x1_030b07f0), None);
        assert_eq!(PythonVersion::from_hex(0), None);
    }

    #[test]
    fn version_strings_parse_whole_or_not_at_all() {
        let parse = |s: &str| PythonVersion::from_version_string(s.as_bytes());
        assert_eq!(parse("2.7.18"), Some(v(2, 7, 18)));
        assert_eq!(parse("3.6.15"), Some(v(3, 6, 15)));
        assert_eq!(parse("3.13.0rc2"), Some(v(3, 13, 0)));
        assert_eq!(parse("3.12.1+"), Some(v(3, 12, 1)));
        for bad in [
            "", "3", "3.11", "1.2.13", "3.11.7 ", "v3.11.7", "3.11.7x", "3.11.7rc", "3.1111.0",
            "3.11.7.1", "3.-1.0", "3.256.0",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        assert_eq!(PythonVersion::from_version_string(b"3.11.\xff"), None);
    }

    #[test]
    fn debug_offsets_need_cookie_and_a_version() {
        let mut head = b"xdebugpy".to_vec();
        head.extend_from_slice(&0x030d00f0u64.to_le_bytes());
        assert_eq!(
            debug_offsets(&head, true),
            DebugOffsets::Version(v(3, 13, 0))
        );
        assert_eq!(
            debug_offsets(&head, false),
            DebugOffsets::Malformed(0xf0000d0300000000)
        );
        assert_eq!(debug_offsets(&head[..12], true), DebugOffsets::Absent);
        assert_eq!(debug_offsets(&[0; 16], true), DebugOffsets::Absent);
        assert_eq!(debug_offsets(&[], true), DebugOffsets::Absent);
    }

    #[test]
    fn addresses_taken_reads_rip_relative_and_absolute_operands() {
        // lea 0x10(%rip),%rcx ; mov $0x6d26fe,%edx ; ret
        let code = [
            0x48, 0x8d, 0x0d, 0x10, 0x00, 0x00, 0x00, 0xba, 0xfe, 0x26, 0x6d, 0x00, 0xc3,
        ];
        assert_eq!(addresses_taken(&code, 0x1000, 64), [0x1017, 0x6d26fe]);
        // Garbage and truncated code decode to nothing or stop cleanly.
        assert!(addresses_taken(&[0x48, 0x8d], 0, 64).is_empty());
        let _: Vec<u64> = addresses_taken(&[0xff; 64], u64::MAX - 8, 64);
    }

    #[test]
    fn version_among_wants_the_format_and_one_version() {
        let format: &[u8] = GET_VERSION_FORMAT;
        assert_eq!(version_among(&[format, b"3.6.15"]), Ok(v(3, 6, 15)));
        assert_eq!(
            version_among(&[format, b"3.6.15", b"3.6.15"]),
            Ok(v(3, 6, 15))
        );
        assert!(version_among(&[b"3.6.15"]).is_err());
        assert!(version_among(&[format]).is_err());
        assert!(version_among(&[format, b"3.6.15", b"3.7.1"]).is_err());
    }
}
