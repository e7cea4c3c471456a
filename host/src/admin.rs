//! The admin listener (`admin = "127.0.0.1:9090"` in the config, off unless set), on a port of its
//! own so that it can stay off the public interface:
//! - `GET /metrics`: every counter, gauge and histogram of [`crate::metrics`], in the Prometheus
//!   text format;
//! - `GET /healthz`: 200 while the process serves (liveness);
//! - `GET /readyz`: 200 while it accepts WebSocket connections, 503 once it is shutting down
//!   (readiness: a load balancer stops sending it clients).
//!
//! One request per connection, answered and closed; the request head is parsed by the same
//! strict parser as WebSocket handshakes, bounded in size and time.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::protocol::handshake::{self, HeadLimits};

/// How long a client has to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
const LIMITS: HeadLimits = HeadLimits { max_head_size: 8 << 10, max_headers: 64 };

/// Serves admin requests, each on a task of its own, for as long as the server runs (`/readyz`
/// says 503 once `shutdown` has turned true).
pub async fn serve(listener: TcpListener, shutdown: watch::Receiver<bool>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let shutting_down = *shutdown.borrow();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(HEAD_TIMEOUT, answer(stream, shutting_down)).await;
        });
    }
}

async fn answer(mut stream: TcpStream, shutting_down: bool) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let request = loop {
        match handshake::parse_request(&buf, LIMITS) {
            Ok(Some((request, _))) => break request,
            Ok(None) => {}
            Err(e) => return stream.write_all(&e.response()).await,
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    };
    let text = "text/plain; charset=utf-8";
    let response = match (request.method.as_str(), request.path()) {
        ("GET", "/metrics") => handshake::http_response(
            200,
            &[],
            "text/plain; version=0.0.4; charset=utf-8",
            crate::metrics::metrics().encode().as_bytes(),
        ),
        ("GET", "/healthz") => handshake::http_response(200, &[], text, b"ok\n"),
        ("GET", "/readyz") if shutting_down => handshake::http_response(503, &[], text, b"shutting down\n"),
        ("GET", "/readyz") => handshake::http_response(200, &[], text, b"ready\n"),
        ("GET", _) => handshake::http_response(404, &[], text, b"not found: /metrics, /healthz, /readyz\n"),
        _ => handshake::http_response(405, &[("Allow", "GET")], text, b"only GET\n"),
    };
    stream.write_all(&response).await?;
    stream.shutdown().await
}
