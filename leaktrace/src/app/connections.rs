//! The connections of `leaktrace serve`: accepted by a task of their own,
//! each read and written by a task of its own, so that no client holds up
//! the others or the tracing; only the page a request asks for goes
//! through the event loop, where the tracer builds the report the page
//! shows (the page's static files and every refusal are answered here).
//!
//! Whoever can connect is not trusted to behave (`--allow-remote` opens the
//! port to a network): at most [`MAX_CONNECTIONS`] connections are served
//! at once (more are answered 503 and closed), a request head must arrive
//! whole within [`HEAD_TIMEOUT`] (else 408) and fit in [`MAX_HEAD`] bytes
//! (else 431), a request line that is not `METHOD /target HTTP/1.x` in
//! printable ASCII is answered 400 as soon as it is seen, and at most
//! [`PAGE_QUEUE`] requests wait for the event loop (more are answered 503).
//! Every refusal is counted and exposed in `/metrics`.
use std::{
    fmt::Write as _,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::AsyncReadExt as _,
    net::{TcpListener, TcpStream},
    sync::{Semaphore, mpsc, oneshot},
};

use super::http::{Head, MAX_HEAD, Page, Response, local_response, respond, route, scan_head};

/// Connections served at once: a hundred idle or slow clients still leave
/// room for a scrape. One costs a task and at most [`MAX_HEAD`] bytes of
/// head; beyond this, a connection is answered 503 and closed at once.
pub(super) const MAX_CONNECTIONS: usize = 128;

/// How long a client has, from its connection, to send its whole request
/// head; then it is answered 408 and closed (an idle or slow-loris client
/// holds its slot this long, and [`LINGER`] more, at most).
pub(super) const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

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

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt as _;

    use super::*;

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
}
