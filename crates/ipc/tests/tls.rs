//! TLS on a TCP engine port: an API server trusting the engine's CA runs requests through it;
//! a plain-TCP peer gets nothing; with a client CA, only peers holding a certificate it signed
//! get in.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use support::TestEngine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wayfinder_core::{EngineHandle, EngineRequest, FinishStatus, RequestOutput, SamplingParams};
use wayfinder_ipc::{
    Access, ClientTls, EngineAddr, EngineInfo, RemoteConfig, Secret, SecretText, ServerTls,
};

const TOKEN: &str = "tls-test-token";

/// A CA, a server certificate for `localhost` and a client certificate, as PEM files in `dir`.
struct Pki {
    ca: PathBuf,
    server: (PathBuf, PathBuf),
    client: (PathBuf, PathBuf),
    /// A client certificate from another CA.
    stranger: (PathBuf, PathBuf),
}

fn write(dir: &Path, name: &str, pem: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pem).expect("written");
    path
}

fn ca() -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA")
}

fn leaf(
    dir: &Path,
    name: &str,
    san: &str,
    issuer: &CertifiedIssuer<'static, KeyPair>,
) -> (PathBuf, PathBuf) {
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec![san.to_owned()])
        .expect("params")
        .signed_by(&key, issuer)
        .expect("signed");
    (
        write(dir, &format!("{name}.pem"), &cert.pem()),
        write(dir, &format!("{name}.key"), &key.serialize_pem()),
    )
}

fn pki(dir: &Path) -> Pki {
    let (ours, theirs) = (ca(), ca());
    Pki {
        ca: write(dir, "ca.pem", &ours.pem()),
        server: leaf(dir, "server", "localhost", &ours),
        client: leaf(dir, "client", "api-server", &ours),
        stranger: leaf(dir, "stranger", "api-server", &theirs),
    }
}

fn engine() -> (EngineHandle, EngineInfo) {
    TestEngine {
        vocab_size: 64,
        num_blocks: 16,
        step_delay: std::time::Duration::ZERO,
    }
    .spawn()
}

/// Serves the engine with TLS on a free localhost port, on a runtime of its own thread.
fn serve(tls: ServerTls) -> (EngineHandle, String, std::sync::mpsc::Sender<()>) {
    let (engine, info) = engine();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let served = engine.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let listener = EngineAddr::Tcp("localhost:0".into())
                .listen()
                .await
                .expect("listen");
            let port = listener.local_addr().expect("addr").to_string();
            let port = port.rsplit_once(':').expect("port").1.to_owned();
            addr_tx.send(format!("localhost:{port}")).expect("sent");
            let access = Access {
                tls: Some(tls),
                ..Access::new(Secret::new(TOKEN).expect("token"))
            };
            tokio::spawn(wayfinder_ipc::serve(listener, served, info, access));
            let _ = tokio::task::spawn_blocking(move || stop_rx.recv()).await;
        });
    });
    let addr = addr_rx.recv().expect("the address");
    (engine, addr, stop_tx)
}

fn connect(addr: &str, tls: ClientTls) -> Result<EngineHandle, wayfinder_ipc::ConnectError> {
    let config = RemoteConfig {
        startup_timeout: Duration::from_secs(3),
        tls: Some(tls),
        ..RemoteConfig::new(
            EngineAddr::parse(addr).expect("address"),
            None,
            SecretText::new(TOKEN),
        )
    };
    wayfinder_ipc::connect(config).map(|(handle, _, _)| handle)
}

fn runs_a_request(engine: &EngineHandle) {
    let request = EngineRequest::builder("r", vec![1, 2, 3])
        .sampling(SamplingParams::greedy())
        .max_tokens(5)
        .build()
        .expect("valid");
    let mut stream = engine.add_request(request).expect("added");
    let mut tokens = 0;
    loop {
        match stream.blocking_next().expect("outputs") {
            RequestOutput::Token(_) => tokens += 1,
            RequestOutput::Finished(f) => {
                assert_eq!((tokens, f.status), (5, FinishStatus::Length));
                return;
            }
            RequestOutput::PromptLogprobs(_) => {}
        }
    }
}

#[test]
fn a_client_trusting_the_engines_ca_runs_requests_and_plain_tcp_gets_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki(dir.path());
    let tls = ServerTls::from_pem(&pki.server.0, &pki.server.1, None).expect("server TLS");
    let (engine, addr, stop) = serve(tls);

    let remote = connect(
        &addr,
        ClientTls::from_pem(&pki.ca, None).expect("client TLS"),
    )
    .expect("connects over TLS");
    runs_a_request(&remote);
    remote.shutdown();

    // Plain TCP speaking the protocol: the engine sees a bad TLS record and closes.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut plain = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        let hello = br#"{"Hello":{"version":3,"token":"tls-test-token"}}"#;
        let _ = plain.write_all(&(hello.len() as u32).to_be_bytes()).await;
        let _ = plain.write_all(hello).await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut answer)).await;
        assert!(
            !String::from_utf8_lossy(&answer).contains("Welcome"),
            "a plain peer must not be welcomed"
        );
    });
    assert!(engine.is_running());
    let _ = stop.send(());
    engine.shutdown();
}

#[test]
fn with_a_client_ca_only_certified_clients_get_in() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki(dir.path());
    let tls = ServerTls::from_pem(&pki.server.0, &pki.server.1, Some(&pki.ca)).expect("mTLS");
    let (engine, addr, stop) = serve(tls);

    let anonymous = ClientTls::from_pem(&pki.ca, None).expect("client TLS");
    assert!(
        connect(&addr, anonymous).is_err(),
        "no certificate, no entry"
    );
    let stranger =
        ClientTls::from_pem(&pki.ca, Some((&pki.stranger.0, &pki.stranger.1))).expect("client TLS");
    assert!(
        connect(&addr, stranger).is_err(),
        "a certificate of another CA"
    );
    let member =
        ClientTls::from_pem(&pki.ca, Some((&pki.client.0, &pki.client.1))).expect("client TLS");
    let remote = connect(&addr, member).expect("a certified client connects");
    runs_a_request(&remote);
    remote.shutdown();
    let _ = stop.send(());
    engine.shutdown();
}
