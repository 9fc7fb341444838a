//! "No probe left", checked in the memory of long-lived processes: see
//! the engine's module comment for why this check and not another.
use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use super::{
    Program, Tally, lock,
    text_diff::{Difference, text_differences},
};

/// Bytes of `pid`'s executable file mappings that differ from the files,
/// up to 64.
pub(super) fn changed_text(pid: u32) -> Result<Vec<Difference>, String> {
    text_differences(pid, |_| true, 64)
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
