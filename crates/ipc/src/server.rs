//! The engine core's side: serve an [`EngineHandle`] to API servers over the protocol.
//!
//! A connection must open with a `Hello` carrying the engine token ([`Access::token`],
//! compared in constant time); any other opening is refused, logged and counted. Each
//! connection is one client, which sees and touches only its own requests:
//! - its request ids are scoped to the connection (the engine sees `c{n}/{id}`), so ids a
//!   client picks can never collide with, or squat, another client's;
//! - `AbortById` and `StopById` reach only the connection's own live requests;
//! - it may have at most [`Access::max_requests`] requests live; more are refused.
//!
//! Its requests are rebuilt with the engine request builder (the carrier included, so
//! `llm_core` is made in this process from the client's context), their outputs stream back
//! tagged with the client's number, an `Abort` drops the request's stream (which aborts it in
//! the engine), and a connection that closes aborts everything it still had running, so its KV
//! blocks are freed.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use wayfinder_core::clock::monotonic_now;
use wayfinder_core::{EngineHandle, EngineRequest, FinishStatus, FinishedOutput, RequestOutput};

use crate::addr::{Listener, Stream};
use crate::protocol::{
    EngineInfo, FromEngine, HANDSHAKE_MAX_FRAME_BYTES, MAX_FRAME_BYTES, PROTOCOL_VERSION, Reader,
    ToEngine, WireRequest, Writer,
};
use crate::secret::Secret;
use crate::tls::ServerTls;

/// Who may use the engine, and how much.
#[derive(Debug, Clone)]
pub struct Access {
    /// The engine token every connection's `Hello` must carry.
    pub token: Secret,
    /// The most live requests one connection may have.
    pub max_requests: usize,
    /// TLS on TCP connections (`engine-core --tls-cert`); `None`: plain.
    pub tls: Option<ServerTls>,
}

impl Access {
    /// `token`, with the default limit of [`Access::DEFAULT_MAX_REQUESTS`].
    pub fn new(token: Secret) -> Self {
        Self {
            token,
            max_requests: Self::DEFAULT_MAX_REQUESTS,
            tls: None,
        }
    }

    /// Live requests per connection by default: far above what one API server sends
    /// (`--max-num-seqs` + `--max-waiting-requests`), far below what exhausts memory.
    pub const DEFAULT_MAX_REQUESTS: usize = 4096;
}

/// Accepts clients on `listener` and serves `engine` to those `access` lets in, until the
/// listener fails.
pub async fn serve(
    listener: Listener,
    engine: EngineHandle,
    info: EngineInfo,
    access: Access,
) -> std::io::Result<()> {
    let access = Arc::new(access);
    let refused = Arc::new(AtomicU64::new(0));
    for conn in 0u64.. {
        let stream = listener.accept().await?;
        let (engine, info, access, refused) = (
            engine.clone(),
            info.clone(),
            access.clone(),
            refused.clone(),
        );
        tokio::spawn(async move {
            let Some(stream) = secure(stream, &access, &refused).await else {
                return;
            };
            let client = Client {
                conn,
                engine,
                access,
            };
            if let Err(e) = client.serve(stream, info, &refused).await {
                tracing::warn!(error = %e, "engine core: a client connection ended with an error");
            }
        });
    }
    Ok(())
}

/// How long a TLS handshake may take.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The connection with TLS set up when `access` asks for it on TCP; `None` (logged and
/// counted) when the handshake fails.
async fn secure(stream: Stream, access: &Access, refused: &AtomicU64) -> Option<Stream> {
    let (tls, tcp) = match (&access.tls, stream) {
        (Some(tls), Stream::Tcp(tcp)) => (tls, tcp),
        (_, other) => return Some(other),
    };
    let accepted = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.acceptor().accept(tcp)).await;
    match accepted {
        Ok(Ok(s)) => Some(Stream::TlsServer(Box::new(s))),
        Ok(Err(e)) => {
            let count = refused.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(error = %e, refused_so_far = count, "engine core: refused a connection (TLS handshake)");
            None
        }
        Err(_) => {
            let count = refused.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(
                refused_so_far = count,
                "engine core: refused a connection (TLS handshake timed out)"
            );
            None
        }
    }
}

/// One connection's client.
struct Client {
    /// The connection's number, which scopes its request ids.
    conn: u64,
    engine: EngineHandle,
    access: Arc<Access>,
}

impl Client {
    /// The id the engine knows the client's request `id` by.
    fn scoped(&self, id: &str) -> String {
        format!("c{}/{id}", self.conn)
    }

    /// Serves the client until it disconnects.
    async fn serve(
        self,
        stream: Stream,
        info: EngineInfo,
        refused: &AtomicU64,
    ) -> Result<(), crate::protocol::FrameError> {
        let (read, write) = tokio::io::split(stream);
        let (mut reader, mut writer) = (Reader::new(read), Writer::new(write));
        reader.set_max_frame(HANDSHAKE_MAX_FRAME_BYTES);
        let refusal = match reader.next::<ToEngine>().await {
            Some(Ok(ToEngine::Hello { version, token })) => {
                if !self.access.token.matches(&token) {
                    Some("wrong or missing engine token".to_owned())
                } else if version != PROTOCOL_VERSION {
                    Some(format!(
                        "protocol version {version} is not supported; this engine core speaks {PROTOCOL_VERSION}"
                    ))
                } else {
                    None
                }
            }
            Some(Ok(_)) => Some("the connection must open with Hello".to_owned()),
            Some(Err(e)) => Some(format!("a malformed opening frame: {e}")),
            None => return Ok(()),
        };
        if let Some(reason) = refusal {
            let count = refused.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(%reason, refused_so_far = count, "engine core: refused a connection");
            return writer.send(&FromEngine::Refused { reason }).await;
        }
        writer
            .send(&FromEngine::Welcome {
                version: PROTOCOL_VERSION,
                info,
            })
            .await?;
        reader.set_max_frame(MAX_FRAME_BYTES);
        self.run(reader, writer).await
    }

    /// The connection after its handshake.
    async fn run(
        self,
        mut reader: Reader<ReadHalf<Stream>>,
        mut writer: Writer<WriteHalf<Stream>>,
    ) -> Result<(), crate::protocol::FrameError> {
        tracing::info!(conn = self.conn, "engine core: a client connected");
        // One writer task; everything else hands it messages.
        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<FromEngine>();
        let writer_task = tokio::spawn(async move {
            while let Some(message) = out_rx.recv().await {
                if writer.send(&message).await.is_err() {
                    break;
                }
            }
        });
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<u64>();
        let mut live = Live::default();
        let result = loop {
            tokio::select! {
                Some(seq) = done_rx.recv() => live.remove(seq),
                message = reader.next::<ToEngine>() => match message {
                    None => break Ok(()),
                    Some(Err(e)) => break Err(e),
                    Some(Ok(m)) => self.handle(m, &out_tx, &done_tx, &mut live),
                },
            }
        };
        // The client is gone: abort what it left running (dropping the streams aborts them).
        let n = live.tasks.len();
        for (_, (task, _)) in live.tasks {
            task.abort();
        }
        tracing::info!(
            conn = self.conn,
            aborted = n,
            "engine core: a client disconnected"
        );
        drop(out_tx);
        let _ = writer_task.await;
        result
    }

    fn handle(
        &self,
        message: ToEngine,
        out: &mpsc::UnboundedSender<FromEngine>,
        done: &mpsc::UnboundedSender<u64>,
        live: &mut Live,
    ) {
        match message {
            ToEngine::Add { seq, request } => self.add(seq, *request, out, done, live),
            ToEngine::Abort { seq } => live.remove(seq),
            ToEngine::AbortById { id } => {
                if live.ids.contains_key(&id) {
                    let _ = self.engine.abort(&self.scoped(&id));
                }
            }
            ToEngine::StopById { id } => {
                if live.ids.contains_key(&id) {
                    let _ = self.engine.stop(&self.scoped(&id));
                }
            }
            ToEngine::Stats { tag } => {
                let (engine, out) = (self.engine.clone(), out.clone());
                tokio::spawn(async move {
                    if let Ok(stats) = engine.stats().await {
                        let _ = out.send(FromEngine::Stats { tag, stats });
                    }
                });
            }
            ToEngine::Ping { tag } => {
                let _ = out.send(FromEngine::Pong { tag });
            }
            ToEngine::Hello { .. } => {}
        }
    }

    /// Runs request `seq` for this client, or answers with its refusal.
    fn add(
        &self,
        seq: u64,
        request: WireRequest,
        out: &mpsc::UnboundedSender<FromEngine>,
        done: &mpsc::UnboundedSender<u64>,
        live: &mut Live,
    ) {
        let refuse = |error: String| {
            let _ = out.send(FromEngine::Output {
                seq,
                output: RequestOutput::Finished(rejected(error)),
            });
        };
        if live.tasks.contains_key(&seq) {
            return refuse(format!(
                "request number {seq} is already live on this connection"
            ));
        }
        if live.tasks.len() >= self.access.max_requests {
            return refuse(format!(
                "this connection already has {} requests live, the most it may",
                self.access.max_requests
            ));
        }
        let id = request.id.clone();
        let built = EngineRequest::builder(self.scoped(&request.id), request.prompt)
            .sampling(request.sampling)
            .stop(request.stop)
            .priority(request.priority)
            .carrier(request.carrier)
            .journey(request.journey)
            .cache_salt(request.cache_salt)
            .arrival_time(monotonic_now())
            .build();
        let mut stream = match built
            .map_err(|e| e.to_string())
            .and_then(|r| self.engine.add_request(r).map_err(|e| e.to_string()))
        {
            Ok(s) => s,
            Err(error) => return refuse(error),
        };
        let (out, done) = (out.clone(), done.clone());
        let task = tokio::spawn(async move {
            while let Some(output) = stream.next().await {
                if out.send(FromEngine::Output { seq, output }).is_err() {
                    break;
                }
            }
            let _ = done.send(seq);
        });
        live.insert(seq, id, task.abort_handle());
    }
}

/// A connection's live requests, by its number for them and by their id.
#[derive(Default)]
struct Live {
    tasks: HashMap<u64, (AbortHandle, String)>,
    /// Live requests per id (ids need not be unique on the client's side).
    ids: HashMap<String, usize>,
}

impl Live {
    fn insert(&mut self, seq: u64, id: String, task: AbortHandle) {
        *self.ids.entry(id.clone()).or_default() += 1;
        self.tasks.insert(seq, (task, id));
    }

    /// Forgets request `seq`, aborting it if it still runs.
    fn remove(&mut self, seq: u64) {
        if let Some((task, id)) = self.tasks.remove(&seq) {
            task.abort();
            if let Some(n) = self.ids.get_mut(&id) {
                *n -= 1;
                if *n == 0 {
                    self.ids.remove(&id);
                }
            }
        }
    }
}

/// The `Finished` of a request the engine could not take.
fn rejected(error: String) -> FinishedOutput {
    let now = monotonic_now();
    FinishedOutput {
        status: FinishStatus::Error,
        usage: wayfinder_core::Usage::default(),
        timestamps: wayfinder_core::RequestTimestamps {
            arrival: now,
            queued: now,
            finished: Some(now),
            ..Default::default()
        },
        num_preemptions: 0,
        error: Some(error),
        journey: Vec::new(),
        prefix_cache_queries: 0,
    }
}
