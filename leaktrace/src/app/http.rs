//! The HTTP side of `leaktrace serve`: a deliberately small GET-only
//! HTTP/1.1 responder (one request per connection), enough for curl,
//! Prometheus, `go tool pprof http://...` and a browser. Routing is pure;
//! each connection is read and written by a task of its own, and only the
//! page it asks for goes through the event loop, where the tracer builds
//! the report the page shows.
use std::{net::SocketAddr, time::Duration};

use anyhow::{Result, bail};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    sync::{mpsc, oneshot},
};

use super::tracer::Tracer;
use crate::report;

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Page {
    /// `/`: the HTML page.
    Index,
    /// `/debug/pprof/heap`: the outstanding profile, gzipped pprof.
    Heap,
    /// `/metrics`: Prometheus text.
    Metrics,
    /// Anything else.
    NotFound,
    /// Not a GET request.
    BadMethod,
}

/// Routes a request line (`GET /path?query HTTP/1.1`).
pub(super) fn route(request_line: &str) -> Page {
    let mut words = request_line.split_whitespace();
    if words.next() != Some("GET") {
        return Page::BadMethod;
    }
    let path = words.next().unwrap_or("/");
    let path = path.split('?').next().unwrap_or(path);
    match path {
        "/" | "/index.html" => Page::Index,
        "/debug/pprof/heap" => Page::Heap,
        "/metrics" => Page::Metrics,
        _ => Page::NotFound,
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

/// Serves one connection without holding up tracing: reads and routes its
/// request here (a client may be slow to send it), hands the page to the
/// trace loop through `pages`, and writes the response the loop sends back.
pub(super) async fn handle(
    stream: TcpStream,
    pages: mpsc::UnboundedSender<(Page, oneshot::Sender<Response>)>,
) {
    let mut stream = stream;
    let Ok(request) = read_request_line(&mut stream).await else {
        return;
    };
    let (reply, response) = oneshot::channel();
    if pages.send((route(&request), reply)).is_err() {
        return;
    }
    if let Ok((status, content_type, body)) = response.await {
        let _: Result<_, _> = respond(&mut stream, status, content_type, &body).await;
    }
}

/// Writes one complete response and closes the connection.
pub(super) async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
) -> Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.shutdown().await?;
    Ok(())
}

impl Tracer {
    /// The response to a request for `page` (serve): status, content type
    /// and body, from the current report.
    pub(super) fn page(&mut self, page: Page) -> Result<Response> {
        Ok(match page {
            Page::NotFound => ("404 Not Found", "text/plain", b"not found\n".to_vec()),
            Page::BadMethod => (
                "405 Method Not Allowed",
                "text/plain",
                b"GET only\n".to_vec(),
            ),
            Page::Index | Page::Heap | Page::Metrics => {
                let report = self.report(false)?;
                match page {
                    Page::Index => (
                        "200 OK",
                        "text/html; charset=utf-8",
                        report::html::render(&report, self.options.top).into_bytes(),
                    ),
                    Page::Heap => (
                        "200 OK",
                        "application/octet-stream",
                        report::pprof::render(&report),
                    ),
                    _ => (
                        "200 OK",
                        "text/plain; version=0.0.4",
                        report::metrics::render(&report, report::metrics::own_rss_bytes())
                            .into_bytes(),
                    ),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("GET / HTTP/1.1"), Page::Index);
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
