//! The HTTP side of `leaktrace serve`: a deliberately small GET-only
//! HTTP/1.1 responder (one request per connection), enough for curl,
//! Prometheus, `go tool pprof http://...` and a browser. Routing is pure;
//! each connection is read and written by a task of its own, and only the
//! page it asks for goes through the event loop, where the tracer builds
//! the report the page shows (the page's static files, built into the
//! binary, are answered here).
//!
//! The page (`/`, `?pid=N` to pick a process) loads its script and styles
//! from `/assets/`, and asks for `/api/series?pid=N` (JSON),
//! `/fragment?pid=N` (its tables) and `/flamegraph.svg?pid=N` at every
//! refresh. HTML goes out with a policy that allows only the server's own
//! scripts, styles and objects: a name from a traced process that slipped
//! through as markup still could not run.
use std::{net::SocketAddr, time::Duration};

use anyhow::{Result, bail};

use crate::report::assets::{self, Asset};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    sync::{mpsc, oneshot},
};

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
    /// Not a GET request.
    BadMethod,
}

/// Routes a request line (`GET /path?query HTTP/1.1`).
pub(crate) fn route(request_line: &str) -> Page {
    let mut words = request_line.split_whitespace();
    if words.next() != Some("GET") {
        return Page::BadMethod;
    }
    let target = words.next().unwrap_or("/");
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

/// Reads the request head (up to a blank line, 8 KiB, 5 s) and returns its
/// first line.
pub(super) async fn read_request_line(stream: &mut TcpStream) -> Result<String> {
    let mut head = Vec::new();
    let mut buffer = [0u8; 1024];
    let read = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
            let n = stream.read(&mut buffer).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buffer[..n]);
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(5), read).await??;
    let text = String::from_utf8_lossy(&head);
    Ok(text.lines().next().unwrap_or("").to_string())
}

/// Status, content type and body of a response.
pub(super) type Response = (&'static str, &'static str, Vec<u8>);

/// What the page may load: its own server's scripts, styles, data and
/// objects, nothing inline, nothing from elsewhere.
const PAGE_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; object-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// Serves one connection without holding up tracing: reads and routes its
/// request here (a client may be slow to send it), answers a built-in
/// file at once, hands any other page to the trace loop through `pages`,
/// and writes the response the loop sends back.
pub(super) async fn handle(
    stream: TcpStream,
    pages: mpsc::UnboundedSender<(Page, oneshot::Sender<Response>)>,
) {
    let mut stream = stream;
    let Ok(request) = read_request_line(&mut stream).await else {
        return;
    };
    let page = route(&request);
    if let Page::Asset(asset) = page {
        let _: Result<_, _> = respond(&mut stream, "200 OK", asset.content_type, asset.body).await;
        return;
    }
    let (reply, response) = oneshot::channel();
    if pages.send((page, reply)).is_err() {
        return;
    }
    if let Ok((status, content_type, body)) = response.await {
        let _: Result<_, _> = respond(&mut stream, status, content_type, &body).await;
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
        assert_eq!(route(""), Page::BadMethod);
    }

    #[test]
    fn loopback_only_unless_asked() {
        assert!(check_listen_address("127.0.0.1:6060".parse().unwrap(), false).is_ok());
        assert!(check_listen_address("[::1]:6060".parse().unwrap(), false).is_ok());
        assert!(check_listen_address("0.0.0.0:6060".parse().unwrap(), false).is_err());
        assert!(check_listen_address("0.0.0.0:6060".parse().unwrap(), true).is_ok());
    }
}
