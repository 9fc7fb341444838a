//! Report files: a regular file is replaced whole, anything else is
//! written in place; and what the daemon itself cost, for its last message.
use std::{fs, path::Path};

use anyhow::{Context as _, Result};

/// Writes a report to `path`. A regular file (or a new one) is replaced
/// through a temporary file and a rename, so a reader never sees a
/// half-written report. Anything else (/dev/null, /dev/stdout, a FIFO, a
/// terminal) is written in place: renaming a file over it would replace the
/// device itself, for every process on the machine. (It did: `--output
/// /dev/null` once turned this machine's /dev/null into a plain file.)
pub(super) fn write_atomically(path: &Path, contents: impl AsRef<[u8]>) -> Result<()> {
    let special = fs::metadata(path).is_ok_and(|m| !m.file_type().is_file());
    if special {
        return fs::write(path, contents).with_context(|| format!("writing {}", path.display()));
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    fs::write(&tmp, contents).with_context(|| format!("writing {}", Path::new(&tmp).display()))?;
    fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// What leaktrace itself cost: CPU time and peak resident memory.
pub(super) struct OwnUsage {
    pub cpu_ms: u64,
    pub max_rss_mib: u64,
}

pub(super) fn own_usage() -> OwnUsage {
    // SAFETY: rusage is plain data, for which all zeroes is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct it is given, which outlives the call.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &raw mut usage) };
    let ms = |t: libc::timeval| t.tv_sec as u64 * 1000 + t.tv_usec as u64 / 1000;
    OwnUsage {
        cpu_ms: ms(usage.ru_utime) + ms(usage.ru_stime),
        max_rss_mib: usage.ru_maxrss as u64 / 1024,
    }
}

#[cfg(test)]
mod tests {
    use std::{io::Read as _, os::unix::fs::FileTypeExt as _};

    use super::*;

    #[test]
    fn reports_replace_regular_files_and_never_special_ones() {
        let dir = std::env::temp_dir().join(format!("leaktrace-write-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        // A regular file is replaced whole.
        let file = dir.join("report.txt");
        fs::write(&file, "old and longer").unwrap();
        write_atomically(&file, "new").unwrap();
        assert_eq!(fs::read_to_string(&file).unwrap(), "new");
        // A FIFO stays a FIFO, and its reader gets the report.
        let fifo = dir.join("fifo");
        let path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: plain syscall with a valid path.
        assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
        let reader_path = fifo.clone();
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            fs::File::open(reader_path)
                .unwrap()
                .read_to_string(&mut text)
                .unwrap();
            text
        });
        write_atomically(&fifo, "through the pipe").unwrap();
        assert_eq!(reader.join().unwrap(), "through the pipe");
        assert!(fs::metadata(&fifo).unwrap().file_type().is_fifo());
        // /dev/null stays a character device.
        write_atomically(Path::new("/dev/null"), "discarded").unwrap();
        assert!(
            fs::metadata("/dev/null")
                .unwrap()
                .file_type()
                .is_char_device()
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
