//! `leaktrace serve` from the outside: starting it on a free port, and
//! plain HTTP GETs against it.
use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    process::{Command, Stdio},
    time::Duration,
};

use super::{Guarded, Lines, leaktrace_bin};

/// A running `leaktrace serve`, killed when dropped.
pub(crate) struct Server {
    pub process: Guarded,
    pub stdout: Lines,
    pub stderr: Lines,
    /// host:port it serves on.
    pub address: String,
}

/// Starts `leaktrace serve ARGS --listen 127.0.0.1:0` and waits until it
/// says where it serves.
pub(crate) fn start_serve(args: &[&str]) -> Server {
    start_serve_with(args, |_| {})
}

/// [`start_serve`], the command first given to `configure` (its
/// environment).
pub(crate) fn start_serve_with(args: &[&str], configure: impl FnOnce(&mut Command)) -> Server {
    let mut command = Command::new(leaktrace_bin());
    command
        .arg("serve")
        .args(args)
        .args(["--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    configure(&mut command);
    let mut process = Guarded::spawn("leaktrace serve", &mut command);
    let stdout = process.stdout_lines();
    let stderr = process.stderr_lines();
    let serving = stderr
        .wait_for(Duration::from_mins(1), |l| l.contains("serving on http://"))
        .unwrap_or_else(|e| panic!("no 'serving on' line: {e}"));
    let address = serving
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap()
        .to_string();
    Server {
        process,
        stdout,
        stderr,
        address,
    }
}

/// The sample of the per-process metric `name` for `pid` in a `/metrics`
/// text: its labels (`{pid="42",comm="prog",cgroup=...}`) and value.
pub(crate) fn process_sample<'a>(metrics: &'a str, name: &str, pid: u32) -> Option<(&'a str, u64)> {
    let line = metrics
        .lines()
        .find(|l| l.starts_with(&format!("{name}{{pid=\"{pid}\",")))?;
    // The value is the last word; label values (a cgroup path) may hold spaces.
    let (series, value) = line.rsplit_once(' ')?;
    Some((&series[name.len()..], value.parse().ok()?))
}

/// GET `path` from `address`: (status code, body).
pub(crate) fn get(address: &str, path: &str) -> (u16, Vec<u8>) {
    let mut stream = TcpStream::connect(address).expect("connecting to leaktrace serve");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\n\r\n").unwrap();
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .expect("reading the response");
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, response[split + 4..].to_vec())
}
