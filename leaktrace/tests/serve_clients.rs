//! `leaktrace serve` against clients that misbehave, with raw `TcpStream`s
//! (serve traces the slow-leak fixture): junk request lines (random bytes,
//! a line without a path, a TLS hello, NUL bytes) are answered 400 at once
//! and closed, a non-GET method 405, a megabyte-long header 431; a hundred
//! idle connections and a client sending one byte every 100 ms are
//! answered 408 and closed after the head timeout (5 s); connections over
//! the cap (128) are answered 503; and through all of it `/metrics` answers
//! promptly on a new connection. A burst of requests within the report's
//! age (0.9 s) makes one report (`leaktrace_reports_built_total`).
mod common;

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::TcpStream,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::{Guarded, TempDir, compile, require_root, serial, start_serve};

/// serve's documented limits (`leaktrace/src/app/connections.rs`).
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_CONNECTIONS: usize = 128;

/// What "promptly" means for a scrape of a small report here (a debug
/// build, two cores shared with other tests).
const PROMPT: Duration = Duration::from_secs(2);

/// Slack on the head timeout's start (the server's clock starts at accept).
const SLACK: Duration = Duration::from_millis(200);

/// Starts the slow-leak fixture and `serve --pid` on it, once attached.
fn start(dir: &TempDir) -> (Guarded, common::Server) {
    let program = compile(
        dir,
        "slow_leak.c",
        "slow_leak",
        &["-O1", "-g", "-fno-omit-frame-pointer", "-fno-inline"],
    );
    let fixture = Guarded::spawn("slow_leak", Command::new(&program).stdin(Stdio::null()));
    let server = start_serve(&["--pid", &fixture.pid().to_string(), "--sample-bytes", "0"]);
    server
        .stderr
        .wait_for(Duration::from_mins(1), |l| {
            l.starts_with("leaktrace: tracing pid ")
        })
        .unwrap_or_else(|e| panic!("never attached: {e}"));
    (fixture, server)
}

fn connect(address: &str) -> TcpStream {
    let stream = TcpStream::connect(address).expect("connecting to leaktrace serve");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
}

/// Reads until the server closes: the response (status, whole text), and
/// whether it closed (rather than the read timing out).
fn read_response(stream: &mut TcpStream) -> (Option<u16>, String, bool) {
    let mut response = Vec::new();
    let mut buffer = [0u8; 4096];
    let closed = loop {
        match stream.read(&mut buffer) {
            Ok(0) => break true,
            Ok(n) => response.extend_from_slice(&buffer[..n]),
            // A reset after the response: closed all the same.
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok());
    (status, text, closed)
}

/// Sends `request` on a new connection and reads the answer.
fn exchange(address: &str, request: &[u8]) -> (Option<u16>, String, bool) {
    let mut stream = connect(address);
    // The server may answer and close before all is sent: not an error.
    let _: Result<_, _> = stream.write_all(request);
    read_response(&mut stream)
}

/// GET /metrics on a new connection: its text, and how long it took.
fn metrics(address: &str) -> (String, Duration) {
    let started = Instant::now();
    let (status, text, closed) = exchange(
        address,
        format!("GET /metrics HTTP/1.1\r\nHost: {address}\r\n\r\n").as_bytes(),
    );
    assert_eq!(status, Some(200), "{text}");
    assert!(closed);
    (text, started.elapsed())
}

/// /metrics answers within [`PROMPT`] and counts the fixture's leak.
fn assert_metrics_prompt(address: &str, when: &str) -> String {
    let (text, took) = metrics(address);
    assert!(took < PROMPT, "/metrics took {took:?} {when}");
    assert!(
        text.contains("leaktrace_outstanding_bytes{pid="),
        "{when}:\n{text}"
    );
    text
}

/// The value of a sample line `series value` in a /metrics text.
fn sample(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

fn refused(text: &str, reason: &str) -> u64 {
    sample(
        text,
        &format!("leaktrace_http_refused_total{{reason=\"{reason}\"}}"),
    )
}

/// Bytes from a fixed xorshift sequence (the same junk at every run).
fn random_bytes(count: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..count)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[3]
        })
        .collect()
}

#[test]
fn misbehaving_clients_do_not_hold_up_metrics() {
    if !require_root("misbehaving_clients_do_not_hold_up_metrics") {
        return;
    }
    let _serial = serial();
    let dir = TempDir::new("serve-clients");
    let (_fixture, server) = start(&dir);
    let address = server.address.clone();
    // The first report symbolizes the fixture: not timed.
    metrics(&address);

    // A hundred connections that send nothing, held open.
    let idle_since = Instant::now();
    let idle: Vec<TcpStream> = (0..100).map(|_| connect(&address)).collect();
    assert_metrics_prompt(&address, "with 100 idle connections");

    // Junk: answered 400 and closed at once (long before the timeout).
    let junk: [(&str, Vec<u8>); 6] = [
        ("random bytes", random_bytes(300)),
        ("a request line without a path", b"GET\r\n\r\n".to_vec()),
        (
            "a target without a slash",
            b"GET metrics HTTP/1.1\r\n\r\n".to_vec(),
        ),
        ("not HTTP", b"hello there\r\n\r\n".to_vec()),
        (
            "a TLS client hello",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(),
        ),
        ("NUL bytes", vec![0; 64]),
    ];
    for (what, request) in &junk {
        let started = Instant::now();
        let (status, text, closed) = exchange(&address, request);
        assert_eq!(status, Some(400), "{what}: {text:?}");
        assert!(closed, "{what}: the connection stays open");
        assert!(
            started.elapsed() < PROMPT,
            "{what}: answered after {:?}",
            started.elapsed()
        );
    }
    let (status, text, closed) = exchange(&address, b"POST /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(status, Some(405), "{text}");
    assert!(closed);
    assert_metrics_prompt(&address, "after junk");

    // A megabyte-long header: 431, closed.
    let mut big = b"GET /metrics HTTP/1.1\r\nX-Big: ".to_vec();
    big.resize(big.len() + (1 << 20), b'a');
    big.extend_from_slice(b"\r\n\r\n");
    let (status, text, closed) = exchange(&address, &big);
    assert_eq!(status, Some(431), "{}", &text[..text.len().min(200)]);
    assert!(closed);

    // One byte every 100 ms: a short request completes within the head
    // timeout and is answered; a head that never ends is cut at it. Meanwhile
    // /metrics answers.
    let slow = |request: Vec<u8>| {
        let address = address.clone();
        thread::spawn(move || {
            let started = Instant::now();
            let mut stream = connect(&address);
            let mut writer = stream.try_clone().unwrap();
            // Written on while the answer is awaited: until all is sent or
            // the server closed.
            thread::spawn(move || {
                for byte in request {
                    if writer.write_all(&[byte]).is_err() {
                        break;
                    }
                    thread::sleep(Duration::from_millis(100));
                }
            });
            let (status, _, closed) = read_response(&mut stream);
            (status, closed, started.elapsed())
        })
    };
    let short = slow(b"GET /metrics HTTP/1.1\r\n\r\n".to_vec());
    let mut endless = b"GET /metrics HTTP/1.1\r\nX-Slow: ".to_vec();
    endless.resize(endless.len() + 100, b'a');
    let endless = slow(endless);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        assert_metrics_prompt(&address, "with slow clients");
        thread::sleep(Duration::from_millis(200));
    }
    let (status, closed, _) = short.join().unwrap();
    assert_eq!((status, closed), (Some(200), true), "the slow request");
    let (status, closed, took) = endless.join().unwrap();
    assert_eq!((status, closed), (Some(408), true), "the endless head");
    assert!(
        took >= HEAD_TIMEOUT.saturating_sub(SLACK) && took < HEAD_TIMEOUT + PROMPT,
        "the endless head was cut after {took:?}"
    );

    // The idle connections: 408 and closed at the head timeout.
    for mut stream in idle {
        let (status, text, closed) = read_response(&mut stream);
        assert_eq!((status, closed), (Some(408), true), "{text}");
    }
    let waited = idle_since.elapsed();
    assert!(
        waited >= HEAD_TIMEOUT.saturating_sub(SLACK),
        "idle connections closed after {waited:?}"
    );

    let text = assert_metrics_prompt(&address, "at the end");
    assert_eq!(refused(&text, "bad_request"), junk.len() as u64, "{text}");
    assert_eq!(refused(&text, "head_too_large"), 1, "{text}");
    assert_eq!(refused(&text, "head_timeout"), 101, "{text}");
    assert_eq!(refused(&text, "too_many_connections"), 0, "{text}");
}

#[test]
fn connections_over_the_cap_are_refused() {
    if !require_root("connections_over_the_cap_are_refused") {
        return;
    }
    let _serial = serial();
    let dir = TempDir::new("serve-cap");
    let (_fixture, server) = start(&dir);
    let address = server.address.clone();
    metrics(&address);
    let held: Vec<TcpStream> = (0..MAX_CONNECTIONS).map(|_| connect(&address)).collect();
    // The next ones are answered 503 at once, and closed.
    for _ in 0..3 {
        let started = Instant::now();
        let mut stream = connect(&address);
        let (status, text, closed) = read_response(&mut stream);
        assert_eq!((status, closed), (Some(503), true), "{text}");
        assert!(started.elapsed() < PROMPT);
    }
    // Once the held ones time out, there is room again.
    for mut stream in held {
        let (status, _, closed) = read_response(&mut stream);
        assert_eq!((status, closed), (Some(408), true));
    }
    // Their slots are given back as the server sees them close.
    thread::sleep(Duration::from_millis(300));
    let text = assert_metrics_prompt(&address, "after the held connections closed");
    assert_eq!(refused(&text, "too_many_connections"), 3, "{text}");
    assert_eq!(refused(&text, "head_timeout"), MAX_CONNECTIONS as u64);
}

/// Requests in a burst share one report: without the cache every /metrics
/// and pprof request made its own (symbolizing every site again).
#[test]
fn a_burst_of_requests_makes_one_report() {
    if !require_root("a_burst_of_requests_makes_one_report") {
        return;
    }
    let _serial = serial();
    let dir = TempDir::new("serve-burst");
    let (_fixture, server) = start(&dir);
    let address = server.address.clone();
    let (before, _) = metrics(&address);
    let before = sample(&before, "leaktrace_reports_built_total");
    assert!(before >= 1);
    let started = Instant::now();
    let paths = [
        "/metrics",
        "/debug/pprof/heap",
        "/",
        "/fragment",
        "/flamegraph.svg",
        "/api/series",
    ];
    let mut requests = 0;
    for _ in 0..4 {
        for path in paths {
            let (status, text, _) = exchange(
                &address,
                format!("GET {path} HTTP/1.1\r\nHost: {address}\r\n\r\n").as_bytes(),
            );
            assert_eq!(
                status,
                Some(200),
                "{path}: {}",
                &text[..text.len().min(300)]
            );
            requests += 1;
        }
    }
    let (after, _) = metrics(&address);
    let took = started.elapsed();
    let made = sample(&after, "leaktrace_reports_built_total") - before;
    // One report serves 0.9 s: the burst may straddle that many windows.
    let windows = took.as_millis() / 900 + 1;
    eprintln!("{requests} requests in {took:?}: {made} reports");
    assert!(
        u128::from(made) <= windows,
        "{requests} requests in {took:?} made {made} reports"
    );
    assert!(requests >= 24 && u128::from(made) < 24);
}
