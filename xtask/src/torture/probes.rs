//! "No probe left", checked in the memory of long-lived processes: see
//! the engine's module comment for why this check and not another.
use std::{
    fs::File,
    io::{BufRead as _, BufReader},
    os::unix::fs::FileExt as _,
    process::{Child, Command, Stdio},
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use super::{Program, Tally, lock};

/// Bytes of `pid`'s executable file mappings that differ from the files:
/// (object, file offset, byte in memory) of each, up to 64.
pub(super) fn changed_text(pid: u32) -> Result<Vec<(String, u64, u8)>, String> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map_err(|e| format!("reading /proc/{pid}/maps: {e}"))?;
    let memory = File::open(format!("/proc/{pid}/mem"))
        .map_err(|e| format!("opening /proc/{pid}/mem: {e}"))?;
    let mut changed = Vec::new();
    for line in maps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [range, permissions, offset, _, _, path, ..] = fields[..] else {
            continue;
        };
        if !permissions.starts_with("r-x") || !path.starts_with('/') {
            continue;
        }
        let hex = |t: &str| u64::from_str_radix(t, 16).map_err(|_| format!("maps line {line:?}"));
        let (start, end) = range.split_once('-').ok_or("maps range")?;
        let (start, end, offset) = (hex(start)?, hex(end)?, hex(offset)?);
        let length = usize::try_from(end.saturating_sub(start).min(1 << 30)).unwrap_or(0);
        let mut in_memory = vec![0u8; length];
        memory
            .read_exact_at(&mut in_memory, start)
            .map_err(|e| format!("reading pid {pid}'s {path} text: {e}"))?;
        // map_files names drop the zero padding maps has (non-PIE
        // executables sit at 0x400000: "00400000-..." in maps).
        let file = File::open(format!("/proc/{pid}/map_files/{start:x}-{end:x}"))
            .map_err(|e| format!("opening pid {pid}'s mapped {path}: {e}"))?;
        let mut in_file = vec![0u8; length];
        let mut read = 0;
        while read < length {
            match file.read_at(&mut in_file[read..], offset + read as u64) {
                Ok(0) => break,
                Ok(n) => read += n,
                Err(e) => return Err(format!("reading {path}: {e}")),
            }
        }
        for (i, (&m, &f)) in in_memory[..read].iter().zip(&in_file[..read]).enumerate() {
            if m != f && changed.len() < 64 {
                changed.push((path.to_string(), offset + i as u64, m));
            }
        }
    }
    Ok(changed)
}

/// Uprobes made through tracefs that name leaktrace.
pub(super) fn tracefs_probes() -> usize {
    [
        "/sys/kernel/tracing/uprobe_events",
        "/sys/kernel/debug/tracing/uprobe_events",
    ]
    .iter()
    .filter_map(|path| std::fs::read_to_string(path).ok())
    .map(|text| text.lines().filter(|l| l.contains("leaktrace")).count())
    .max()
    .unwrap_or(0)
}

/// A long-lived `FIXTURE wait`, started before any leaktrace.
pub(super) struct Sentinel {
    pub(super) program: Program,
    pub(super) child: Child,
}

impl Sentinel {
    pub(super) fn start(program: &Program) -> Result<Sentinel, String> {
        let mut child = Command::new(&program.argv[0])
            .args(&program.argv[1..])
            .arg("wait")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting {:?}: {e}", program.argv))?;
        let mut stdout = BufReader::new(child.stdout.take().ok_or("stdout not piped")?);
        let mut ready = String::new();
        stdout.read_line(&mut ready).map_err(|e| e.to_string())?;
        if ready != "ready\n" {
            return Err(format!("{} sentinel said {ready:?}", program.kind));
        }
        child.stdout = Some(stdout.into_inner());
        Ok(Sentinel {
            program: program.clone(),
            child,
        })
    }
}

/// After a kill of `trace --all`: no changed byte left in any sentinel,
/// waiting up to 5 s for the kernel to take the probes out.
pub(super) fn check_probes(sentinels: &[Sentinel], tally: &Mutex<Tally>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut left: Vec<String> = Vec::new();
    loop {
        left.clear();
        for sentinel in sentinels {
            match changed_text(sentinel.child.id()) {
                Ok(changed) if changed.is_empty() => {}
                Ok(changed) => left.push(format!(
                    "{} sentinel: {} changed bytes, first {:?}",
                    sentinel.program.kind,
                    changed.len(),
                    changed[0]
                )),
                Err(e) => left.push(format!("{} sentinel: {e}", sentinel.program.kind)),
            }
        }
        if tracefs_probes() > 0 {
            left.push(format!(
                "{} leaktrace uprobes in uprobe_events",
                tracefs_probes()
            ));
        }
        if left.is_empty() || Instant::now() >= deadline {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    let mut tally = lock(tally);
    tally.probe_checks += 1;
    tally.probes_left.extend(left);
}
