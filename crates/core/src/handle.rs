//! [`EngineHandle`]: the cheap, cloneable way into the engine thread, and [`RequestStream`], a
//! request's own output channel.
//!
//! The handle only sends commands; the engine loop owns all state. Dropping a stream before its
//! final output aborts the request, so a client that goes away frees its KV blocks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::{mpsc as async_mpsc, oneshot};

use crate::engine::{EngineConfig, EngineLoop};
use crate::executor::Executor;
use crate::journey::JourneyObserver;
use crate::output::RequestOutput;
use crate::request::EngineRequest;
use crate::scheduler::ConfigError;
use crate::sequence::SeqId;

/// Why the engine could not take a call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The engine thread has stopped (shut down, or died).
    #[error("the engine is not running")]
    NotRunning,
    /// The engine thread could not be started.
    #[error("could not start the engine thread: {0}")]
    Spawn(String),
}

/// A snapshot of the engine's load, taken on the engine thread between steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineStats {
    /// Requests in the running set.
    pub num_running: usize,
    /// Requests waiting or preempted.
    pub num_waiting: usize,
    /// KV blocks in the pool.
    pub num_total_blocks: usize,
    /// KV blocks free.
    pub num_free_blocks: usize,
    /// Scheduler steps begun.
    pub num_steps: u64,
}

pub(crate) enum Command {
    Add {
        seq: SeqId,
        request: Box<EngineRequest>,
        tx: async_mpsc::UnboundedSender<RequestOutput>,
    },
    Abort(SeqId),
    AbortById(String),
    Stats(oneshot::Sender<EngineStats>),
    Shutdown,
}

#[derive(Debug)]
struct Shared {
    commands: Sender<Command>,
    next_seq: AtomicU64,
    thread: Mutex<Option<JoinHandle<()>>>,
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
        let (commands, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("wayfinder-engine".into())
            .spawn(move || engine.run(&rx))
            .map_err(|e| EngineError::Spawn(e.to_string()))?;
        Ok(Self {
            shared: Arc::new(Shared {
                commands,
                next_seq: AtomicU64::new(0),
                thread: Mutex::new(Some(thread)),
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
        self.send(Command::Add {
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
        self.send(Command::AbortById(request_id.to_owned()))
    }

    /// The engine's load, after every command sent before this call has been handled.
    pub async fn stats(&self) -> Result<EngineStats, EngineError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Stats(tx))?;
        rx.await.map_err(|_| EngineError::NotRunning)
    }

    /// [`EngineHandle::stats`] for synchronous callers (not from inside an async runtime).
    pub fn stats_blocking(&self) -> Result<EngineStats, EngineError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Stats(tx))?;
        rx.blocking_recv().map_err(|_| EngineError::NotRunning)
    }

    /// Whether the engine thread is still running.
    pub fn is_running(&self) -> bool {
        let thread = self.shared.thread.lock().unwrap_or_else(|e| e.into_inner());
        thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops the engine: every live request ends `aborted`, then the thread exits. Blocks until
    /// it has; call it from a blocking context. Later calls return at once.
    pub fn shutdown(&self) {
        // A send error means the thread is already gone; joining below still reaps it.
        let _ = self.shared.commands.send(Command::Shutdown);
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

    fn send(&self, command: Command) -> Result<(), EngineError> {
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
    commands: Sender<Command>,
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
            Some(RequestOutput::Token(_)) => {}
        }
        item
    }
}

impl Drop for RequestStream {
    fn drop(&mut self) {
        if !self.done {
            // If the engine is gone there is nothing left to free.
            let _ = self.commands.send(Command::Abort(self.seq));
        }
    }
}
