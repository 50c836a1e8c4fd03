//! The engine core's side: serve an [`EngineHandle`] to API servers over the protocol.
//!
//! Each connection is one client. Its requests are rebuilt with the engine request builder
//! (the carrier included, so `llm_core` is made in this process from the client's context),
//! their outputs stream back tagged with the client's number, an `Abort` drops the request's
//! stream (which aborts it in the engine), and a connection that closes aborts everything it
//! still had running, so its KV blocks are freed.

use std::collections::HashMap;

use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use wayfinder_core::clock::monotonic_now;
use wayfinder_core::{EngineHandle, EngineRequest, FinishStatus, FinishedOutput, RequestOutput};

use crate::addr::{Listener, Stream};
use crate::protocol::{EngineInfo, FromEngine, PROTOCOL_VERSION, Reader, ToEngine, Writer};

/// Accepts clients on `listener` and serves `engine` to each, until the listener fails.
pub async fn serve(
    listener: Listener,
    engine: EngineHandle,
    info: EngineInfo,
) -> std::io::Result<()> {
    loop {
        let stream = listener.accept().await?;
        let (engine, info) = (engine.clone(), info.clone());
        tokio::spawn(async move {
            if let Err(e) = serve_client(stream, engine, info).await {
                tracing::warn!(error = %e, "engine core: a client connection ended with an error");
            }
        });
    }
}

/// Serves one client until it disconnects.
async fn serve_client(
    stream: Stream,
    engine: EngineHandle,
    info: EngineInfo,
) -> Result<(), crate::protocol::FrameError> {
    let (read, write) = tokio::io::split(stream);
    let (mut reader, mut writer) = (Reader::new(read), Writer::new(write));
    match reader.next::<ToEngine>().await {
        Some(Ok(ToEngine::Hello { version })) if version == PROTOCOL_VERSION => {
            writer
                .send(&FromEngine::Welcome {
                    version: PROTOCOL_VERSION,
                    info,
                })
                .await?;
        }
        Some(Ok(ToEngine::Hello { version })) => {
            let reason = format!(
                "protocol version {version} is not supported; this engine core speaks {PROTOCOL_VERSION}"
            );
            return writer.send(&FromEngine::Refused { reason }).await;
        }
        Some(Ok(_)) => {
            let reason = "the connection must open with Hello".to_owned();
            return writer.send(&FromEngine::Refused { reason }).await;
        }
        Some(Err(e)) => return Err(e),
        None => return Ok(()),
    }
    tracing::info!("engine core: a client connected");
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
    let mut live: HashMap<u64, AbortHandle> = HashMap::new();
    let result = loop {
        tokio::select! {
            Some(seq) = done_rx.recv() => {
                live.remove(&seq);
            }
            message = reader.next::<ToEngine>() => match message {
                None => break Ok(()),
                Some(Err(e)) => break Err(e),
                Some(Ok(m)) => handle(m, &engine, &out_tx, &done_tx, &mut live),
            },
        }
    };
    // The client is gone: abort what it left running (dropping the streams aborts them).
    let n = live.len();
    for (_, task) in live {
        task.abort();
    }
    tracing::info!(aborted = n, "engine core: a client disconnected");
    drop(out_tx);
    let _ = writer_task.await;
    result
}

fn handle(
    message: ToEngine,
    engine: &EngineHandle,
    out: &mpsc::UnboundedSender<FromEngine>,
    done: &mpsc::UnboundedSender<u64>,
    live: &mut HashMap<u64, AbortHandle>,
) {
    match message {
        ToEngine::Add { seq, request } => {
            let built = EngineRequest::builder(request.id, request.prompt)
                .sampling(request.sampling)
                .stop(request.stop)
                .priority(request.priority)
                .carrier(request.carrier)
                .arrival_time(monotonic_now())
                .build();
            let mut stream = match built
                .map_err(|e| e.to_string())
                .and_then(|r| engine.add_request(r).map_err(|e| e.to_string()))
            {
                Ok(s) => s,
                Err(error) => {
                    let _ = out.send(FromEngine::Output {
                        seq,
                        output: RequestOutput::Finished(rejected(error)),
                    });
                    return;
                }
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
            live.insert(seq, task.abort_handle());
        }
        ToEngine::Abort { seq } => {
            if let Some(task) = live.remove(&seq) {
                task.abort();
            }
        }
        ToEngine::AbortById { id } => {
            let _ = engine.abort(&id);
        }
        ToEngine::StopById { id } => {
            let _ = engine.stop(&id);
        }
        ToEngine::Stats { tag } => {
            let (engine, out) = (engine.clone(), out.clone());
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
    }
}
