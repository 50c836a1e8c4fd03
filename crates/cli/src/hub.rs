//! Models from the Hugging Face Hub: `wayfinder serve HuggingFaceTB/SmolLM2-135M-Instruct`.
//!
//! A `MODEL` argument that is not a local path, `demo` or a shape name is tried as a Hub id
//! ([`HubModel::parse`]):
//!
//! - `owner/name`: a safetensors model folder. Fetched: `config.json` and `tokenizer.json`
//!   (required); `tokenizer_config.json` and `generation_config.json` when the repo has them;
//!   `model.safetensors`, or else `model.safetensors.index.json` and every shard its
//!   `weight_map` names. The result is the snapshot folder
//!   (`$HF_HOME/hub/models--owner--name/snapshots/<commit>/`), which the loader reads.
//! - `owner/name:FILE.gguf` (or `owner/name` with `--gguf-file FILE.gguf`): that GGUF file alone;
//!   the result is its path in the snapshot folder.
//!
//! Both parts of the id use `[A-Za-z0-9._-]` (no `..`); `FILE` may name a subfolder
//! (`Q4_K_M/model.gguf`). `--revision` picks a branch, tag or commit (default `main`); once
//! `config.json` has told which commit the revision is, the other files are fetched from that
//! commit, so that a branch moving mid-download cannot mix two snapshots.
//!
//! Files go into the standard Hugging Face cache, shared with the Python clients (`blobs/`,
//! `snapshots/<commit>/` links, `refs/<revision>`), through the blocking `hf-hub` client. A
//! file already in the snapshot is not downloaded again. A progress bar per file is drawn on
//! stderr when it is a terminal.
//!
//! The environment, read as the Hub's own clients read it ([`HubEnv::from_env`]):
//!
//! - `HF_ENDPOINT`: the server (default `https://huggingface.co`);
//! - `HF_HOME`: the cache is `$HF_HOME/hub` (default `$XDG_CACHE_HOME/huggingface`, else
//!   `~/.cache/huggingface`); `HF_HUB_CACHE` names the cache folder itself;
//! - `HF_TOKEN`: the bearer token for private and gated repos; else the token file
//!   `$HF_HOME/token` that `hf auth login` writes;
//! - `HF_HUB_OFFLINE=1` (or `true`, `yes`, `on`): no network at all; files come from the cache
//!   only, and a missing one is an error naming the repo, revision and file.

use std::io::IsTerminal;
use std::path::{Component, Path, PathBuf};

use anyhow::Context;
use hf_hub::api::sync::{Api, ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};

/// The revision fetched when `--revision` is not given.
pub(crate) const DEFAULT_REVISION: &str = "main";

/// The server when `HF_ENDPOINT` is not set.
const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Text files of a model folder that are fetched when the repo has them.
const OPTIONAL_FILES: [&str; 2] = ["tokenizer_config.json", "generation_config.json"];

/// The single weights file of an unsharded model.
const SINGLE_WEIGHTS: &str = "model.safetensors";

/// The index of a sharded model.
const WEIGHTS_INDEX: &str = "model.safetensors.index.json";

/// A model on the Hub, as named on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HubModel {
    /// The repo id, `owner/name`.
    pub(crate) repo: String,
    /// The GGUF file to fetch instead of the safetensors folder.
    pub(crate) gguf_file: Option<String>,
}

impl HubModel {
    /// Parses `owner/name` or `owner/name:FILE.gguf`; `None` when `s` is not such an id.
    pub(crate) fn parse(s: &str) -> Option<HubModel> {
        let (repo, file) = match s.split_once(':') {
            Some((repo, file)) => (repo, Some(file)),
            None => (s, None),
        };
        let (owner, name) = repo.split_once('/')?;
        if !is_id_part(owner) || !is_id_part(name) {
            return None;
        }
        if let Some(file) = file
            && !is_gguf_name(file)
        {
            return None;
        }
        Some(HubModel {
            repo: repo.to_owned(),
            gguf_file: file.map(str::to_owned),
        })
    }
}

/// One part of a repo id or file path: `[A-Za-z0-9._-]+`, and not `..`-bearing.
fn is_id_part(s: &str) -> bool {
    !s.is_empty()
        && !s.contains("..")
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// A relative path of id parts ending in `.gguf`.
pub(crate) fn is_gguf_name(s: &str) -> bool {
    s.to_ascii_lowercase().ends_with(".gguf") && s.split('/').all(is_id_part)
}

/// A branch, tag or commit: id parts joined by `/` (as in `refs/pr/1`).
fn is_revision(s: &str) -> bool {
    s.split('/').all(is_id_part)
}

/// Where files come from and go, from the Hub's environment variables.
#[derive(Debug, Clone)]
pub(crate) struct HubEnv {
    /// The server, without a trailing `/`.
    pub(crate) endpoint: String,
    /// The cache folder (`$HF_HOME/hub`).
    pub(crate) cache_dir: PathBuf,
    /// The bearer token.
    pub(crate) token: Option<String>,
    /// `HF_HUB_OFFLINE`: the cache only.
    pub(crate) offline: bool,
    /// Draw download progress bars.
    pub(crate) progress: bool,
}

impl HubEnv {
    /// Reads `HF_ENDPOINT`, `HF_HOME`, `HF_HUB_CACHE`, `HF_TOKEN` (else the token file) and
    /// `HF_HUB_OFFLINE`; progress bars when stderr is a terminal.
    pub(crate) fn from_env() -> anyhow::Result<HubEnv> {
        let env = HubEnv::from_vars(|key| std::env::var(key).ok())?;
        Ok(HubEnv {
            progress: std::io::stderr().is_terminal(),
            ..env
        })
    }

    /// The environment `var` describes (empty values count as unset); no progress bars.
    fn from_vars(var: impl Fn(&str) -> Option<String>) -> anyhow::Result<HubEnv> {
        let var = |key: &str| var(key).filter(|v| !v.trim().is_empty());
        let home = match var("HF_HOME") {
            Some(home) => PathBuf::from(home),
            None => var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| var("HOME").map(|h| Path::new(&h).join(".cache")))
                .context("no Hugging Face cache folder: set HF_HOME (or HOME)")?
                .join("huggingface"),
        };
        let cache_dir = var("HF_HUB_CACHE").map_or_else(|| home.join("hub"), PathBuf::from);
        let token = var("HF_TOKEN")
            .map(|t| t.trim().to_owned())
            .or_else(|| Cache::new(home.join("hub")).token());
        let endpoint = var("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned());
        Ok(HubEnv {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            cache_dir,
            token,
            offline: var("HF_HUB_OFFLINE").is_some_and(|v| is_truthy(&v)),
            progress: false,
        })
    }
}

/// `1`, `true`, `yes` or `on`, in any case: how the Hub's clients read boolean variables.
fn is_truthy(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "on"
    )
}

/// Fetches `model` at `revision` into the cache: the snapshot folder of a safetensors model,
/// or the path of its GGUF file.
pub(crate) fn fetch(model: &HubModel, revision: &str, env: &HubEnv) -> anyhow::Result<PathBuf> {
    anyhow::ensure!(
        is_revision(revision),
        "--revision {revision:?} is not a branch, tag or commit name"
    );
    let source = Source::new(env)?;
    let files = RepoFiles {
        source: &source,
        repo: &model.repo,
        revision: revision.to_owned(),
    };
    let cache = env.cache_dir.display();
    if env.offline {
        tracing::info!(
            repo = %model.repo,
            revision,
            %cache,
            "HF_HUB_OFFLINE: the Hugging Face cache only"
        );
    } else {
        let endpoint = &env.endpoint;
        tracing::info!(
            repo = %model.repo,
            revision,
            endpoint,
            %cache,
            "fetching from the Hugging Face Hub"
        );
    }
    match &model.gguf_file {
        Some(file) => files.required(file),
        None => fetch_folder(&files),
    }
}

/// The files of a safetensors model folder; returns the snapshot folder.
fn fetch_folder(files: &RepoFiles<'_>) -> anyhow::Result<PathBuf> {
    let config = files.required("config.json")?;
    let snapshot = config
        .parent()
        .context("the cached config.json has no parent folder")?
        .to_path_buf();
    let files = match snapshot.file_name().and_then(|c| c.to_str()) {
        Some(commit) => files.at(commit),
        None => files.at(&files.revision),
    };
    files.required("tokenizer.json")?;
    for file in OPTIONAL_FILES {
        files.optional(file)?;
    }
    if files.optional(SINGLE_WEIGHTS)?.is_none() {
        let index = files.optional(WEIGHTS_INDEX)?.with_context(|| {
            format!(
                "{} has neither {SINGLE_WEIGHTS} nor {WEIGHTS_INDEX} at revision {}",
                files.repo, files.revision
            )
        })?;
        for shard in shard_names(&index)? {
            files.required(&shard)?;
        }
    }
    Ok(snapshot)
}

/// The distinct shard files a `model.safetensors.index.json` names, checked to be plain
/// relative paths (the cache writes them under the snapshot folder).
fn shard_names(index: &Path) -> anyhow::Result<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: std::collections::BTreeMap<String, String>,
    }
    let text =
        std::fs::read_to_string(index).with_context(|| format!("reading {}", index.display()))?;
    let parsed: Index =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", index.display()))?;
    let shards: std::collections::BTreeSet<String> = parsed.weight_map.into_values().collect();
    for shard in &shards {
        let plain = Path::new(shard)
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
        anyhow::ensure!(
            plain && !shard.is_empty(),
            "{} names a shard outside the repo: {shard:?}",
            index.display()
        );
    }
    Ok(shards.into_iter().collect())
}

/// Where files come from: the Hub through the cache, or the cache alone.
enum Source {
    /// Download what the cache lacks (boxed: the client is large, and used once per file).
    Online { api: Box<Api>, endpoint: String },
    /// `HF_HUB_OFFLINE`: the cache only.
    Offline { cache: Cache },
}

impl Source {
    /// The source `env` describes.
    fn new(env: &HubEnv) -> anyhow::Result<Source> {
        let cache = Cache::new(env.cache_dir.clone());
        if env.offline {
            return Ok(Source::Offline { cache });
        }
        let api = ApiBuilder::from_cache(cache)
            .with_endpoint(env.endpoint.clone())
            .with_token(env.token.clone())
            .with_progress(env.progress)
            .with_user_agent("wayfinder", env!("CARGO_PKG_VERSION"))
            .build()
            .context("starting the Hugging Face Hub client")?;
        Ok(Source::Online {
            api: Box::new(api),
            endpoint: env.endpoint.clone(),
        })
    }
}

/// The files of one repo at one revision.
struct RepoFiles<'a> {
    source: &'a Source,
    repo: &'a str,
    revision: String,
}

impl RepoFiles<'_> {
    /// The same repo at another revision (the commit a branch or tag resolved to).
    fn at(&self, revision: &str) -> RepoFiles<'_> {
        RepoFiles {
            source: self.source,
            repo: self.repo,
            revision: revision.to_owned(),
        }
    }

    /// `file`'s path in the cache, downloaded first if needed; an error if the repo lacks it.
    fn required(&self, file: &str) -> anyhow::Result<PathBuf> {
        match self.source {
            Source::Online { api, endpoint } => {
                let url = format!("{endpoint}/{}/resolve/{}/{file}", self.repo, self.revision);
                self.download(api, endpoint, file).and_then(|path| {
                    path.with_context(|| {
                        format!(
                            "{url}: not found (404): no such repo, revision or file, \
                             or a private or gated repo (set HF_TOKEN)"
                        )
                    })
                })
            }
            Source::Offline { cache } => self.cached(cache, file).with_context(|| {
                format!(
                    "HF_HUB_OFFLINE is set and {file} of {} (revision {}) is not in the \
                     Hugging Face cache {}; unset HF_HUB_OFFLINE to download it",
                    self.repo,
                    self.revision,
                    cache.path().display()
                )
            }),
        }
    }

    /// `file`'s path in the cache, downloaded first if needed; `None` if the repo lacks it.
    fn optional(&self, file: &str) -> anyhow::Result<Option<PathBuf>> {
        match self.source {
            Source::Online { api, endpoint } => self.download(api, endpoint, file),
            Source::Offline { cache } => Ok(self.cached(cache, file)),
        }
    }

    /// Downloads `file` unless the cache has it; `None` on 404.
    fn download(
        &self,
        api: &Api,
        api_endpoint: &str,
        file: &str,
    ) -> anyhow::Result<Option<PathBuf>> {
        let repo =
            Repo::with_revision(self.repo.to_owned(), RepoType::Model, self.revision.clone());
        match api.repo(repo).get(file) {
            Ok(path) => Ok(Some(path)),
            Err(ApiError::RequestError(e)) if matches!(*e, ureq::Error::StatusCode(404)) => {
                Ok(None)
            }
            Err(e) => {
                let hint = match &e {
                    ApiError::RequestError(e)
                        if matches!(**e, ureq::Error::StatusCode(401 | 403)) =>
                    {
                        "; a private or gated repo needs HF_TOKEN, and gated ones accepted terms"
                    }
                    ApiError::RequestError(_) | ApiError::TooManyRetries(_) => {
                        "; to use the cache alone, set HF_HUB_OFFLINE=1"
                    }
                    _ => "",
                };
                Err(anyhow::Error::new(e).context(format!(
                    "downloading {file} of {} (revision {}) from {}{hint}",
                    self.repo, self.revision, api_endpoint
                )))
            }
        }
    }

    /// `file` in the cached snapshot of this revision, if there: the revision through
    /// `refs/<revision>`, or a commit's own snapshot folder.
    fn cached(&self, cache: &Cache, file: &str) -> Option<PathBuf> {
        let repo =
            Repo::with_revision(self.repo.to_owned(), RepoType::Model, self.revision.clone());
        let repo_dir = cache.path().join(repo.folder_name());
        let commit = std::fs::read_to_string(repo_dir.join("refs").join(&self.revision))
            .map(|c| c.trim().to_owned())
            .unwrap_or_else(|_| self.revision.clone());
        let path = cache.repo(repo).pointer_path(&commit).join(file);
        path.is_file().then_some(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Option<(String, Option<String>)> {
        HubModel::parse(s).map(|m| (m.repo, m.gguf_file))
    }

    #[test]
    fn repo_ids_parse() {
        assert_eq!(
            parse("HuggingFaceTB/SmolLM2-135M-Instruct"),
            Some(("HuggingFaceTB/SmolLM2-135M-Instruct".into(), None))
        );
        assert_eq!(
            parse("Qwen/Qwen2.5-0.5B-Instruct-GGUF:qwen2.5-0.5b-instruct-q8_0.gguf"),
            Some((
                "Qwen/Qwen2.5-0.5B-Instruct-GGUF".into(),
                Some("qwen2.5-0.5b-instruct-q8_0.gguf".into())
            ))
        );
        assert_eq!(
            parse("org/name:Q4_K_M/model.GGUF"),
            Some(("org/name".into(), Some("Q4_K_M/model.GGUF".into())))
        );
    }

    #[test]
    fn revisions_are_names_not_paths() {
        for ok in [
            "main",
            "v1.0",
            "refs/pr/1",
            "0123456789abcdef0123456789abcdef01234567",
        ] {
            assert!(is_revision(ok), "{ok:?}");
        }
        for bad in ["", "../x", "a//b", "/main", "main/", "a b", "a\\b"] {
            assert!(!is_revision(bad), "{bad:?}");
        }
    }

    #[test]
    fn non_ids_do_not_parse() {
        for s in [
            "demo",
            "smollm2-135m",
            "org/",
            "/name",
            "org/name/extra",
            "./org/name",
            "../org/name",
            "org/../name",
            "org/name:",
            "org/name:model.safetensors",
            "org/name:../model.gguf",
            "org/name:/model.gguf",
            "org/name:a:b.gguf",
            "org name/x",
            "org/näme",
            "/abs/path",
        ] {
            assert_eq!(parse(s), None, "{s:?}");
        }
    }

    fn env_of(vars: &[(&str, &str)]) -> HubEnv {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        HubEnv::from_vars(|key| vars.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()))
            .expect("ok")
    }

    #[test]
    fn environment_is_read_like_the_hub_clients() {
        let env = env_of(&[("HOME", "/home/u")]);
        assert_eq!(env.endpoint, "https://huggingface.co");
        assert_eq!(env.cache_dir, Path::new("/home/u/.cache/huggingface/hub"));
        assert!(!env.offline);

        let env = env_of(&[
            ("HOME", "/home/u"),
            ("XDG_CACHE_HOME", "/xdg"),
            ("HF_ENDPOINT", "http://127.0.0.1:9/"),
            ("HF_TOKEN", "hf_abc\n"),
            ("HF_HUB_OFFLINE", "True"),
        ]);
        assert_eq!(env.endpoint, "http://127.0.0.1:9");
        assert_eq!(env.cache_dir, Path::new("/xdg/huggingface/hub"));
        assert_eq!(env.token.as_deref(), Some("hf_abc"));
        assert!(env.offline);

        let env = env_of(&[("HF_HOME", "/hf"), ("HF_HUB_OFFLINE", "0")]);
        assert_eq!(env.cache_dir, Path::new("/hf/hub"));
        assert!(!env.offline);
        let env = env_of(&[("HF_HOME", "/hf"), ("HF_HUB_CACHE", "/elsewhere")]);
        assert_eq!(env.cache_dir, Path::new("/elsewhere"));
    }

    #[test]
    fn the_token_file_is_read_when_hf_token_is_unset() {
        let home = tempfile::tempdir().expect("ok");
        std::fs::write(home.path().join("token"), "hf_from_file\n").expect("ok");
        let home_str = home.path().to_str().expect("ok");
        assert_eq!(
            env_of(&[("HF_HOME", home_str)]).token.as_deref(),
            Some("hf_from_file")
        );
        assert_eq!(
            env_of(&[("HF_HOME", home_str), ("HF_TOKEN", "hf_env")])
                .token
                .as_deref(),
            Some("hf_env")
        );
    }

    #[test]
    fn shards_outside_the_repo_are_refused() {
        let dir = tempfile::tempdir().expect("ok");
        let index = dir.path().join(WEIGHTS_INDEX);
        std::fs::write(
            &index,
            r#"{"weight_map": {"a": "s-1.safetensors", "b": "s-2.safetensors", "c": "s-1.safetensors"}}"#,
        )
        .expect("ok");
        assert_eq!(
            shard_names(&index).expect("ok"),
            ["s-1.safetensors", "s-2.safetensors"]
        );
        std::fs::write(&index, r#"{"weight_map": {"a": "../x.safetensors"}}"#).expect("ok");
        assert!(shard_names(&index).is_err());
    }

    #[test]
    fn offline_lookup_follows_refs_and_commit_folders() {
        let dir = tempfile::tempdir().expect("ok");
        let repo_dir = dir.path().join("models--org--name");
        let snapshot = repo_dir.join("snapshots").join("abc123");
        std::fs::create_dir_all(&snapshot).expect("ok");
        std::fs::create_dir_all(repo_dir.join("refs")).expect("ok");
        std::fs::write(repo_dir.join("refs").join("main"), "abc123").expect("ok");
        std::fs::write(snapshot.join("config.json"), "{}").expect("ok");
        let source = Source::Offline {
            cache: Cache::new(dir.path().to_path_buf()),
        };
        let files = |revision: &str| RepoFiles {
            source: &source,
            repo: "org/name",
            revision: revision.to_owned(),
        };
        assert_eq!(
            files("main").required("config.json").expect("ok"),
            snapshot.join("config.json")
        );
        assert_eq!(
            files("abc123").optional("config.json").expect("ok"),
            Some(snapshot.join("config.json"))
        );
        assert_eq!(files("main").optional("tokenizer.json").expect("ok"), None);
        let err = format!(
            "{:#}",
            files("v2").required("config.json").expect_err("fails")
        );
        assert!(
            err.contains("HF_HUB_OFFLINE") && err.contains("org/name") && err.contains("v2"),
            "{err}"
        );
    }
}
