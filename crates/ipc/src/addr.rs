//! Where an engine core listens: `unix:/path/to.sock` (the local socket of
//! `serve --engine-process`) or `HOST:PORT` (TCP, for an engine core on another host).

use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

use crate::tls::{ClientTls, server_name};

/// Why a string is not an engine address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    /// `unix:` without a path.
    #[error("`unix:` needs a socket path")]
    EmptyUnixPath,
    /// Neither `unix:PATH` nor `HOST:PORT`.
    #[error("{0:?} is not an engine address: use HOST:PORT or unix:/path/to.sock")]
    Invalid(String),
}

/// An engine core's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineAddr {
    /// A Unix domain socket.
    Unix(PathBuf),
    /// TCP.
    Tcp(String),
}

impl EngineAddr {
    /// Parses `unix:PATH` or `HOST:PORT`.
    pub fn parse(s: &str) -> Result<Self, AddrError> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(AddrError::EmptyUnixPath);
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        match s.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(Self::Tcp(s.to_owned()))
            }
            _ => Err(AddrError::Invalid(s.to_owned())),
        }
    }

    /// Listens here (a stale socket file is replaced).
    pub async fn listen(&self) -> std::io::Result<Listener> {
        match self {
            Self::Unix(path) => {
                if path.exists() {
                    std::fs::remove_file(path)?;
                }
                Ok(Listener::Unix(UnixListener::bind(path)?))
            }
            Self::Tcp(addr) => Ok(Listener::Tcp(TcpListener::bind(addr).await?)),
        }
    }

    /// Connects here.
    pub async fn connect(&self) -> std::io::Result<Stream> {
        match self {
            Self::Unix(path) => Ok(Stream::Unix(UnixStream::connect(path).await?)),
            Self::Tcp(addr) => {
                let s = TcpStream::connect(addr).await?;
                s.set_nodelay(true)?;
                Ok(Stream::Tcp(s))
            }
        }
    }

    /// Connects here over TLS (TCP addresses; a Unix socket is local and stays plain).
    pub async fn connect_tls(&self, tls: &ClientTls) -> std::io::Result<Stream> {
        match (self, self.connect().await?) {
            (Self::Tcp(addr), Stream::Tcp(tcp)) => {
                let name = server_name(addr).map_err(std::io::Error::other)?;
                let tls = tls.connector().connect(name, tcp).await?;
                Ok(Stream::TlsClient(Box::new(tls)))
            }
            (_, plain) => Ok(plain),
        }
    }
}

impl std::fmt::Display for EngineAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
            Self::Tcp(a) => f.write_str(a),
        }
    }
}

/// A bound listener.
#[derive(Debug)]
pub enum Listener {
    /// Unix.
    Unix(UnixListener),
    /// TCP.
    Tcp(TcpListener),
}

impl Listener {
    /// The next connection.
    pub async fn accept(&self) -> std::io::Result<Stream> {
        match self {
            Self::Unix(l) => Ok(Stream::Unix(l.accept().await?.0)),
            Self::Tcp(l) => {
                let (s, _) = l.accept().await?;
                s.set_nodelay(true)?;
                Ok(Stream::Tcp(s))
            }
        }
    }

    /// Where it listens (for TCP, with the port the OS chose).
    pub fn local_addr(&self) -> std::io::Result<EngineAddr> {
        match self {
            Self::Unix(l) => {
                let addr = l.local_addr()?;
                let path = addr
                    .as_pathname()
                    .ok_or_else(|| std::io::Error::other("an unnamed Unix socket"))?;
                Ok(EngineAddr::Unix(path.to_path_buf()))
            }
            Self::Tcp(l) => Ok(EngineAddr::Tcp(l.local_addr()?.to_string())),
        }
    }
}

/// A connection.
#[derive(Debug)]
pub enum Stream {
    /// Unix.
    Unix(UnixStream),
    /// TCP.
    Tcp(TcpStream),
    /// TLS over TCP, the engine core's side.
    TlsServer(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// TLS over TCP, the API server's side.
    TlsClient(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Runs `$body` with `$s` bound to the pinned inner stream, whichever it is.
macro_rules! each_stream {
    ($self:expr, $s:ident => $body:expr) => {
        match $self.get_mut() {
            Stream::Unix($s) => {
                let $s = Pin::new($s);
                $body
            }
            Stream::Tcp($s) => {
                let $s = Pin::new($s);
                $body
            }
            Stream::TlsServer($s) => {
                let $s = Pin::new($s.as_mut());
                $body
            }
            Stream::TlsClient($s) => {
                let $s = Pin::new($s.as_mut());
                $body
            }
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        each_stream!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        each_stream!(self, s => s.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        each_stream!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        each_stream!(self, s => s.poll_shutdown(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse() {
        assert_eq!(
            EngineAddr::parse("unix:/tmp/e.sock"),
            Ok(EngineAddr::Unix("/tmp/e.sock".into()))
        );
        assert_eq!(
            EngineAddr::parse("127.0.0.1:9000"),
            Ok(EngineAddr::Tcp("127.0.0.1:9000".into()))
        );
        assert!(EngineAddr::parse("unix:").is_err());
        assert!(EngineAddr::parse("localhost").is_err());
        assert!(EngineAddr::parse("host:port").is_err());
    }
}
