//! The HTTP side of `leaktrace serve`: a deliberately small GET-only
//! HTTP/1.1 responder (one request per connection), enough for curl,
//! Prometheus, `go tool pprof http://...` and a browser. Routing is pure;
//! connections are accepted by a task of their own and each is read and
//! written by a task of its own, and only the page it asks for goes through
//! the event loop, where the tracer builds the report the page shows (the
//! page's static files, built into the binary, and every refusal are
//! answered here).
//!
//! Whoever can connect is not trusted to behave (`--allow-remote` opens the
//! port to a network): at most [`MAX_CONNECTIONS`] connections are served
//! at once (more are answered 503 and closed), a request head must arrive
//! whole within [`HEAD_TIMEOUT`] (else 408) and fit in [`MAX_HEAD`] bytes
//! (else 431), a request line that is not `METHOD /target HTTP/1.x` in
//! printable ASCII is answered 400 as soon as it is seen, and at most
//! [`PAGE_QUEUE`] requests wait for the event loop (more are answered 503).
//! Every refusal is counted and exposed in `/metrics`.
//!
//! The page (`/`, `?pid=N` to pick a process) loads its script and styles
//! from `/assets/`, and asks for `/api/series?pid=N` (JSON),
//! `/fragment?pid=N` (its tables) and `/flamegraph.svg?pid=N` at every
//! refresh. HTML goes out with a policy that allows only the server's own
//! scripts, styles and objects: a name from a traced process that slipped
//! through as markup still could not run.
use std::{
    fmt::Write as _,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Result, bail};

use crate::report::assets::{self, Asset};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, mpsc, oneshot},
};

/// Connections served at once: a hundred idle or slow clients still leave
/// room for a scrape. One costs a task and at most [`MAX_HEAD`] bytes of
/// head; beyond this, a connection is answered 503 and closed at once.
pub(super) const MAX_CONNECTIONS: usize = 128;

/// How long a client has, from its connection, to send its whole request
/// head; then it is answered 408 and closed (an idle or slow-loris client
/// holds its slot this long at most).
pub(super) const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest request head read (request line and headers); a longer one
/// is answered 431. Our GETs carry nothing in their headers we need.
pub(super) const MAX_HEAD: usize = 8192;

/// Requests waiting for the event loop at most (it answers one at a time,
/// between drains); more are answered 503 and counted.
pub(super) const PAGE_QUEUE: usize = 32;

/// How long writing a response may take: a client that does not read its
/// response gives its slot back then.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// After a refusal, how long (and how much) the rest of what the client
/// sends is read and dropped, so that the refusal reaches it before the
/// connection closes (closing with unread input resets the connection, and
/// the client may lose the answer).
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 1 << 20;

/// A request for the event loop and where to send its answer.
pub(super) type PageRequest = (Page, oneshot::Sender<Response>);

/// What the HTTP side refused or could not do, since start (exposed in
/// `/metrics`).
#[derive(Debug, Default)]
pub(super) struct Counters {
    /// Connections over [`MAX_CONNECTIONS`], answered 503.
    pub connections_refused: AtomicU64,
    /// Requests over [`PAGE_QUEUE`] waiting for the event loop, answered 503.
    pub requests_dropped_busy: AtomicU64,
    /// Request lines that were not HTTP, answered 400.
    pub bad_requests: AtomicU64,
    /// Request heads over [`MAX_HEAD`], answered 431.
    pub heads_too_large: AtomicU64,
    /// Request heads not complete within [`HEAD_TIMEOUT`], answered 408.
    pub head_timeouts: AtomicU64,
    /// Errors accepting a connection (out of file descriptors, say).
    pub accept_errors: AtomicU64,
}

impl Counters {
    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Prometheus text of the counters.
    pub(super) fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP leaktrace_http_refused_total Connections and requests the HTTP server refused, by reason (connections over {MAX_CONNECTIONS}: 503; requests over {PAGE_QUEUE} waiting: 503; not HTTP: 400; head over {MAX_HEAD} bytes: 431; head not sent within {}s: 408; accept errors).",
            HEAD_TIMEOUT.as_secs()
        );
        let _ = writeln!(out, "# TYPE leaktrace_http_refused_total counter");
        for (reason, counter) in [
            ("too_many_connections", &self.connections_refused),
            ("busy", &self.requests_dropped_busy),
            ("bad_request", &self.bad_requests),
            ("head_too_large", &self.heads_too_large),
            ("head_timeout", &self.head_timeouts),
            ("accept_error", &self.accept_errors),
        ] {
            let _ = writeln!(
                out,
                "leaktrace_http_refused_total{{reason=\"{reason}\"}} {}",
                counter.load(Ordering::Relaxed)
            );
        }
        out
    }
}

/// What a request asks for; `pid` is the process picked (`?pid=N`), None
/// for all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Page {
    /// `/`: the HTML page.
    Index { pid: Option<u32> },
    /// `/api/series`: bytes over time, JSON.
    Series { pid: Option<u32> },
    /// `/fragment`: the page's tables, HTML.
    Fragment { pid: Option<u32> },
    /// `/flamegraph.svg`: the flamegraph of the outstanding bytes.
    Flamegraph { pid: Option<u32> },
    /// `/debug/pprof/heap`: the outstanding profile, gzipped pprof.
    Heap,
    /// `/metrics`: Prometheus text.
    Metrics,
    /// `/assets/...`: a file built into the binary.
    Asset(&'static Asset),
    /// Anything else.
    NotFound,
    /// A request of another method than GET.
    BadMethod,
    /// Not an HTTP request line.
    BadRequest,
}

/// Routes a request line (`GET /path?query HTTP/1.1`): three words
/// separated by single spaces, a method of letters, a target starting
/// with `/` and an HTTP/1 version, in printable ASCII; anything else is a
/// [`Page::BadRequest`].
pub(super) fn route(request_line: &str) -> Page {
    let mut words = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return Page::BadRequest;
    };
    if method.is_empty()
        || !method.bytes().all(|b| b.is_ascii_uppercase())
        || !target.starts_with('/')
        || !target.bytes().all(|b| b.is_ascii_graphic())
        || !version.starts_with("HTTP/1.")
    {
        return Page::BadRequest;
    }
    if method != "GET" {
        return Page::BadMethod;
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let pid = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("pid="))
        .and_then(|pid| pid.parse().ok());
    match path {
        "/" | "/index.html" => Page::Index { pid },
        "/api/series" => Page::Series { pid },
        "/fragment" => Page::Fragment { pid },
        "/flamegraph.svg" => Page::Flamegraph { pid },
        "/debug/pprof/heap" => Page::Heap,
        "/metrics" => Page::Metrics,
        _ => assets::find(path).map_or(Page::NotFound, Page::Asset),
    }
}

/// Refuses to listen beyond this machine unless the user asked for it.
pub(super) fn check_listen_address(address: SocketAddr, allow_remote: bool) -> Result<()> {
    if !address.ip().is_loopback() && !allow_remote {
        bail!(
            "{address} is reachable from other machines: serve listens on loopback unless --allow-remote is given"
        );
    }
    Ok(())
}

/// Where a request head stands after the bytes read so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Head {
    /// More is needed.
    Incomplete,
    /// The head is whole (its blank line is there) and its request line
    /// well formed.
    Complete,
    /// The request line is not HTTP (seen as soon as one byte of it is
    /// not printable ASCII, or it ends).
    Junk,
    /// Over [`MAX_HEAD`] bytes and not complete.
    TooLarge,
}

/// Scans a request head as read so far (pure: the connection reads until
/// this says other than [`Head::Incomplete`]).
pub(super) fn scan_head(head: &[u8]) -> Head {
    let line_end = head.iter().position(|&b| b == b'\n');
    let line = &head[..line_end.unwrap_or(head.len())];
    // A CR ends the line (before its LF, or as the last byte read yet).
    let line = match line.iter().position(|&b| b == b'\r') {
        Some(cr) if cr + 1 == line.len() => &line[..cr],
        _ => line,
    };
    if !line.iter().all(|&b| b == b' ' || b.is_ascii_graphic()) {
        return Head::Junk;
    }
    if line_end.is_some() && route(&String::from_utf8_lossy(line)) == Page::BadRequest {
        return Head::Junk;
    }
    let complete =
        head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n");
    if line_end.is_some() && complete {
        Head::Complete
    } else if head.len() >= MAX_HEAD {
        Head::TooLarge
    } else {
        Head::Incomplete
    }
}

/// What reading a request head came to.
enum Read {
    /// Its request line.
    Request(String),
    /// A refusal: the status to answer, and its counter.
    Refuse(&'static str, fn(&Counters) -> &AtomicU64),
    /// The client closed, or the connection failed: nothing to answer.
    Closed,
}

/// Reads a request head until [`scan_head`] decides (no deadline: the
/// caller's).
async fn read_head(stream: &mut TcpStream) -> Read {
    let mut head = Vec::with_capacity(1024);
    let mut buffer = [0u8; 1024];
    loop {
        match scan_head(&head) {
            Head::Complete => {
                let text = String::from_utf8_lossy(&head);
                return Read::Request(text.lines().next().unwrap_or("").to_string());
            }
            Head::Junk => return Read::Refuse("400 Bad Request", |c| &c.bad_requests),
            Head::TooLarge => {
                return Read::Refuse("431 Request Header Fields Too Large", |c| {
                    &c.heads_too_large
                });
            }
            Head::Incomplete => {}
        }
        // Never past MAX_HEAD: scan_head stops there.
        let room = (MAX_HEAD - head.len()).min(buffer.len());
        match stream.read(&mut buffer[..room]).await {
            Ok(0) | Err(_) => return Read::Closed,
            Ok(n) => head.extend_from_slice(&buffer[..n]),
        }
    }
}

/// Accepts connections on `listener` for ever: each one served by a task
/// of its own while fewer than [`MAX_CONNECTIONS`] are, refused with a 503
/// otherwise. Pages go to the event loop through `pages`.
pub(super) async fn serve(
    listener: TcpListener,
    pages: mpsc::Sender<PageRequest>,
    counters: Arc<Counters>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors, say: they come back as connections
            // close; do not spin meanwhile.
            Counters::count(&counters.accept_errors);
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            Counters::count(&counters.connections_refused);
            // A fresh socket's send buffer takes this whole; what does not
            // fit is not waited for.
            let _: Result<_, _> = stream.try_write(BUSY);
            continue;
        };
        let pages = pages.clone();
        let counters = counters.clone();
        tokio::spawn(async move {
            handle(stream, pages, &counters).await;
            drop(slot);
        });
    }
}

/// The answer to a connection over [`MAX_CONNECTIONS`].
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nRetry-After: 1\r\nConnection: close\r\n\r\nbusy\n";

/// Status, content type and body of a response.
pub(super) type Response = (&'static str, &'static str, Vec<u8>);

/// What the page may load: its own server's scripts, styles, data and
/// objects, nothing inline, nothing from elsewhere.
const PAGE_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; object-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// What is answered without the event loop: the built-in files and every
/// refusal.
pub(super) fn local_response(page: Page) -> Option<Response> {
    let text = |status, body: &[u8]| Some((status, "text/plain", body.to_vec()));
    match page {
        Page::Asset(asset) => Some(("200 OK", asset.content_type, asset.body.to_vec())),
        Page::NotFound => text("404 Not Found", b"not found\n"),
        Page::BadMethod => text("405 Method Not Allowed", b"GET only\n"),
        Page::BadRequest => text("400 Bad Request", b"not an HTTP request\n"),
        Page::Index { .. }
        | Page::Series { .. }
        | Page::Fragment { .. }
        | Page::Flamegraph { .. }
        | Page::Heap
        | Page::Metrics => None,
    }
}

/// Serves one connection without holding up tracing: reads and routes its
/// request here (a client may be slow to send it, within
/// [`HEAD_TIMEOUT`]), answers a built-in file or a refusal at once, hands
/// any other page to the trace loop through `pages` (503 when
/// [`PAGE_QUEUE`] requests already wait), and writes the response the loop
/// sends back.
async fn handle(mut stream: TcpStream, pages: mpsc::Sender<PageRequest>, counters: &Counters) {
    let read = tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream))
        .await
        .unwrap_or(Read::Refuse("408 Request Timeout", |c| &c.head_timeouts));
    let page = match read {
        Read::Request(line) => route(&line),
        Read::Refuse(status, counter) => {
            Counters::count(counter(counters));
            refuse(stream, status).await;
            return;
        }
        Read::Closed => return,
    };
    if let Page::Asset(asset) = page {
        write(&mut stream, "200 OK", asset.content_type, asset.body).await;
        return;
    }
    if let Some((status, content_type, body)) = local_response(page) {
        write(&mut stream, status, content_type, &body).await;
        return;
    }
    let (reply, response) = oneshot::channel();
    match pages.try_send((page, reply)) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(_)) => {
            Counters::count(&counters.requests_dropped_busy);
            refuse(stream, "503 Service Unavailable").await;
            return;
        }
        Err(mpsc::error::TrySendError::Closed(_)) => return,
    }
    if let Ok((status, content_type, body)) = response.await {
        write(&mut stream, status, content_type, &body).await;
    }
}

/// [`respond`] within [`WRITE_TIMEOUT`]; a client gone or not reading
/// gets nothing more.
async fn write(stream: &mut TcpStream, status: &str, content_type: &str, body: &[u8]) {
    let _: Result<_, _> =
        tokio::time::timeout(WRITE_TIMEOUT, respond(stream, status, content_type, body)).await;
}

/// Answers a refusal (its status as the body) and closes, reading and
/// dropping what the client still sends for a while ([`LINGER`]) so that
/// it gets the answer.
async fn refuse(mut stream: TcpStream, status: &str) {
    write(
        &mut stream,
        status,
        "text/plain",
        format!("{status}\n").as_bytes(),
    )
    .await;
    let drain = async {
        let mut buffer = [0u8; 4096];
        let mut dropped = 0;
        while dropped < LINGER_BYTES {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => dropped += n,
            }
        }
    };
    let _: Result<_, _> = tokio::time::timeout(LINGER, drain).await;
}

/// Writes one complete response and closes the connection. Nothing is
/// cached (every page is of now), nothing is sniffed (a JSON string is
/// never taken for HTML), and HTML carries [`PAGE_POLICY`].
pub(super) async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
) -> Result<()> {
    let policy = if content_type.starts_with("text/html") {
        format!("Content-Security-Policy: {PAGE_POLICY}\r\n")
    } else {
        String::new()
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n{policy}Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.shutdown().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("GET / HTTP/1.1"), Page::Index { pid: None });
        assert_eq!(
            route("GET /?pid=42 HTTP/1.1"),
            Page::Index { pid: Some(42) }
        );
        assert_eq!(
            route("GET /api/series?t=1&pid=7 HTTP/1.1"),
            Page::Series { pid: Some(7) }
        );
        assert_eq!(
            route("GET /api/series?pid= HTTP/1.1"),
            Page::Series { pid: None }
        );
        assert_eq!(
            route("GET /fragment?pid=x%3C HTTP/1.1"),
            Page::Fragment { pid: None }
        );
        assert_eq!(
            route("GET /flamegraph.svg?pid=3&t=99 HTTP/1.1"),
            Page::Flamegraph { pid: Some(3) }
        );
        assert_eq!(
            route("GET /assets/uPlot.iife.min.js HTTP/1.1"),
            Page::Asset(&assets::UPLOT_JS)
        );
        assert_eq!(route("GET /assets/nope.js HTTP/1.1"), Page::NotFound);
        assert_eq!(
            route("GET /debug/pprof/heap?seconds=30 HTTP/1.1"),
            Page::Heap
        );
        assert_eq!(route("GET /metrics HTTP/1.0"), Page::Metrics);
        assert_eq!(route("GET /nope HTTP/1.1"), Page::NotFound);
        assert_eq!(route("POST /metrics HTTP/1.1"), Page::BadMethod);
        assert_eq!(route("HEAD / HTTP/1.1"), Page::BadMethod);
        for junk in [
            "",
            "GET",
            "GET HTTP/1.1",
            "GET /metrics",
            "GET metrics HTTP/1.1",
            "GET  /metrics HTTP/1.1",
            "GET /metrics HTTP/1.1 more",
            "GET /metrics SPDY/3",
            "get /metrics HTTP/1.1",
            "G\u{e9}T /metrics HTTP/1.1",
            "GET /m\u{e9}trics HTTP/1.1",
            "\u{fffd}\u{fffd} / HTTP/1.1",
        ] {
            assert_eq!(route(junk), Page::BadRequest, "{junk:?}");
        }
    }

    #[test]
    fn heads() {
        assert_eq!(scan_head(b""), Head::Incomplete);
        assert_eq!(scan_head(b"GET /metr"), Head::Incomplete);
        assert_eq!(scan_head(b"GET /metrics HTTP/1.1\r"), Head::Incomplete);
        assert_eq!(scan_head(b"GET /metrics HTTP/1.1\r\n"), Head::Incomplete);
        assert_eq!(
            scan_head(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"),
            Head::Incomplete
        );
        assert_eq!(
            scan_head(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Head::Complete
        );
        assert_eq!(scan_head(b"GET / HTTP/1.0\n\n"), Head::Complete);
        // Junk is seen at its first byte that cannot be in a request line,
        // or at the end of a line that is not one.
        assert_eq!(scan_head(b"\x16\x03\x01\x02\x00"), Head::Junk);
        assert_eq!(scan_head(b"GET /\x00"), Head::Junk);
        assert_eq!(scan_head(b"GET\t/"), Head::Junk);
        assert_eq!(scan_head(b"GET\r\n"), Head::Junk);
        assert_eq!(scan_head(b"hello\n"), Head::Junk);
        assert_eq!(scan_head(b"GET /\rx HTTP/1.1"), Head::Junk);
        // Headers may hold any bytes; their total may not exceed MAX_HEAD.
        let mut long = b"GET / HTTP/1.1\r\nX: ".to_vec();
        long.resize(MAX_HEAD - 1, b'a');
        assert_eq!(scan_head(&long), Head::Incomplete);
        long.push(b'a');
        assert_eq!(scan_head(&long), Head::TooLarge);
        let mut line = b"GET /".to_vec();
        line.resize(MAX_HEAD, b'a');
        assert_eq!(scan_head(&line), Head::TooLarge);
    }

    #[test]
    fn refusals_and_files_are_answered_here() {
        assert_eq!(local_response(Page::Metrics), None);
        assert_eq!(local_response(Page::Index { pid: None }), None);
        assert_eq!(
            local_response(Page::BadRequest).unwrap().0,
            "400 Bad Request"
        );
        assert_eq!(
            local_response(Page::BadMethod).unwrap().0,
            "405 Method Not Allowed"
        );
        assert_eq!(local_response(Page::NotFound).unwrap().0, "404 Not Found");
        let (status, kind, body) = local_response(Page::Asset(&assets::UPLOT_JS)).unwrap();
        assert_eq!((status, kind), ("200 OK", assets::UPLOT_JS.content_type));
        assert_eq!(body, assets::UPLOT_JS.body);
    }

    #[test]
    fn counters_are_prometheus_text() {
        let counters = Counters::default();
        Counters::count(&counters.bad_requests);
        Counters::count(&counters.bad_requests);
        let text = counters.render();
        assert!(
            text.contains("leaktrace_http_refused_total{reason=\"bad_request\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("leaktrace_http_refused_total{reason=\"busy\"} 0\n"),
            "{text}"
        );
        assert_eq!(text.matches("# TYPE").count(), 1);
    }

    /// The page queue is bounded: with the event loop not answering,
    /// [`PAGE_QUEUE`] requests wait and the next is answered 503 and
    /// counted; the waiting ones are answered once the loop gets to them.
    #[test]
    fn requests_beyond_the_queue_are_answered_busy() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap();
            let (pages, mut waiting) = mpsc::channel(PAGE_QUEUE);
            let counters = Arc::new(Counters::default());
            tokio::spawn(serve(listener, pages.clone(), counters.clone()));
            let request = async || {
                let mut stream = TcpStream::connect(address).await.unwrap();
                stream
                    .write_all(b"GET /metrics HTTP/1.1\r\n\r\n")
                    .await
                    .unwrap();
                stream
            };
            let mut clients = Vec::new();
            for _ in 0..PAGE_QUEUE {
                clients.push(request().await);
            }
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while pages.capacity() > 0 {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the queue never filled"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let mut extra = request().await;
            let mut answer = Vec::new();
            extra.read_to_end(&mut answer).await.unwrap();
            assert!(
                answer.starts_with(b"HTTP/1.1 503 Service Unavailable\r\n"),
                "{}",
                String::from_utf8_lossy(&answer)
            );
            assert_eq!(counters.requests_dropped_busy.load(Ordering::Relaxed), 1);
            for _ in 0..PAGE_QUEUE {
                let (page, reply) = waiting.recv().await.unwrap();
                assert_eq!(page, Page::Metrics);
                reply
                    .send(("200 OK", "text/plain", b"ok\n".to_vec()))
                    .unwrap();
            }
            for mut client in clients {
                let mut answer = Vec::new();
                client.read_to_end(&mut answer).await.unwrap();
                assert!(answer.starts_with(b"HTTP/1.1 200 OK\r\n"));
                assert!(answer.ends_with(b"\r\n\r\nok\n"));
            }
        });
    }

    #[test]
    fn loopback_only_unless_asked() {
        assert!(check_listen_address("127.0.0.1:6060".parse().unwrap(), false).is_ok());
        assert!(check_listen_address("[::1]:6060".parse().unwrap(), false).is_ok());
        assert!(check_listen_address("0.0.0.0:6060".parse().unwrap(), false).is_err());
        assert!(check_listen_address("0.0.0.0:6060".parse().unwrap(), true).is_ok());
    }
}
