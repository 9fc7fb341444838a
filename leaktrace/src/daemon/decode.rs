//! Decoding: ring-buffer bytes back into the records the kernel wrote.
//!
//! The kernel reserves every record 8-byte aligned and writes plain
//! `#[repr(C)]` structs from `leaktrace-common`; a record that is too short
//! for what its header promises, or names an unknown function, is an error
//! (counted as a loss), never a panic.
use leaktrace_common::{
    AllocEvent, AllocFn, EXEC_EVENT, EXIT_EVENT, EventHeader, FORK_EVENT, ForkEvent,
    MAX_PYTHON_FRAMES, MAX_STACK_DEPTH, ReleaseEvent,
};

/// A record as it came from the kernel.
#[derive(Clone, Copy, Debug)]
pub enum Record<'a> {
    /// The event, its stack (return addresses, innermost first) and its
    /// Python frames (word pairs: code object, position; innermost first).
    Alloc(&'a AllocEvent, &'a [u64], &'a [u64]),
    Release(&'a ReleaseEvent),
    /// The process called exec: its old address space is gone.
    Exec(&'a EventHeader),
    /// The process exited.
    Exit(&'a EventHeader),
    /// The process forked a child process (followed: see the eBPF side).
    Fork(&'a ForkEvent),
}

/// Why a record could not be decoded (counted as a loss).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    TooShort,
    UnknownFunction(u32),
    Misaligned,
}

/// Reinterprets ring-buffer bytes. The kernel reserves records 8-byte aligned.
// The pointer casts are to 8-aligned types: the alignment is checked first.
#[allow(clippy::cast_ptr_alignment)]
pub fn decode(bytes: &[u8]) -> Result<Record<'_>, DecodeError> {
    if bytes.len() < size_of::<EventHeader>() {
        return Err(DecodeError::TooShort);
    }
    if bytes.as_ptr().align_offset(8) != 0 {
        return Err(DecodeError::Misaligned);
    }
    // SAFETY: length checked, alignment checked, EventHeader is plain data.
    let header = unsafe { &*bytes.as_ptr().cast::<EventHeader>() };
    if header.func == EXEC_EVENT {
        return Ok(Record::Exec(header));
    }
    if header.func == EXIT_EVENT {
        return Ok(Record::Exit(header));
    }
    if header.func == FORK_EVENT {
        if bytes.len() < size_of::<ForkEvent>() {
            return Err(DecodeError::TooShort);
        }
        // SAFETY: as above, for the longer type.
        return Ok(Record::Fork(unsafe {
            &*bytes.as_ptr().cast::<ForkEvent>()
        }));
    }
    let func = AllocFn::from_u32(header.func).ok_or(DecodeError::UnknownFunction(header.func))?;
    if func.is_release() {
        if bytes.len() < size_of::<ReleaseEvent>() {
            return Err(DecodeError::TooShort);
        }
        // SAFETY: as above, for the longer type.
        Ok(Record::Release(unsafe {
            &*bytes.as_ptr().cast::<ReleaseEvent>()
        }))
    } else {
        let fixed = size_of::<AllocEvent>();
        if bytes.len() < fixed {
            return Err(DecodeError::TooShort);
        }
        // SAFETY: as above, for the fixed part of the record.
        let event = unsafe { &*bytes.as_ptr().cast::<AllocEvent>() };
        let frames = (event.header.stack_len as usize).min(MAX_STACK_DEPTH);
        let python_words = 2 * (event.python_frames as usize).min(MAX_PYTHON_FRAMES);
        let stack_bytes = &bytes[fixed..];
        if stack_bytes.len() < (frames + python_words) * size_of::<u64>() {
            return Err(DecodeError::TooShort);
        }
        // SAFETY: `fixed` is a multiple of 8 from an 8-aligned start, and
        // the length was checked.
        let words = unsafe {
            std::slice::from_raw_parts(stack_bytes.as_ptr().cast::<u64>(), frames + python_words)
        };
        let (stack, python) = words.split_at(frames);
        Ok(Record::Alloc(event, stack, python))
    }
}

const _: () = assert!(
    size_of::<AllocEvent>().is_multiple_of(8)
        && size_of::<ReleaseEvent>().is_multiple_of(8)
        && size_of::<ForkEvent>().is_multiple_of(8)
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::records::{as_bytes, encode_alloc};

    #[test]
    fn decode_rejects_short_and_unknown_records() {
        #[repr(C, align(8))]
        struct Aligned([u8; 64]);
        let mut buf = Aligned([0; 64]);
        assert_eq!(decode(&buf.0[..8]).unwrap_err(), DecodeError::TooShort);
        buf.0[0] = 99;
        assert_eq!(
            decode(&buf.0).unwrap_err(),
            DecodeError::UnknownFunction(99)
        );
        buf.0[0] = AllocFn::Free as u8;
        buf.0[24] = 0x42;
        match decode(&buf.0).unwrap() {
            Record::Release(r) => assert_eq!(r.args[0], 0x42),
            other => panic!("{other:?}"),
        }
        buf.0[0] = AllocFn::Malloc as u8;
        assert_eq!(decode(&buf.0[..56]).unwrap_err(), DecodeError::TooShort);
        // A record as long as its stack, no longer.
        let event = AllocEvent {
            header: EventHeader {
                func: AllocFn::Malloc as u32,
                ..EventHeader::default()
            },
            ..AllocEvent::default()
        };
        let words = encode_alloc(&event, &[0xa, 0xb], &[]);
        match decode(as_bytes(&words)).unwrap() {
            Record::Alloc(e, stack, python) => {
                assert!(python.is_empty());
                assert_eq!(e.header.stack_len, 2);
                assert_eq!(stack, [0xa, 0xb]);
            }
            other => panic!("{other:?}"),
        }
        // stack_len promising more frames than sent is rejected.
        assert_eq!(
            decode(&as_bytes(&words)[..as_bytes(&words).len() - 8]).unwrap_err(),
            DecodeError::TooShort
        );
    }

    #[test]
    fn a_fork_record_carries_its_child() {
        #[repr(C, align(8))]
        struct Aligned([u8; 32]);
        let mut buf = Aligned([0; 32]);
        buf.0[..4].copy_from_slice(&FORK_EVENT.to_ne_bytes());
        buf.0[4..8].copy_from_slice(&1200u32.to_ne_bytes());
        buf.0[24..28].copy_from_slice(&1234u32.to_ne_bytes());
        buf.0[28..32].copy_from_slice(&leaktrace_common::FORK_TRACED.to_ne_bytes());
        match decode(&buf.0).unwrap() {
            Record::Fork(fork) => {
                assert_eq!(fork.header.pid, 1200);
                assert_eq!(fork.child_pid, 1234);
                assert_eq!(fork.flags, leaktrace_common::FORK_TRACED);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(decode(&buf.0[..24]).unwrap_err(), DecodeError::TooShort);
    }

    #[test]
    fn python_frames_follow_the_native_stack() {
        let event = AllocEvent {
            header: EventHeader {
                func: AllocFn::Malloc as u32,
                ..EventHeader::default()
            },
            ..AllocEvent::default()
        };
        let words = encode_alloc(&event, &[0xa, 0xb], &[0xc0de, 7, 0xc0df, 9]);
        match decode(as_bytes(&words)).unwrap() {
            Record::Alloc(e, stack, python) => {
                assert_eq!(e.python_frames, 2);
                assert_eq!(stack, [0xa, 0xb]);
                assert_eq!(python, [0xc0de, 7, 0xc0df, 9]);
            }
            other => panic!("{other:?}"),
        }
        // A record cut inside its Python frames is rejected.
        let bytes = as_bytes(&words);
        assert_eq!(
            decode(&bytes[..bytes.len() - 8]).unwrap_err(),
            DecodeError::TooShort
        );
    }
}
