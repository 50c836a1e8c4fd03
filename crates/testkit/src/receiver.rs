//! A small OTLP trace receiver on loopback — gRPC (`TraceService`) and HTTP/protobuf
//! (`POST /v1/traces`), plain or over TLS with a self-signed certificate, gzip bodies accepted
//! — that keeps every span it receives. For tests that check what really goes over the wire,
//! and for the tracing-overhead benchmark. Runs on the caller's Tokio runtime.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::receiver_count::CountingService;

/// One received span with its resource and scope.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// The resource's attributes.
    pub resource: Vec<KeyValue>,
    /// The instrumentation scope's name.
    pub scope: String,
    /// The span.
    pub span: Span,
    /// `grpc` or `http`.
    pub transport: &'static str,
    /// Whether the export that brought it was gzip-compressed.
    pub gzip: bool,
}

impl ReceivedSpan {
    /// The span's name.
    pub fn name(&self) -> &str {
        &self.span.name
    }
    /// The trace id in hex.
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }
    /// The span id in hex.
    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }
    /// The parent span id in hex (empty for a root).
    pub fn parent_span_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }
    /// A span attribute.
    pub fn attribute(&self, key: &str) -> Option<&Value> {
        find(&self.span.attributes, key)
    }
    /// A resource attribute.
    pub fn resource_attribute(&self, key: &str) -> Option<&Value> {
        find(&self.resource, key)
    }
    /// The names of the span's events, in order.
    pub fn event_names(&self) -> Vec<&str> {
        self.span.events.iter().map(|e| e.name.as_str()).collect()
    }
}

fn find<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v: &AnyValue| v.value.as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the receiver keeps: every span, or (for benchmarks) only their number.
#[derive(Debug, Default)]
struct Kept {
    spans: Mutex<Vec<ReceivedSpan>>,
    count_only: bool,
    /// Answer every export with an error (a collector that is overloaded) and keep nothing.
    refuse: bool,
    count: Arc<std::sync::atomic::AtomicUsize>,
}

type Store = Arc<Kept>;

fn keep(store: &Store, request: ExportTraceServiceRequest, transport: &'static str, gzip: bool) {
    let mut spans = store.spans.lock().unwrap_or_else(|e| e.into_inner());
    for rs in request.resource_spans {
        let resource = rs.resource.map(|r| r.attributes).unwrap_or_default();
        for ss in rs.scope_spans {
            let scope = ss.scope.map(|s| s.name).unwrap_or_default();
            for span in ss.spans {
                spans.push(ReceivedSpan {
                    resource: resource.clone(),
                    scope: scope.clone(),
                    span,
                    transport,
                    gzip,
                });
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Grpc(Store);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        if self.0.refuse {
            return Err(tonic::Status::resource_exhausted("the collector is full"));
        }
        let gzip = request
            .metadata()
            .get("grpc-encoding")
            .is_some_and(|v| v == "gzip");
        keep(&self.0, request.into_inner(), "grpc", gzip);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

async fn http_export(
    State(store): State<Store>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, Vec<u8>) {
    let gzip = headers.get("content-encoding").is_some_and(|v| v == "gzip");
    let body = if gzip {
        let mut plain = Vec::new();
        let mut decoder = flate2::read::GzDecoder::new(&body[..]);
        if std::io::Read::read_to_end(&mut decoder, &mut plain).is_err() {
            return (StatusCode::BAD_REQUEST, Vec::new());
        }
        Bytes::from(plain)
    } else {
        body
    };
    if store.refuse {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            b"the collector is full".to_vec(),
        );
    }
    if store.count_only {
        return match crate::receiver_count::count_spans(&body) {
            Ok(n) => {
                store
                    .count
                    .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                // An empty ExportTraceServiceResponse.
                (StatusCode::OK, Vec::new())
            }
            Err(_) => (StatusCode::BAD_REQUEST, Vec::new()),
        };
    }
    match ExportTraceServiceRequest::decode(body) {
        Ok(request) => {
            keep(&store, request, "http", gzip);
            let response = ExportTraceServiceResponse {
                partial_success: None,
            };
            (StatusCode::OK, response.encode_to_vec())
        }
        Err(_) => (StatusCode::BAD_REQUEST, Vec::new()),
    }
}

/// The receiver; stops serving when dropped.
#[derive(Debug)]
pub struct OtlpReceiver {
    grpc: SocketAddr,
    http: SocketAddr,
    store: Store,
    tasks: Vec<JoinHandle<()>>,
    /// The PEM of its self-signed certificate, when it serves TLS.
    certificate: Option<String>,
}

/// A self-signed certificate for `localhost`, and its key, in PEM.
#[derive(Debug)]
struct SelfSigned {
    cert: String,
    key: String,
}

impl SelfSigned {
    fn new() -> std::io::Result<Self> {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .map_err(std::io::Error::other)?;
        Ok(Self {
            cert: made.cert.pem(),
            key: made.signing_key.serialize_pem(),
        })
    }

    /// The HTTP side's TLS acceptor (aws-lc-rs; HTTP/2 and HTTP/1.1 offered).
    fn acceptor(&self) -> std::io::Result<tokio_rustls::TlsAcceptor> {
        use tokio_rustls::rustls;
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

        let cert =
            CertificateDer::from_pem_slice(self.cert.as_bytes()).map_err(std::io::Error::other)?;
        let key =
            PrivateKeyDer::from_pem_slice(self.key.as_bytes()).map_err(std::io::Error::other)?;
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(std::io::Error::other)?
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .map_err(std::io::Error::other)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)))
    }
}

/// Serves `app` over TLS on `listener`, one task per connection.
async fn serve_https(
    listener: TcpListener,
    app: axum::Router,
    acceptor: tokio_rustls::TlsAcceptor,
) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
        });
    }
}

impl OtlpReceiver {
    /// Starts both transports on loopback ports chosen by the OS.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_with(Store::default(), None).await
    }

    /// Both transports over TLS, with a self-signed certificate for `localhost`
    /// ([`OtlpReceiver::certificate`]): a client must be told to trust it.
    pub async fn start_tls() -> std::io::Result<Self> {
        Self::start_with(Store::default(), Some(SelfSigned::new()?)).await
    }

    /// The PEM certificate a TLS receiver serves (`None` for a plain one).
    pub fn certificate(&self) -> Option<&str> {
        self.certificate.as_deref()
    }

    /// The same, keeping only the number of spans received, counted without decoding the
    /// spans (for benchmarks: see `receiver_count.rs`).
    pub async fn start_counting() -> std::io::Result<Self> {
        Self::start_with(
            Arc::new(Kept {
                count_only: true,
                ..Kept::default()
            }),
            None,
        )
        .await
    }

    /// A receiver that answers every export with an error — gRPC `RESOURCE_EXHAUSTED`,
    /// HTTP 503 — and keeps nothing.
    pub async fn start_refusing() -> std::io::Result<Self> {
        Self::start_with(
            Arc::new(Kept {
                refuse: true,
                ..Kept::default()
            }),
            None,
        )
        .await
    }

    async fn start_with(store: Store, tls: Option<SelfSigned>) -> std::io::Result<Self> {
        let grpc_listener = TcpListener::bind("127.0.0.1:0").await?;
        let http_listener = TcpListener::bind("127.0.0.1:0").await?;
        let (grpc, http) = (grpc_listener.local_addr()?, http_listener.local_addr()?);
        // TCP_NODELAY, as collectors set it: without it the answer's last frames can wait
        // for the client's delayed ACK (tens of ms an export; the benchmark's span queue
        // then overflows now and then).
        let incoming =
            tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true));
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = &tls {
            // tonic's server TLS takes rustls's process-wide provider, which rustls cannot pick
            // when the build has both aws-lc-rs and ring (ureq's); ours is aws-lc-rs. An error
            // means one is installed already.
            let _ = tokio_rustls::rustls::crypto::aws_lc_rs::default_provider().install_default();
            let identity = tonic::transport::Identity::from_pem(&tls.cert, &tls.key);
            builder = builder
                .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                .map_err(std::io::Error::other)?;
        }
        let router = if store.count_only {
            builder.add_service(CountingService {
                count: store.count.clone(),
            })
        } else {
            builder.add_service(
                TraceServiceServer::new(Grpc(store.clone()))
                    .accept_compressed(tonic::codec::CompressionEncoding::Gzip),
            )
        };
        let grpc_task = tokio::spawn(async move {
            let _ = router.serve_with_incoming(incoming).await;
        });
        let app = axum::Router::new()
            .route("/v1/traces", post(http_export))
            // Batches of big spans run past axum's default 2 MB.
            .layer(axum::extract::DefaultBodyLimit::max(64 << 20))
            .with_state(store.clone());
        let http_task = match &tls {
            Some(tls) => tokio::spawn(serve_https(http_listener, app, tls.acceptor()?)),
            None => {
                let http_listener = axum::serve::ListenerExt::tap_io(http_listener, |stream| {
                    let _ = stream.set_nodelay(true);
                });
                tokio::spawn(async move {
                    let _ = axum::serve(http_listener, app).await;
                })
            }
        };
        Ok(Self {
            grpc,
            http,
            store,
            tasks: vec![grpc_task, http_task],
            certificate: tls.map(|t| t.cert),
        })
    }

    /// The gRPC endpoint, `http://127.0.0.1:PORT` (`https://localhost:PORT` over TLS, the
    /// name its certificate is for).
    pub fn grpc_endpoint(&self) -> String {
        match self.certificate {
            Some(_) => format!("https://localhost:{}", self.grpc.port()),
            None => format!("http://{}", self.grpc),
        }
    }

    /// The HTTP endpoint, `http://127.0.0.1:PORT/v1/traces` (`https://localhost:PORT/…` over
    /// TLS).
    pub fn http_endpoint(&self) -> String {
        match self.certificate {
            Some(_) => format!("https://localhost:{}/v1/traces", self.http.port()),
            None => format!("http://{}/v1/traces", self.http),
        }
    }

    /// Every span received so far (none when only counting).
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.store
            .spans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How many spans were received so far.
    pub fn num_spans(&self) -> usize {
        if self.store.count_only {
            return self.store.count.load(std::sync::atomic::Ordering::Relaxed);
        }
        self.store
            .spans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Waits (up to `timeout`) until at least `n` spans have arrived; returns all received.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<ReceivedSpan> {
        let deadline = Instant::now() + timeout;
        while self.num_spans() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.spans()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
