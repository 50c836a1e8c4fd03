//! [`EngineHandle`]: the cheap, cloneable way into the engine thread, and [`RequestStream`], a
//! request's own output channel.
//!
//! The handle only sends [`EngineCommand`]s; whoever receives them owns all state. That is the
//! engine loop on its own thread ([`EngineHandle::spawn`]) or, with
//! [`EngineHandle::from_worker`], any other worker — the proxy that forwards the commands to an
//! engine-core process over its IPC transport. Dropping a stream before its final output aborts
//! the request, so a client that goes away frees its KV blocks, wherever they are.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::{mpsc as async_mpsc, oneshot};

use crate::engine::{EngineCommand, EngineConfig, EngineError, EngineLoop, EngineStats};
use crate::executor::Executor;
use crate::journey::JourneyObserver;
use crate::output::RequestOutput;
use crate::request::EngineRequest;
use crate::sequence::SeqId;

#[derive(Debug)]
struct Shared {
    commands: Sender<EngineCommand>,
    next_seq: AtomicU64,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Set by a worker that can lose its engine and get it back (a remote engine).
    healthy: Option<Arc<AtomicBool>>,
}

/// Sends commands to the engine thread. Cheap to clone; every clone drives the same engine.
#[derive(Debug, Clone)]
pub struct EngineHandle {
    shared: Arc<Shared>,
}

impl EngineHandle {
    /// Starts the engine thread with `executor` and, if given, a journey `observer`.
    pub fn spawn(
        config: EngineConfig,
        executor: Box<dyn Executor>,
        observer: Option<Box<dyn JourneyObserver>>,
    ) -> Result<Self, EngineError> {
        let engine = EngineLoop::new(config, executor, observer)?;
        let healthy = Arc::new(AtomicBool::new(true));
        let flag = healthy.clone();
        Self::start("wayfinder-engine", Some(healthy), move |rx| {
            engine.run_supervised(&rx, &flag);
        })
    }

    /// A handle whose commands go to `worker`, run on a thread of its own named `name`. The
    /// worker must answer every command as the engine loop does (see [`EngineCommand`]) and
    /// return after `Shutdown` or when the channel closes. `healthy` says whether it can serve
    /// right now; [`EngineHandle::is_running`] reports it.
    pub fn from_worker(
        name: &str,
        healthy: Arc<AtomicBool>,
        worker: impl FnOnce(Receiver<EngineCommand>) + Send + 'static,
    ) -> Result<Self, EngineError> {
        Self::start(name, Some(healthy), worker)
    }

    fn start(
        name: &str,
        healthy: Option<Arc<AtomicBool>>,
        worker: impl FnOnce(Receiver<EngineCommand>) + Send + 'static,
    ) -> Result<Self, EngineError> {
        let (commands, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || worker(rx))
            .map_err(|e| EngineError::Spawn(e.to_string()))?;
        Ok(Self {
            shared: Arc::new(Shared {
                commands,
                next_seq: AtomicU64::new(0),
                thread: Mutex::new(Some(thread)),
                healthy,
            }),
        })
    }

    /// Submits a request; its outputs arrive on the returned stream.
    ///
    /// A request id already in use by a live request gets a single `Finished` output with
    /// status `error`.
    pub fn add_request(&self, request: EngineRequest) -> Result<RequestStream, EngineError> {
        let seq = SeqId(self.shared.next_seq.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = async_mpsc::unbounded_channel();
        self.send(EngineCommand::Add {
            seq,
            request: Box::new(request),
            tx,
        })?;
        Ok(RequestStream {
            seq,
            rx,
            commands: self.shared.commands.clone(),
            done: false,
        })
    }

    /// Aborts the live request with this client id, if any; it ends with status `aborted`.
    pub fn abort(&self, request_id: &str) -> Result<(), EngineError> {
        self.send(EngineCommand::AbortById(request_id.to_owned()))
    }

    /// Ends the live request with this client id, if any, with status `stopped`: its text
    /// reached a stop string, which only the API layer can see.
    pub fn stop(&self, request_id: &str) -> Result<(), EngineError> {
        self.send(EngineCommand::StopById(request_id.to_owned()))
    }

    /// The engine's load, after every command sent before this call has been handled.
    pub async fn stats(&self) -> Result<EngineStats, EngineError> {
        let (tx, rx) = oneshot::channel();
        self.send(EngineCommand::Stats(tx))?;
        rx.await.map_err(|_| EngineError::NotRunning)
    }

    /// [`EngineHandle::stats`] for synchronous callers (not from inside an async runtime).
    pub fn stats_blocking(&self) -> Result<EngineStats, EngineError> {
        let (tx, rx) = oneshot::channel();
        self.send(EngineCommand::Stats(tx))?;
        rx.blocking_recv().map_err(|_| EngineError::NotRunning)
    }

    /// Whether the engine can take requests: its thread runs and, for a worker with an
    /// engine elsewhere, that engine is reachable.
    pub fn is_running(&self) -> bool {
        let thread = self.shared.thread.lock().unwrap_or_else(|e| e.into_inner());
        let alive = thread.as_ref().is_some_and(|t| !t.is_finished());
        alive
            && self
                .shared
                .healthy
                .as_ref()
                .is_none_or(|h| h.load(Ordering::Acquire))
    }

    /// Stops the engine: every live request ends `aborted`, then the thread exits. Blocks until
    /// it has; call it from a blocking context. Later calls return at once.
    pub fn shutdown(&self) {
        // A send error means the thread is already gone; joining below still reaps it.
        let _ = self.shared.commands.send(EngineCommand::Shutdown);
        let thread = self
            .shared
            .thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            tracing::error!("the engine thread panicked");
        }
    }

    fn send(&self, command: EngineCommand) -> Result<(), EngineError> {
        self.shared
            .commands
            .send(command)
            .map_err(|_| EngineError::NotRunning)
    }
}

/// A request's outputs: tokens as they come, then one `Finished`. Dropping it before the end
/// aborts the request.
#[derive(Debug)]
pub struct RequestStream {
    seq: SeqId,
    rx: async_mpsc::UnboundedReceiver<RequestOutput>,
    commands: Sender<EngineCommand>,
    done: bool,
}

impl RequestStream {
    /// The next output; `None` after `Finished`, or if the engine died before finishing.
    pub async fn next(&mut self) -> Option<RequestOutput> {
        let item = self.rx.recv().await;
        self.note(item)
    }

    /// [`RequestStream::next`] for synchronous callers (not from inside an async runtime).
    pub fn blocking_next(&mut self) -> Option<RequestOutput> {
        let item = self.rx.blocking_recv();
        self.note(item)
    }

    fn note(&mut self, item: Option<RequestOutput>) -> Option<RequestOutput> {
        match &item {
            Some(RequestOutput::Finished(_)) | None => self.done = true,
            Some(RequestOutput::Token(_) | RequestOutput::PromptLogprobs(_)) => {}
        }
        item
    }
}

impl Drop for RequestStream {
    fn drop(&mut self) {
        if !self.done {
            // If the engine is gone there is nothing left to free.
            let _ = self.commands.send(EngineCommand::Abort(self.seq));
        }
    }
}
