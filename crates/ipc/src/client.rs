//! The API server's side: an [`EngineHandle`] whose engine is an engine-core process, reached
//! over the protocol — started and supervised as a child (`serve --engine-process`) or found at
//! an address (`serve --engine-address`).
//!
//! A supervisor on the handle's worker thread keeps one connection. It forwards the handle's
//! commands (requests with their carriers, aborts — also those of dropped streams — and stats)
//! and routes each request's outputs back to its stream; it pings the engine and treats a
//! silent one as gone. When the engine is lost, every request in flight has its stream ended
//! without a `Finished` (the API answers 503, `engine_unavailable`), `is_running` turns false
//! (`/health` says so), new requests are refused the same way, and the supervisor restarts the
//! child (or reconnects) with exponential backoff until the engine is back.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use tokio::io::{ReadHalf, WriteHalf};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use wayfinder_core::{EngineCommand, EngineHandle, EngineStats, RequestOutput};

use crate::addr::{EngineAddr, Stream};
use crate::protocol::{
    EngineInfo, FrameError, FromEngine, PROTOCOL_VERSION, Reader, ToEngine, WireRequest, Writer,
};
use crate::secret::SecretText;
use crate::tls::ClientTls;

/// How to start the engine-core process.
#[derive(Debug, Clone)]
pub struct SpawnSpec {
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Extra environment variables.
    pub envs: Vec<(OsString, OsString)>,
}

/// How to reach (and keep) the engine core.
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// Where it listens.
    pub addr: EngineAddr,
    /// Start it as a child (and restart it when it dies); `None` for an engine run elsewhere.
    pub spawn: Option<SpawnSpec>,
    /// How long the first connection may take (a child loads its model first).
    pub startup_timeout: Duration,
    /// How often the engine is pinged.
    pub ping_interval: Duration,
    /// An engine silent this long is taken for dead.
    pub ping_timeout: Duration,
    /// The longest wait between two restarts.
    pub max_backoff: Duration,
    /// The engine token sent in `Hello`.
    pub token: SecretText,
    /// TLS to a TCP engine address (`serve --engine-tls-ca`).
    pub tls: Option<ClientTls>,
}

impl RemoteConfig {
    /// Defaults around `addr`, with the engine's `token`.
    pub fn new(addr: EngineAddr, spawn: Option<SpawnSpec>, token: SecretText) -> Self {
        Self {
            addr,
            spawn,
            token,
            tls: None,
            startup_timeout: Duration::from_secs(600),
            ping_interval: Duration::from_secs(2),
            ping_timeout: Duration::from_secs(10),
            max_backoff: Duration::from_secs(10),
        }
    }
}

/// What the API process knows of the engine core now.
#[derive(Debug, Default)]
pub struct RemoteStatus {
    healthy: Arc<AtomicBool>,
    pid: AtomicU32,
    restarts: AtomicU64,
}

impl RemoteStatus {
    /// Whether the engine is connected.
    pub fn is_connected(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }
    /// The engine process's id (of the last connection).
    pub fn pid(&self) -> u32 {
        self.pid.load(Ordering::Acquire)
    }
    /// How many times the engine came back after being lost.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Acquire)
    }
}

/// Why the engine core could not be reached at start.
#[derive(Debug, thiserror::Error)]
#[error("engine core at {addr}: {reason}")]
pub struct ConnectError {
    /// Where.
    pub addr: String,
    /// Why (its text is in this error's message, so it is not repeated as the source).
    pub reason: LinkError,
}

/// Why the engine link could not reach the engine core: at start (inside [`ConnectError`]),
/// or when restarting it (logged, then retried).
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The link's worker thread could not be started.
    #[error(transparent)]
    Worker(#[from] wayfinder_core::EngineError),
    /// The link's runtime could not be started.
    #[error("cannot start the engine link's runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The thread that forwards the handle's commands could not be started.
    #[error("cannot start the engine link: {0}")]
    Bridge(#[source] std::io::Error),
    /// The link stopped before its first connection.
    #[error("the engine link stopped before connecting")]
    Stopped,
    /// The engine-core process could not be started.
    #[error("cannot start {}: {source}", program.display())]
    Spawn {
        /// The program.
        program: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The engine-core process exited before it could be reached.
    #[error("the engine core process exited ({0})")]
    Exited(std::process::ExitStatus),
    /// Nothing answered at the address within the startup timeout.
    #[error("not reachable within {0:?}")]
    Unreachable(Duration),
    /// The connection failed during the handshake, or a frame of it was malformed.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The engine core did not answer `Hello` in time.
    #[error("no answer to Hello")]
    NoAnswer,
    /// The engine core refused the connection (another protocol version).
    #[error("refused: {0}")]
    Refused(String),
    /// The engine core answered `Hello` with another message (shown here).
    #[error("unexpected answer to Hello: {0}")]
    UnexpectedAnswer(String),
    /// The connection closed during the handshake.
    #[error("closed during the handshake")]
    Closed,
}

/// Starts the engine core (when `config.spawn` says how), connects, and returns a handle to
/// it, what it said about itself, and its live status. Blocks until the first connection.
pub fn connect(
    config: RemoteConfig,
) -> Result<(EngineHandle, EngineInfo, Arc<RemoteStatus>), ConnectError> {
    let status = Arc::new(RemoteStatus::default());
    let (first_tx, first_rx) = std::sync::mpsc::channel::<Result<EngineInfo, LinkError>>();
    let addr = config.addr.to_string();
    let worker_status = status.clone();
    let handle = EngineHandle::from_worker(
        "wayfinder-engine-link",
        status.healthy.clone(),
        move |commands| run_worker(config, commands, &worker_status, first_tx),
    )
    .map_err(|e| ConnectError {
        addr: addr.clone(),
        reason: e.into(),
    })?;
    match first_rx.recv() {
        Ok(Ok(info)) => Ok((handle, info, status)),
        Ok(Err(reason)) => Err(ConnectError { addr, reason }),
        Err(_) => Err(ConnectError {
            addr,
            reason: LinkError::Stopped,
        }),
    }
}

fn run_worker(
    config: RemoteConfig,
    commands: Receiver<EngineCommand>,
    status: &RemoteStatus,
    first: std::sync::mpsc::Sender<Result<EngineInfo, LinkError>>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            let _ = first.send(Err(LinkError::Runtime(e)));
            return;
        }
    };
    // The handle's channel is a std one; a small thread bridges it into the runtime.
    let (tx, rx) = mpsc::unbounded_channel();
    let bridge = std::thread::Builder::new()
        .name("wayfinder-engine-cmds".into())
        .spawn(move || {
            for command in commands {
                if tx.send(command).is_err() {
                    break;
                }
            }
        });
    if let Err(e) = bridge {
        let _ = first.send(Err(LinkError::Bridge(e)));
        return;
    }
    runtime.block_on(Supervisor::new(config, rx, status).run(first));
}

enum SessionEnd {
    Shutdown,
    Lost(String),
}

struct Supervisor<'a> {
    config: RemoteConfig,
    commands: mpsc::UnboundedReceiver<EngineCommand>,
    status: &'a RemoteStatus,
    child: Option<Child>,
}

type Conn = (Reader<ReadHalf<Stream>>, Writer<WriteHalf<Stream>>);

impl<'a> Supervisor<'a> {
    fn new(
        config: RemoteConfig,
        commands: mpsc::UnboundedReceiver<EngineCommand>,
        status: &'a RemoteStatus,
    ) -> Self {
        Self {
            config,
            commands,
            status,
            child: None,
        }
    }

    async fn run(mut self, first: std::sync::mpsc::Sender<Result<EngineInfo, LinkError>>) {
        let mut first = Some(first);
        let mut backoff = Duration::from_millis(250);
        loop {
            let connected = match self.start_child() {
                Ok(()) => self.connect().await,
                Err(e) => Err(Some(e)),
            };
            match connected {
                Ok((conn, info)) => {
                    self.status.pid.store(info.pid, Ordering::Release);
                    self.status.healthy.store(true, Ordering::Release);
                    match first.take() {
                        Some(f) => {
                            let _ = f.send(Ok(info));
                        }
                        None => {
                            self.status.restarts.fetch_add(1, Ordering::AcqRel);
                            tracing::info!(pid = info.pid, engine = %self.config.addr, "engine core is back");
                        }
                    }
                    backoff = Duration::from_millis(250);
                    let end = self.session(conn).await;
                    self.status.healthy.store(false, Ordering::Release);
                    match end {
                        SessionEnd::Shutdown => break,
                        SessionEnd::Lost(why) => tracing::error!(
                            engine = %self.config.addr,
                            reason = %why,
                            "engine core lost; requests in flight end with 503; restarting"
                        ),
                    }
                }
                Err(None) => break,
                Err(Some(why)) => {
                    if let Some(f) = first.take() {
                        let _ = f.send(Err(why));
                        break;
                    }
                    tracing::warn!(engine = %self.config.addr, reason = %why, retry_in = ?backoff, "engine core unavailable");
                }
            }
            if !self.drain_for(backoff).await {
                break;
            }
            backoff = (backoff * 2).min(self.config.max_backoff);
        }
        self.stop_child().await;
    }

    /// (Re)starts the child, if this link owns one.
    fn start_child(&mut self) -> Result<(), LinkError> {
        let Some(spec) = &self.config.spawn else {
            return Ok(());
        };
        if let Some(mut old) = self.child.take() {
            let _ = old.start_kill();
        }
        let child = Command::new(&spec.program)
            .args(&spec.args)
            .envs(spec.envs.iter().map(|(k, v)| (k, v)))
            // The child exits when this pipe closes: when this process goes, however it goes.
            .stdin(Stdio::piped())
            // Its logs go to stderr, shared with this process; stdout carries nothing.
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| LinkError::Spawn {
                program: spec.program.clone(),
                source,
            })?;
        tracing::info!(pid = child.id().unwrap_or(0), "engine core process started");
        self.child = Some(child);
        Ok(())
    }

    /// Connects and shakes hands; `Err(None)` on shutdown.
    async fn connect(&mut self) -> Result<(Conn, EngineInfo), Option<LinkError>> {
        let deadline = Instant::now() + self.config.startup_timeout;
        loop {
            if let Some(child) = &mut self.child
                && let Ok(Some(exit)) = child.try_wait()
            {
                return Err(Some(LinkError::Exited(exit)));
            }
            let stream = match &self.config.tls {
                Some(tls) => self.config.addr.connect_tls(tls).await,
                None => self.config.addr.connect().await,
            };
            if let Ok(stream) = stream {
                return handshake(stream, &self.config.token).await.map_err(Some);
            }
            if Instant::now() > deadline {
                return Err(Some(LinkError::Unreachable(self.config.startup_timeout)));
            }
            if !self.drain_for(Duration::from_millis(50)).await {
                return Err(None);
            }
        }
    }

    /// Refuses commands for `wait` while there is no engine; false on shutdown.
    async fn drain_for(&mut self, wait: Duration) -> bool {
        let sleep = tokio::time::sleep(wait);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => return true,
                command = self.commands.recv() => match command {
                    None | Some(EngineCommand::Shutdown) => return false,
                    // Dropping the output channel ends the stream: the API answers 503.
                    Some(EngineCommand::Add { .. } | EngineCommand::Stats(_)) => {}
                    Some(
                        EngineCommand::Abort(_)
                        | EngineCommand::AbortById(_)
                        | EngineCommand::StopById(_),
                    ) => {}
                },
            }
        }
    }

    async fn session(&mut self, (mut reader, mut writer): Conn) -> SessionEnd {
        let mut outputs: HashMap<u64, mpsc::UnboundedSender<RequestOutput>> = HashMap::new();
        let mut stats: HashMap<u64, oneshot::Sender<EngineStats>> = HashMap::new();
        let mut next_tag = 0u64;
        let mut ping = tokio::time::interval(self.config.ping_interval);
        let mut last_heard = Instant::now();
        loop {
            let to_send = tokio::select! {
                command = self.commands.recv() => match command {
                    None | Some(EngineCommand::Shutdown) => return SessionEnd::Shutdown,
                    Some(EngineCommand::Add { seq, request, tx }) => {
                        outputs.insert(seq.0, tx);
                        ToEngine::Add { seq: seq.0, request: Box::new(WireRequest::from(&*request)) }
                    }
                    Some(EngineCommand::Abort(seq)) => {
                        outputs.remove(&seq.0);
                        ToEngine::Abort { seq: seq.0 }
                    }
                    Some(EngineCommand::AbortById(id)) => ToEngine::AbortById { id },
                    Some(EngineCommand::StopById(id)) => ToEngine::StopById { id },
                    Some(EngineCommand::Stats(reply)) => {
                        next_tag += 1;
                        stats.insert(next_tag, reply);
                        ToEngine::Stats { tag: next_tag }
                    }
                },
                message = reader.next::<FromEngine>() => {
                    last_heard = Instant::now();
                    match message {
                        None => return SessionEnd::Lost("the engine core closed the connection".into()),
                        Some(Err(e)) => return SessionEnd::Lost(e.to_string()),
                        Some(Ok(FromEngine::Output { seq, output })) => {
                            let last = matches!(output, RequestOutput::Finished(_));
                            if let Some(tx) = outputs.get(&seq) {
                                let _ = tx.send(output);
                            }
                            if last {
                                outputs.remove(&seq);
                            }
                            continue;
                        }
                        Some(Ok(FromEngine::Stats { tag, stats: s })) => {
                            if let Some(reply) = stats.remove(&tag) {
                                let _ = reply.send(s);
                            }
                            continue;
                        }
                        Some(Ok(_)) => continue,
                    }
                },
                _ = ping.tick() => {
                    if last_heard.elapsed() > self.config.ping_timeout {
                        return SessionEnd::Lost(format!(
                            "no answer for {:?}", self.config.ping_timeout
                        ));
                    }
                    next_tag += 1;
                    ToEngine::Ping { tag: next_tag }
                }
            };
            if let Err(e) = writer.send(&to_send).await {
                return SessionEnd::Lost(e.to_string());
            }
        }
    }

    /// Stops the child: SIGTERM (it flushes its spans), then a kill after a grace period.
    async fn stop_child(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
            // SAFETY: signalling our own child process.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        match tokio::time::timeout(Duration::from_secs(15), child.wait()).await {
            Ok(_) => tracing::info!("engine core process stopped"),
            Err(_) => {
                tracing::warn!("engine core process did not stop in 15 s; killing it");
                let _ = child.kill().await;
            }
        }
    }
}

/// The child's side of the lifetime contract: resolves when stdin reaches its end, which for an
/// engine core started by [`connect`] means the API process that holds the pipe is gone.
pub async fn stdin_closed() {
    let _ = tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
    })
    .await;
}

async fn handshake(stream: Stream, token: &SecretText) -> Result<(Conn, EngineInfo), LinkError> {
    let (read, write) = tokio::io::split(stream);
    let (mut reader, mut writer) = (Reader::new(read), Writer::new(write));
    writer
        .send(&ToEngine::Hello {
            version: PROTOCOL_VERSION,
            token: token.expose().to_owned(),
        })
        .await?;
    let answer = tokio::time::timeout(Duration::from_secs(30), reader.next::<FromEngine>())
        .await
        .map_err(|_| LinkError::NoAnswer)?;
    match answer {
        Some(Ok(FromEngine::Welcome { info, .. })) => Ok(((reader, writer), info)),
        Some(Ok(FromEngine::Refused { reason })) => Err(LinkError::Refused(reason)),
        Some(Ok(other)) => Err(LinkError::UnexpectedAnswer(format!("{other:?}"))),
        Some(Err(e)) => Err(e.into()),
        None => Err(LinkError::Closed),
    }
}

impl From<&wayfinder_core::EngineRequest> for WireRequest {
    fn from(r: &wayfinder_core::EngineRequest) -> Self {
        Self {
            id: r.id().to_owned(),
            prompt: r.prompt().to_vec(),
            sampling: r.sampling().clone(),
            stop: r.stop().clone(),
            priority: r.priority(),
            carrier: r.carrier().clone(),
            journey: r.wants_journey(),
            cache_salt: r.cache_salt().map(str::to_owned),
        }
    }
}
