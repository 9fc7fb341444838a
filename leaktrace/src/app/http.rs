//! The HTTP side of `leaktrace serve`: a deliberately small GET-only
//! HTTP/1.1 responder (one request per connection), enough for curl,
//! Prometheus, `go tool pprof http://...` and a browser. This file is the
//! pure part: routing a request line, deciding when a request head is
//! whole (or junk, or too large), what is answered without the event loop,
//! and writing a response. Connections are served in [`super::connections`].
//!
//! The page (`/`, `?pid=N` to pick a process) loads its script and styles
//! from `/assets/`, and asks for `/api/series?pid=N` (JSON),
//! `/fragment?pid=N` (its tables) and `/flamegraph.svg?pid=N` at every
//! refresh. HTML goes out with a policy that allows only the server's own
//! scripts, styles and objects: a name from a traced process that slipped
//! through as markup still could not run.
use std::net::SocketAddr;

use anyhow::{Result, bail};
use tokio::{io::AsyncWriteExt as _, net::TcpStream};

use crate::report::assets::{self, Asset};

/// The largest request head read (request line and headers); a longer one
/// is answered 431. Our GETs carry nothing in their headers we need.
pub(super) const MAX_HEAD: usize = 8192;

/// What a request asks for; `pid` is the process picked (`?pid=N`), None
/// for all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Page {
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
pub(crate) fn route(request_line: &str) -> Page {
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
pub(crate) enum Head {
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
pub(crate) fn scan_head(head: &[u8]) -> Head {
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
    fn loopback_only_unless_asked() {
        assert!(check_listen_address("127.0.0.1:6060".parse().unwrap(), false).is_ok());
        assert!(check_listen_address("[::1]:6060".parse().unwrap(), false).is_ok());
        assert!(check_listen_address("0.0.0.0:6060".parse().unwrap(), false).is_err());
        assert!(check_listen_address("0.0.0.0:6060".parse().unwrap(), true).is_ok());
    }
}
