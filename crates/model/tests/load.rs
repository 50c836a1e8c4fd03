//! The loader's errors on broken model folders, and sharded checkpoints, through the public API.

use std::path::{Path, PathBuf};

use wayfinder_core::scheduler::{Scheduler, SchedulerConfig};
use wayfinder_core::{Batch, EngineRequest, Executor, SeqId};
use wayfinder_model::arch::Architecture;
use wayfinder_model::synth::{SynthSpec, write_model};
use wayfinder_model::{Dtype, LoadOptions, ModelError, ModelExecutor};
use wayfinder_text::FileError;

// ---------------------------------------------------------------------------------------------
// Loader errors
// ---------------------------------------------------------------------------------------------

/// A tiny Llama written into a fresh temporary folder.
fn tiny_model(shard_bytes: Option<usize>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    write_model(
        dir.path(),
        &SynthSpec::tiny(Architecture::Llama),
        7,
        Dtype::F32,
        shard_bytes,
    )
    .expect("write model");
    dir
}

fn load_err(dir: &Path) -> ModelError {
    wayfinder_model::load(dir, &LoadOptions::default()).expect_err("loading should fail")
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read config"))
            .expect("config is JSON");
    edit(&mut config);
    std::fs::write(&path, config.to_string()).expect("write config");
}

fn remove(dir: &Path, name: &str) {
    std::fs::remove_file(dir.join(name)).expect("remove file");
}

fn assert_missing(err: &ModelError, file: &str) {
    let ModelError::File(FileError::Missing(path)) = err else {
        panic!("expected MissingFile({file}), got {err:?}");
    };
    assert_eq!(path.file_name().and_then(|n| n.to_str()), Some(file));
    assert!(err.to_string().contains(file), "message: {err}");
}

#[test]
fn the_intact_model_loads() {
    let dir = tiny_model(None);
    let model = wayfinder_model::load(dir.path(), &LoadOptions::default()).expect("load");
    assert_eq!(model.config.hidden_size, 64);
    assert_eq!(model.dtype, Dtype::F32);
}

#[test]
fn missing_config_is_named() {
    let dir = tiny_model(None);
    remove(dir.path(), "config.json");
    assert_missing(&load_err(dir.path()), "config.json");
}

#[test]
fn missing_tokenizer_is_named() {
    let dir = tiny_model(None);
    remove(dir.path(), "tokenizer.json");
    assert_missing(&load_err(dir.path()), "tokenizer.json");
}

#[test]
fn missing_weights_are_named() {
    let dir = tiny_model(None);
    remove(dir.path(), "model.safetensors");
    assert_missing(&load_err(dir.path()), "model.safetensors");
}

#[test]
fn a_missing_folder_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("no-such-model");
    let err = load_err(&missing);
    assert!(
        matches!(&err, ModelError::File(FileError::Missing(p)) if p == &missing),
        "{err:?}"
    );
    assert!(err.to_string().contains("no-such-model"), "message: {err}");
}

#[test]
fn an_unsupported_architecture_is_named() {
    let dir = tiny_model(None);
    edit_config(dir.path(), |c| {
        c["architectures"] = serde_json::json!(["GPT2LMHeadModel"]);
        c["model_type"] = serde_json::json!("gpt2");
    });
    let err = load_err(dir.path());
    assert!(matches!(err, ModelError::Unsupported(_)), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("GPT2LMHeadModel"), "message: {message}");
    assert!(message.contains("gpt2"), "message: {message}");
}

#[test]
fn a_config_that_disagrees_with_the_weights_names_tensor_and_file() {
    let dir = tiny_model(None);
    edit_config(dir.path(), |c| c["hidden_size"] = serde_json::json!(128));
    let err = load_err(dir.path());
    let ModelError::ShapeMismatch {
        name,
        file,
        expected,
        got,
    } = &err
    else {
        panic!("expected ShapeMismatch, got {err:?}");
    };
    assert!(
        name.starts_with("model.") || name.starts_with("lm_head"),
        "{name}"
    );
    assert_eq!(file, &dir.path().join("model.safetensors"));
    assert_ne!(expected, got);
    let message = err.to_string();
    assert!(message.contains(name.as_str()), "message: {message}");
    assert!(message.contains("model.safetensors"), "message: {message}");
}

#[test]
fn malformed_config_json_is_named() {
    let dir = tiny_model(None);
    std::fs::write(dir.path().join("config.json"), "{ \"hidden_size\": 64,").expect("write");
    let err = load_err(dir.path());
    assert!(
        matches!(&err, ModelError::File(FileError::Json { path, .. }) if path.ends_with("config.json")),
        "{err:?}"
    );
    assert!(err.to_string().contains("config.json"), "message: {err}");
}

#[test]
fn an_index_naming_a_missing_shard_is_named() {
    let dir = tiny_model(Some(20_000));
    let index_path = dir.path().join("model.safetensors.index.json");
    let mut index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&index_path).expect("read index"))
            .expect("index is JSON");
    index["weight_map"]["model.norm.weight"] =
        serde_json::json!("model-00099-of-00099.safetensors");
    std::fs::write(&index_path, index.to_string()).expect("write index");
    assert_missing(&load_err(dir.path()), "model-00099-of-00099.safetensors");
}

#[test]
fn a_deleted_shard_is_named() {
    let dir = tiny_model(Some(20_000));
    let shards = shard_files(dir.path());
    let victim = shards.last().expect("shards");
    std::fs::remove_file(victim).expect("remove shard");
    let name = victim
        .file_name()
        .and_then(|n| n.to_str())
        .expect("file name");
    assert_missing(&load_err(dir.path()), name);
}

fn shard_files(dir: &Path) -> Vec<PathBuf> {
    let mut shards: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("model-") && n.ends_with(".safetensors"))
        })
        .collect();
    shards.sort();
    shards
}

/// Prefill of a prompt then a few greedy decode steps; every logits row.
fn logits_of(dir: &Path, prompt: Vec<u32>) -> Vec<Vec<f32>> {
    let model = wayfinder_model::load(dir, &LoadOptions::default()).expect("load");
    let (block_size, num_blocks) = (4, 32);
    let mut executor = ModelExecutor::new(model.decoder, num_blocks, block_size);
    let mut scheduler = Scheduler::new(SchedulerConfig {
        max_num_seqs: 4,
        max_num_batched_tokens: 64,
        max_model_len: 64,
        block_size,
        num_blocks,
        ..SchedulerConfig::default()
    })
    .expect("scheduler config");
    let request = EngineRequest::builder("r1", prompt)
        .max_tokens(8)
        .build()
        .expect("valid request");
    scheduler.add(SeqId(1), request, 0.0);
    let mut batch = Batch::default();
    let mut rows = Vec::new();
    for _ in 0..4 {
        let out = scheduler.schedule(0.0);
        batch.fill(&out, &scheduler);
        let mut logits = executor.execute(&batch).expect("forward");
        scheduler.commit(&out);
        assert_eq!(logits.num_rows(), 1);
        let row = logits.row_mut(0);
        rows.push(row.to_vec());
        let next = wayfinder_core::sampling::argmax(row);
        scheduler.append_token(SeqId(1), next, &[], 0.0);
    }
    rows
}

#[test]
fn a_sharded_model_loads_and_computes_the_same_logits() {
    let single = tiny_model(None);
    let sharded = tiny_model(Some(20_000));
    assert!(!sharded.path().join("model.safetensors").exists());
    assert!(
        sharded
            .path()
            .join("model.safetensors.index.json")
            .is_file()
    );
    let shards = shard_files(sharded.path());
    assert!(shards.len() > 1, "{shards:?}");

    let prompt: Vec<u32> = (0..9).map(|i| (i * 31 + 5) % 290).collect();
    let want = logits_of(single.path(), prompt.clone());
    let got = logits_of(sharded.path(), prompt);
    assert_eq!(want.len(), got.len());
    for (step, (a, b)) in want.iter().zip(&got).enumerate() {
        let worst = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(worst <= 1e-6, "step {step}: max |Δ| = {worst}");
    }
}
