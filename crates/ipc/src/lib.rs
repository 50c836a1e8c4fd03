//! # wayfinder-ipc
//!
//! The boundary between wayfinder's API server and an engine core in another process (on this
//! host over a Unix socket, or on another over TCP): a framed, versioned message protocol, the
//! engine core's server, and the API side's supervised client, which is just another
//! [`wayfinder_core::EngineHandle`] to the rest of the server.
//!
//! # Layout
//! - [`protocol`]: the messages (`Hello`/`Welcome`, `Add` with the W3C carrier, `Abort`,
//!   `Output`, `Stats`, `Ping`/`Pong`) and their length-delimited JSON frames.
//! - [`addr`]: `unix:PATH` and `HOST:PORT` addresses, listeners and streams.
//! - [`server`]: serve an engine to clients that know its token; each connection sees and
//!   aborts only its own requests, within a limit, and its disconnect aborts them.
//! - [`secret`]: the engine token (and the API key), compared in constant time.
//! - [`tls`]: TLS on TCP engine ports, with client certificates when asked (rustls).
//! - [`client`]: [`connect`] — start (and restart, with backoff) the engine-core child or reach
//!   a remote one, and route every request's outputs back to its stream.
//!
//! # Across the boundary
//! ```text
//! API process                                   engine-core process
//! EngineHandle ─EngineCommand─▶ link thread ═══ Add{seq, request+carrier} ══▶ serve_client
//!   RequestStream ◀─outputs── (routes by seq) ◀══ Output{seq, token|finished} ══ EngineHandle
//!   drop(stream) ─Abort(seq)─▶                ═══ Abort{seq} ═══════════════▶ drop its stream
//! ```

pub mod addr;
pub mod client;
pub mod protocol;
pub mod secret;
pub mod server;
pub mod tls;

pub use addr::{AddrError, EngineAddr, Listener};
pub use client::{
    ConnectError, LinkError, RemoteConfig, RemoteStatus, SpawnSpec, connect, stdin_closed,
};
pub use protocol::{EngineInfo, PROTOCOL_VERSION};
pub use secret::{Secret, SecretError, SecretText};
pub use server::{Access, serve};
pub use tls::{ClientTls, ServerTls, TlsError};
