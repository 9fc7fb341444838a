//! A `leaky hold` process: it leaks the table's blocks (tests/common/table.rs)
//! on a first line on stdin, says "done", and keeps them until its stdin
//! closes; its stdin and stdout stay with the test.
use std::{
    io::Write as _,
    path::Path,
    process::{ChildStdin, Command, Stdio},
    time::Duration,
};

use super::{Guarded, Lines};

pub(crate) struct Holder {
    pub process: Guarded,
    stdin: Option<ChildStdin>,
    stdout: Lines,
}

impl Holder {
    /// Starts it and waits until it is ready for the first line.
    pub(crate) fn start(leaky: &Path) -> Holder {
        Holder::start_with(leaky, |_| {})
    }

    /// [`Holder::start`], with `configure` given the command first (to
    /// start it somewhere else, e.g. in a cgroup).
    pub(crate) fn start_with(leaky: &Path, configure: impl FnOnce(&mut Command)) -> Holder {
        let mut command = Command::new(leaky);
        command
            .arg("hold")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        configure(&mut command);
        let mut process = Guarded::spawn("leaky hold", &mut command);
        let stdin = Some(process.take_stdin());
        let stdout = process.stdout_lines();
        stdout
            .wait_for(Duration::from_secs(10), |l| l == "ready")
            .unwrap_or_else(|e| panic!("leaky hold never said ready: {e}"));
        Holder {
            process,
            stdin,
            stdout,
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Leaks the table's blocks and waits until it says done.
    pub(crate) fn leak(&mut self) {
        let stdin = self.stdin.as_mut().expect("stdin");
        stdin.write_all(b"go\n").unwrap();
        stdin.flush().unwrap();
        self.stdout
            .wait_for(Duration::from_secs(30), |l| l == "done")
            .unwrap_or_else(|e| panic!("leaky hold never said done: {e}"));
    }

    /// Lets it exit (its leaks with it) and waits for that.
    pub(crate) fn finish(&mut self) {
        drop(self.stdin.take());
        let status = self
            .process
            .wait_timeout(Duration::from_secs(30))
            .expect("leaky hold exits once its stdin closes");
        assert!(status.success(), "leaky hold: {status:?}");
    }
}
