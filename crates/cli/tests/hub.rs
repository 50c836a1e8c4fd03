//! Hugging Face Hub ids as `MODEL`, against a fake Hub on 127.0.0.1 (never the real one): the
//! real binary downloads a model into `$HF_HOME/hub/models--owner--name/snapshots/<commit>/`
//! and serves it, then serves it again from the cache with `HF_HUB_OFFLINE=1` and the server
//! gone; sharded weights, `--revision` (sent in the URL, and handed to an `engine-core` child),
//! a GGUF file alone, and the errors: an empty cache offline, a missing repo, Hub flags on a
//! local model.
//!
//! The fake Hub answers `GET/HEAD /{owner}/{name}/resolve/{revision}/{file}` the way the Hub
//! does for what hf-hub reads: `etag`, `x-repo-commit`, `content-length`, and `content-range`
//! on range requests (206); 404 for an unknown repo, revision or file.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

use common::serve_until_ready;

const MAIN_COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const V1_COMMIT: &str = "89abcdef0123456789abcdef0123456789abcdef";

/// One repo of the fake Hub: its revisions (name → commit) and files (the same at each).
#[derive(Clone)]
struct FakeRepo {
    revisions: HashMap<String, String>,
    files: BTreeMap<String, Vec<u8>>,
}

impl FakeRepo {
    /// `files` at `main` and at the tag `v1` (another commit).
    fn new(files: BTreeMap<String, Vec<u8>>) -> FakeRepo {
        let revisions = [
            ("main", MAIN_COMMIT),
            (MAIN_COMMIT, MAIN_COMMIT),
            ("v1", V1_COMMIT),
            (V1_COMMIT, V1_COMMIT),
        ]
        .into_iter()
        .map(|(r, c)| (r.to_owned(), c.to_owned()))
        .collect();
        FakeRepo { revisions, files }
    }
}

/// A fake Hub on a loopback port; it records every request line and stops when dropped.
struct FakeHub {
    endpoint: String,
    requests: Arc<Mutex<Vec<String>>>,
    listener: Option<std::thread::JoinHandle<()>>,
    addr: std::net::SocketAddr,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl FakeHub {
    fn start(repos: HashMap<String, FakeRepo>) -> FakeHub {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let repos = Arc::new(repos);
        let (log, flag) = (requests.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if flag.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (repos, log) = (repos.clone(), log.clone());
                std::thread::spawn(move || {
                    let _ = answer(stream, &repos, &log);
                });
            }
        });
        FakeHub {
            endpoint: format!("http://{addr}"),
            requests,
            listener: Some(thread),
            addr,
            stop,
        }
    }

    /// The request lines so far, `METHOD PATH`.
    fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("lock").clone()
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.listener.take() {
            let _ = t.join();
        }
    }
}

/// Answers one request on `stream` (and closes it).
fn answer(
    mut stream: TcpStream,
    repos: &HashMap<String, FakeRepo>,
    log: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("range")
        {
            range = Some(value.trim().to_owned());
        }
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    log.lock().expect("lock").push(format!("{method} {path}"));
    let found = path.split_once("/resolve/").and_then(|(repo, rest)| {
        let repo = repos.get(repo.trim_start_matches('/'))?;
        let (revision, file) = rest.split_once('/')?;
        let commit = repo.revisions.get(revision)?;
        Some((commit, repo.files.get(file)?))
    });
    let Some((commit, body)) = found else {
        let msg = b"Entry not found";
        write!(
            stream,
            "HTTP/1.1 404 Not Found\r\nx-error-code: EntryNotFound\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n",
            msg.len()
        )?;
        return stream.write_all(msg);
    };
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut hasher);
    let etag = format!("{:016x}{:08x}", hasher.finish(), body.len());
    let size = body.len();
    let (status, slice, content_range) = match range.as_deref().and_then(parse_range) {
        Some((start, _)) if start >= size => (
            "416 Range Not Satisfiable",
            &body[..0],
            format!("content-range: bytes */{size}\r\n"),
        ),
        Some((start, end)) => {
            let end = end.unwrap_or(size - 1).min(size - 1);
            (
                "206 Partial Content",
                &body[start..=end],
                format!("content-range: bytes {start}-{end}/{size}\r\n"),
            )
        }
        None => ("200 OK", &body[..], String::new()),
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\netag: \"{etag}\"\r\nx-repo-commit: {commit}\r\n{content_range}\
         content-length: {}\r\naccept-ranges: bytes\r\nconnection: close\r\n\r\n",
        slice.len()
    )?;
    if method != "HEAD" {
        stream.write_all(slice)?;
    }
    stream.flush()
}

/// `bytes=START-` or `bytes=START-END`.
fn parse_range(value: &str) -> Option<(usize, Option<usize>)> {
    let (start, end) = value.strip_prefix("bytes=")?.split_once('-')?;
    let end = if end.is_empty() {
        None
    } else {
        Some(end.parse().ok()?)
    };
    Some((start.parse().ok()?, end))
}

/// The files of the demo-shaped model `wayfinder make-model` writes, read once.
fn model_files() -> &'static BTreeMap<String, Vec<u8>> {
    static FILES: OnceLock<BTreeMap<String, Vec<u8>>> = OnceLock::new();
    FILES.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("model");
        let status = Command::new(env!("CARGO_BIN_EXE_wayfinder"))
            .args(["make-model", "--shape", "demo", "--out"])
            .arg(&out)
            .stdout(Stdio::null())
            .status()
            .expect("make-model runs");
        assert!(status.success());
        std::fs::read_dir(&out)
            .expect("model folder")
            .map(|e| {
                let e = e.expect("entry");
                let name = e.file_name().into_string().expect("utf-8 name");
                (name, std::fs::read(e.path()).expect("read"))
            })
            .collect()
    })
}

/// The demo model's files with its weights as one shard named by an index, and no
/// `tokenizer_config.json` or `generation_config.json`.
fn sharded_files() -> BTreeMap<String, Vec<u8>> {
    let mut files = model_files().clone();
    files.remove("tokenizer_config.json");
    files.remove("generation_config.json");
    let weights = files.remove("model.safetensors").expect("weights");
    let header_len = u64::from_le_bytes(weights[..8].try_into().expect("8 bytes"));
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&weights[8..8 + header_len as usize]).expect("header");
    let shard = "model-00001-of-00001.safetensors";
    let weight_map: serde_json::Map<String, serde_json::Value> = header
        .keys()
        .filter(|k| *k != "__metadata__")
        .map(|k| (k.clone(), shard.into()))
        .collect();
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    files.insert(
        "model.safetensors.index.json".to_owned(),
        serde_json::to_vec(&index).expect("json"),
    );
    files.insert(shard.to_owned(), weights);
    files
}

/// A `wayfinder` command with a clean Hub environment: `HF_HOME` is `home`, `HF_ENDPOINT`
/// is `endpoint`; no token, no proxy, offline only if asked.
fn wayfinder(home: &Path, endpoint: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wayfinder"));
    command
        .env("HF_HOME", home)
        .env("HF_ENDPOINT", endpoint)
        .env("WAYFINDER_CACHE", home.join("wayfinder"))
        .env("RUST_LOG", "info");
    for var in [
        "HF_TOKEN",
        "HF_HUB_CACHE",
        "HF_HUB_OFFLINE",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        command.env_remove(var);
    }
    command
}

/// Runs `command` to its end; its output.
fn run(command: &mut Command) -> Output {
    command
        .stdin(Stdio::null())
        .output()
        .expect("wayfinder runs")
}

/// `repo`'s snapshot folder for `commit` under `home`.
fn snapshot(home: &Path, repo: &str, commit: &str) -> PathBuf {
    home.join("hub")
        .join(format!("models--{}", repo.replace('/', "--")))
        .join("snapshots")
        .join(commit)
}

/// Asserts that `dir` holds exactly `files` (through the cache's links).
fn assert_snapshot_holds(dir: &Path, files: &BTreeMap<String, Vec<u8>>) {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .collect();
    names.sort();
    let expected: Vec<&String> = files.keys().collect();
    assert_eq!(names.iter().collect::<Vec<_>>(), expected);
    for (name, bytes) in files {
        assert!(
            std::fs::read(dir.join(name)).expect("cached file") == *bytes,
            "{name} differs"
        );
    }
}

#[test]
fn a_hub_id_is_downloaded_served_and_then_served_offline_from_the_cache() {
    let files = model_files().clone();
    let hub = FakeHub::start(HashMap::from([(
        "org/tiny".to_owned(),
        FakeRepo::new(files.clone()),
    )]));
    let home = tempfile::tempdir().expect("tempdir");
    let serve_args = ["serve", "org/tiny", "--port", "0", "--num-kv-blocks", "64"];

    let (server, folder) =
        serve_until_ready(wayfinder(home.path(), &hub.endpoint).args(serve_args));
    drop(server);
    let dir = snapshot(home.path(), "org/tiny", MAIN_COMMIT);
    assert_eq!(Path::new(&folder), dir);
    assert_snapshot_holds(&dir, &files);
    let refs = home.path().join("hub/models--org--tiny/refs/main");
    assert_eq!(
        std::fs::read_to_string(refs).expect("refs/main"),
        MAIN_COMMIT
    );
    let requests = hub.requests();
    assert!(
        requests.contains(&"GET /org/tiny/resolve/main/config.json".to_owned()),
        "{requests:?}"
    );

    // Offline, with the server gone: the cache alone.
    drop(hub);
    let (server, folder) = serve_until_ready(
        wayfinder(home.path(), "http://127.0.0.1:9")
            .env("HF_HUB_OFFLINE", "1")
            .args(serve_args),
    );
    drop(server);
    assert_eq!(Path::new(&folder), dir);
}

#[test]
fn a_sharded_model_at_a_revision_reaches_the_engine_core_child_too() {
    let files = sharded_files();
    let hub = FakeHub::start(HashMap::from([(
        "org/sharded".to_owned(),
        FakeRepo::new(files.clone()),
    )]));
    let home = tempfile::tempdir().expect("tempdir");
    let (server, folder) = serve_until_ready(wayfinder(home.path(), &hub.endpoint).args([
        "serve",
        "org/sharded",
        "--revision",
        "v1",
        "--engine-process",
        "--port",
        "0",
        "--num-kv-blocks",
        "64",
    ]));
    drop(server);
    let dir = snapshot(home.path(), "org/sharded", V1_COMMIT);
    assert_eq!(Path::new(&folder), dir);
    // The shard, and no optional file the repo lacks.
    assert_snapshot_holds(&dir, &files);
    let requests = hub.requests();
    // The revision is in the URL; the later files come from the commit it resolved to; and
    // the engine-core child got `--revision` too (or it would have asked for `main`).
    assert_eq!(
        requests.first().map(String::as_str),
        Some("GET /org/sharded/resolve/v1/config.json"),
        "{requests:?}"
    );
    assert!(
        requests.contains(&format!(
            "GET /org/sharded/resolve/{V1_COMMIT}/model-00001-of-00001.safetensors"
        )),
        "{requests:?}"
    );
    assert!(
        !requests.iter().any(|r| r.contains("/resolve/main/")),
        "{requests:?}"
    );
}

#[test]
fn a_gguf_file_is_downloaded_alone() {
    let gguf = b"GGUF, but not really: the loader must refuse it".to_vec();
    let mut files = model_files().clone();
    files.insert("quant/model-q8_0.gguf".to_owned(), gguf.clone());
    let hub = FakeHub::start(HashMap::from([(
        "org/gguf".to_owned(),
        FakeRepo::new(files),
    )]));
    let home = tempfile::tempdir().expect("tempdir");
    let cached = snapshot(home.path(), "org/gguf", MAIN_COMMIT).join("quant/model-q8_0.gguf");

    // `owner/name:FILE.gguf`: the file is fetched, then loading it fails (it is no GGUF).
    let out = run(wayfinder(home.path(), &hub.endpoint).args([
        "bench",
        "throughput",
        "--model",
        "org/gguf:quant/model-q8_0.gguf",
    ]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains(&cached.display().to_string()), "{stderr}");
    assert_eq!(std::fs::read(&cached).expect("cached gguf"), gguf);
    let requests = hub.requests();
    assert!(
        requests
            .iter()
            .all(|r| r.ends_with("/org/gguf/resolve/main/quant/model-q8_0.gguf")),
        "only the GGUF file is fetched: {requests:?}"
    );

    // `--gguf-file`, offline: the same file from the cache.
    let out = run(wayfinder(home.path(), "http://127.0.0.1:9")
        .env("HF_HUB_OFFLINE", "1")
        .args(["serve", "org/gguf", "--gguf-file", "quant/model-q8_0.gguf"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains(&cached.display().to_string()), "{stderr}");
}

#[test]
fn offline_with_an_empty_cache_names_the_repo_and_file() {
    let home = tempfile::tempdir().expect("tempdir");
    let out = run(wayfinder(home.path(), "http://127.0.0.1:9")
        .env("HF_HUB_OFFLINE", "1")
        .args(["bench", "throughput", "--model", "org/tiny"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    for needle in [
        "not a folder, file, `demo` or shape",
        "HF_HUB_OFFLINE",
        "config.json of org/tiny (revision main)",
    ] {
        assert!(stderr.contains(needle), "{needle:?} in {stderr}");
    }
}

#[test]
fn a_missing_repo_is_a_clear_error() {
    let hub = FakeHub::start(HashMap::new());
    let home = tempfile::tempdir().expect("tempdir");
    let out = run(wayfinder(home.path(), &hub.endpoint).args([
        "bench",
        "throughput",
        "--model",
        "org/missing",
    ]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    for needle in [
        "not a folder, file, `demo` or shape; as a Hugging Face Hub id",
        &format!("{}/org/missing/resolve/main/config.json", hub.endpoint),
        "404",
    ] {
        assert!(stderr.contains(needle), "{needle:?} in {stderr}");
    }
}

#[test]
fn hub_flags_on_a_local_model_and_unknown_names_are_errors() {
    let home = tempfile::tempdir().expect("tempdir");
    let out = run(wayfinder(home.path(), "http://127.0.0.1:9").args([
        "serve",
        "demo",
        "--revision",
        "v1",
    ]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--revision applies to Hugging Face Hub ids only"),
        "{stderr}"
    );

    let out = run(wayfinder(home.path(), "http://127.0.0.1:9").args([
        "bench",
        "throughput",
        "--model",
        "no-such-model",
    ]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("nor a Hugging Face Hub id"), "{stderr}");
}
