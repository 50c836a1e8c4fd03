//! GGUF files against the safetensors folders they were made from: the same logits from the same
//! weights (so the metadata, the tensor names and the Llama Q/K permutation are read right), the
//! quantized kernels against the same file dequantized at load, the tokenizer and template from
//! the metadata, and clear errors.

use std::path::Path;

use candle_core::Device;
use candle_core::quantized::gguf_file::{self, Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use wayfinder_core::scheduler::{Scheduler, SchedulerConfig};
use wayfinder_core::{Batch, EngineRequest, Executor, SeqId};
use wayfinder_model::arch::Architecture;
use wayfinder_model::kernels::QuantType;
use wayfinder_model::synth::gguf::write_gguf;
use wayfinder_model::synth::{SynthSpec, write_model};
use wayfinder_model::{Dtype, LoadOptions, Model, ModelError, ModelExecutor};

/// Logits of the last position of `prompt`, one prefill step.
fn logits(model: Model, prompt: &[u32]) -> Vec<f32> {
    let block_size = 4;
    let num_blocks = 32;
    let mut executor = ModelExecutor::new(model.decoder, num_blocks, block_size);
    let mut scheduler = Scheduler::new(SchedulerConfig {
        max_num_seqs: 4,
        max_num_batched_tokens: 256,
        max_model_len: 64,
        block_size,
        num_blocks,
        ..SchedulerConfig::default()
    })
    .expect("config");
    let req = EngineRequest::builder("r".to_owned(), prompt.to_vec())
        .max_tokens(1)
        .build()
        .expect("valid");
    scheduler.add(SeqId(1), req, 0.0);
    let out = scheduler.schedule(0.0);
    let mut batch = Batch::default();
    batch.fill(&out, &scheduler);
    let mut l = executor.execute(&batch).expect("forward");
    l.row_mut(0).to_vec()
}

fn load(path: &Path, dtype: Option<Dtype>) -> Model {
    wayfinder_model::load(
        path,
        &LoadOptions {
            dtype,
            max_model_len: Some(64),
        },
    )
    .unwrap_or_else(|e| panic!("load {}: {e}", path.display()))
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

const PROMPT: [u32; 11] = [5, 17, 200, 33, 4, 250, 77, 12, 9, 140, 60];

fn specs() -> Vec<SynthSpec> {
    let mut qwen3 = SynthSpec::tiny(Architecture::Qwen3);
    qwen3.head_dim = Some(32);
    let mut tied = SynthSpec::tiny(Architecture::Llama);
    tied.tie_word_embeddings = true;
    // Llama 3.1's rope scaling, which a GGUF file holds as `rope_freqs`.
    tied.rope_scaling = Some(serde_json::json!({
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 64
    }));
    vec![
        SynthSpec::tiny(Architecture::Llama),
        tied,
        SynthSpec::tiny(Architecture::Qwen2),
        qwen3,
    ]
}

#[test]
fn an_f32_gguf_computes_what_its_folder_computes() {
    for spec in specs() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_model(dir.path(), &spec, 3, Dtype::F32, None).expect("write");
        let file = dir.path().join("model.gguf");
        write_gguf(dir.path(), &file, QuantType::F32, None).expect("gguf");

        let from_folder = load(dir.path(), Some(Dtype::F32));
        let from_file = load(&file, None);
        assert_eq!(from_file.config.num_layers, spec.num_layers);
        assert_eq!(
            from_file.config.tie_word_embeddings,
            spec.tie_word_embeddings
        );
        assert_eq!(from_file.weight_type, "F32");
        let want = logits(from_folder, &PROMPT);
        let got = logits(from_file, &PROMPT);
        let worst = max_diff(&want, &got);
        assert!(worst < 1e-4, "{:?}: max |Δ| = {worst}", spec.architecture);
    }
}

#[test]
fn the_llama_qk_permutation_matters() {
    // Read as if Q and K were not permuted (halves rope), the file must compute something else:
    // the test above would not notice a loader that ignored the layout on a model where it does
    // not matter.
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = SynthSpec::tiny(Architecture::Llama);
    write_model(dir.path(), &spec, 3, Dtype::F32, None).expect("write");
    let file = dir.path().join("model.gguf");
    write_gguf(dir.path(), &file, QuantType::F32, None).expect("gguf");
    assert_eq!(
        load(&file, None).config.rope_layout,
        wayfinder_model::rope::RopeLayout::Interleaved
    );
    // The same tensors labelled qwen2 (whose files are not permuted) load with the halves
    // layout and no biases.
    let relabelled = dir.path().join("as-qwen2.gguf");
    rewrite(
        &file,
        &relabelled,
        |key, value| {
            if key == "general.architecture" {
                *value = Value::String("qwen2".into());
            }
        },
        |_, _| {},
    );
    let rekeyed = dir.path().join("as-qwen2-keys.gguf");
    rewrite_keys(&relabelled, &rekeyed, "llama.", "qwen2.");
    let wrong = load(&rekeyed, None);
    assert_eq!(
        wrong.config.rope_layout,
        wayfinder_model::rope::RopeLayout::Halves
    );
    let want = logits(load(dir.path(), Some(Dtype::F32)), &PROMPT);
    assert!(max_diff(&want, &logits(wrong, &PROMPT)) > 1e-3);
}

#[test]
fn quantized_kernels_match_the_same_file_dequantized_at_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = SynthSpec::tiny(Architecture::Llama);
    spec.hidden_size = 256;
    spec.intermediate_size = 512;
    spec.num_heads = 4;
    spec.num_kv_heads = 2;
    write_model(dir.path(), &spec, 5, Dtype::F32, None).expect("write");
    for (ty, emb) in [
        (QuantType::Q8_0, None),
        (QuantType::Q4_0, Some(QuantType::Q8_0)),
        (QuantType::Q4_1, Some(QuantType::Q8_0)),
        (QuantType::Q5_0, None),
        (QuantType::Q4K, Some(QuantType::Q6K)),
        (QuantType::Q5K, None),
        (QuantType::Q6K, None),
        (QuantType::F16, None),
        (QuantType::Bf16, None),
    ] {
        let file = dir.path().join(format!("model-{}.gguf", ty.name()));
        write_gguf(dir.path(), &file, ty, emb).expect("gguf");
        let quantized = load(&file, None);
        assert_eq!(quantized.weight_type, ty.name());
        let dequantized = load(&file, Some(Dtype::F32));
        assert_eq!(dequantized.weight_type, "f32");
        assert!(
            quantized.decoder.weight_bytes() < dequantized.decoder.weight_bytes(),
            "{ty:?} stays quantized"
        );
        let (a, b) = (logits(quantized, &PROMPT), logits(dequantized, &PROMPT));
        let worst = max_diff(&a, &b);
        // Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q5_K and Q6_K products may run on 8-bit activations
        // (VNNI), as in llama.cpp: close, not equal.
        let integer = matches!(
            ty,
            QuantType::Q4_0
                | QuantType::Q4_1
                | QuantType::Q5_0
                | QuantType::Q8_0
                | QuantType::Q4K
                | QuantType::Q5K
                | QuantType::Q6K
        );
        // bf16 weights may meet inputs rounded to bf16 (`vdpbf16ps`, as in llama.cpp): close
        // too, a little closer.
        let bf16_inputs = ty == QuantType::Bf16;
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let tolerance = if integer {
            0.03 * scale
        } else if bf16_inputs {
            0.01 * scale
        } else {
            1e-3
        };
        assert!(
            worst < tolerance,
            "{ty:?}: max |Δ| = {worst} (largest logit {scale})"
        );
        if integer || bf16_inputs {
            let argmax = |v: &[f32]| wayfinder_core::sampling::argmax(v);
            assert_eq!(argmax(&a), argmax(&b), "{ty:?}: the greedy token moved");
        }
    }
}

#[test]
fn text_comes_from_the_metadata() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_model(
        dir.path(),
        &SynthSpec::tiny(Architecture::Qwen2),
        3,
        Dtype::F32,
        None,
    )
    .expect("write");
    let file = dir.path().join("tiny-qwen.Q8_0.gguf");
    write_gguf(dir.path(), &file, QuantType::Q8_0, None).expect("gguf");
    let folder = wayfinder_model::load_text(dir.path()).expect("folder text");
    let gguf = wayfinder_model::load_text(&file).expect("gguf text");
    assert_eq!(gguf.name, "tiny-qwen.Q8_0");
    for text in [
        "hello world",
        "  two  spaces\nand 12345",
        "<|im_start|>user\nhi<|im_end|>",
    ] {
        assert_eq!(
            gguf.tokenizer.encode(text, true).expect("encode"),
            folder.tokenizer.encode(text, true).expect("encode"),
            "{text:?}"
        );
    }
    assert_eq!(
        gguf.eos_token_ids,
        vec![folder.tokenizer.token_to_id("<|im_end|>").expect("eos")]
    );
    let messages = [wayfinder_text::ChatMessage {
        role: "user".into(),
        content: "Hi".into(),
    }];
    assert_eq!(
        gguf.chat_template.render(&messages, true).expect("render"),
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn broken_files_are_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let not_gguf = dir.path().join("x.gguf");
    std::fs::write(&not_gguf, b"this is not a gguf file at all").expect("write");
    let err = wayfinder_model::load(&not_gguf, &LoadOptions::default()).expect_err("bad file");
    assert!(matches!(err, ModelError::Gguf { .. }), "{err}");
    assert!(err.to_string().contains("x.gguf"), "{err}");

    // A tensor type ggml uses only for activations is named, with the tensor.
    write_model(
        dir.path(),
        &SynthSpec::tiny(Architecture::Llama),
        3,
        Dtype::F32,
        None,
    )
    .expect("write");
    let f32_file = dir.path().join("f32.gguf");
    write_gguf(dir.path(), &f32_file, QuantType::F32, None).expect("gguf");
    let file = dir.path().join("q8_1.gguf");
    rewrite(
        &f32_file,
        &file,
        |_, _| {},
        |name, t| {
            if name == "blk.0.attn_q.weight" {
                let d = t.dequantize(&Device::Cpu).expect("dequantize");
                *t = QTensor::quantize(&d, GgmlDType::Q8_1).expect("quantize");
            }
        },
    );
    let err = wayfinder_model::load(&file, &LoadOptions::default()).expect_err("Q8_1");
    let msg = err.to_string();
    assert!(
        msg.contains("Q8_1") && msg.contains("blk.0.attn_q.weight"),
        "{msg}"
    );
}

/// Copies the GGUF file `from` to `to`, editing metadata values and tensors on the way.
fn rewrite(
    from: &Path,
    to: &Path,
    edit_meta: impl Fn(&str, &mut Value),
    edit_tensor: impl Fn(&str, &mut QTensor),
) {
    let mut reader = std::fs::File::open(from).expect("open");
    let mut content = Content::read(&mut reader).expect("read");
    for (k, v) in content.metadata.iter_mut() {
        edit_meta(k, v);
    }
    let mut tensors = Vec::new();
    for name in content.tensor_infos.keys() {
        let mut t = content
            .tensor(&mut reader, name, &Device::Cpu)
            .expect("tensor");
        edit_tensor(name, &mut t);
        tensors.push((name.clone(), t));
    }
    let meta: Vec<(&str, &Value)> = content
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut w = std::fs::File::create(to).expect("create");
    gguf_file::write(&mut w, &meta, &refs).expect("write");
}

/// Copies `from` to `to` with metadata keys starting `old` renamed to start `new`.
fn rewrite_keys(from: &Path, to: &Path, old: &str, new: &str) {
    let mut reader = std::fs::File::open(from).expect("open");
    let content = Content::read(&mut reader).expect("read");
    let meta: Vec<(String, &Value)> = content
        .metadata
        .iter()
        .map(|(k, v)| {
            (
                k.strip_prefix(old)
                    .map_or_else(|| k.clone(), |r| format!("{new}{r}")),
                v,
            )
        })
        .collect();
    let mut tensors = Vec::new();
    for name in content.tensor_infos.keys() {
        tensors.push((
            name.clone(),
            content
                .tensor(&mut reader, name, &Device::Cpu)
                .expect("tensor"),
        ));
    }
    let meta: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut w = std::fs::File::create(to).expect("create");
    gguf_file::write(&mut w, &meta, &refs).expect("write");
}
