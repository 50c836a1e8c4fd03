//! Accepting HTTP connections with bounds: at most [`Limits::max_connections`] open at once (a
//! connection waits in the listener's backlog for a free slot), and a connection that takes
//! longer than [`Limits::http_idle_timeout`] to send a request's headers — a silent one, one
//! that sends half a header, or a keep-alive connection with no next request — is closed. So
//! idle clients cannot hold every descriptor and lock everyone out, `/health` included.
//!
//! axum's `serve` has neither knob, so connections are driven here with hyper's HTTP/1
//! builder (`header_read_timeout` covers the wait for a request's first byte as well as the
//! rest of its headers) and hyper-util's graceful shutdown, as `axum::serve` does inside.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::state::Limits;

/// hyper's read buffer, which bounds a request's head: well above the router's header limit.
const HTTP_BUFFER_BYTES: usize = 1 << 20;

/// How long to wait after a failed `accept` (out of descriptors, say) before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serves `router` on `listener` until `shutdown` resolves; returns the graceful shutdown of
/// the connections still open, for the caller to wait on.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: &Limits,
    shutdown: impl Future<Output = ()>,
) -> GracefulShutdown {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut http = hyper::server::conn::http1::Builder::new();
    // Headers up to hyper's buffer reach the router, which refuses those over its own limit
    // with an OpenAI error body (hyper's own 431 has none).
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.http_idle_timeout)
        .max_buf_size(HTTP_BUFFER_BYTES);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Streamed chunks are small: without TCP_NODELAY they wait behind delayed ACKs (~40 ms
        // stalls in TTFT and ITL, measured with `wayfinder bench serve`).
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            // A connection ending with an error (a reset, a timeout) is the client's business.
            let _ = connection.await;
            drop(permit);
        });
    }
    graceful
}
