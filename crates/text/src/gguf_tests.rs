//! Tests of the GGUF tokenizer: round trips against the tokenizer it was exported from, the
//! pre-tokenizers' splits, SentencePiece merges and byte fallback, and `ModelText::from_gguf`.

use super::*;
use crate::chat_template::ChatMessage;
use crate::synth::{CHATML_TEMPLATE, SPECIAL_TOKENS, train_tokenizer};

/// Texts the byte-level round trip is checked on.
const SAMPLES: &[&str] = &[
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "numbers 12345 and 7, 42.5",
    "several    spaces   here  ",
    "line one\nline two\n\n  indented\ttab",
    "héllo wörld 日本語 🚀",
    "it's they're I'll we've",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "",
    " leading space",
];

/// The merges of a trained BPE tokenizer, as GGUF stores them.
fn exported_merges(tokenizer: &tokenizers::Tokenizer) -> Vec<String> {
    let json: serde_json::Value =
        serde_json::from_str(&tokenizer.to_string(false).expect("serialises")).expect("valid JSON");
    json["model"]["merges"]
        .as_array()
        .expect("a BPE model has merges")
        .iter()
        .map(|m| match m {
            serde_json::Value::String(s) => s.clone(),
            pair => format!(
                "{} {}",
                pair[0].as_str().expect("merge parts are strings"),
                pair[1].as_str().expect("merge parts are strings")
            ),
        })
        .collect()
}

/// The synthetic tokenizer and its GGUF metadata.
fn synth_gguf(pre: &str) -> (tokenizers::Tokenizer, GgufTokenizerData) {
    let original = train_tokenizer(400).expect("the synthetic tokenizer trains");
    let size = original.get_vocab_size(true);
    let tokens: Vec<String> = (0..size as u32)
        .map(|id| original.id_to_token(id).expect("every id has a token"))
        .collect();
    let token_types = tokens
        .iter()
        .map(|t| {
            if SPECIAL_TOKENS.contains(&t.as_str()) {
                3
            } else {
                1
            }
        })
        .collect();
    let id = |t: &str| original.token_to_id(t);
    let data = GgufTokenizerData {
        model: "gpt2".to_owned(),
        pre: Some(pre.to_owned()),
        merges: exported_merges(&original),
        tokens,
        token_types,
        bos_token_id: id("<|endoftext|>"),
        eos_token_id: id("<|im_end|>"),
        eot_token_id: id("<|endoftext|>"),
        ..GgufTokenizerData::default()
    };
    (original, data)
}

/// The synthetic tokenizer was trained with GPT-2's regex, so with the `gpt2` type it is
/// rebuilt exactly; `smollm` differs only in splitting digits one by one.
#[test]
fn gpt2_matches_the_original_tokenizer() {
    for pre in ["gpt2", "smollm"] {
        let (original, data) = synth_gguf(pre);
        let rebuilt = tokenizer_from_gguf(&data).expect("the tokenizer builds");
        let samples = SAMPLES
            .iter()
            .filter(|t| pre == "gpt2" || !t.contains(|c: char| c.is_ascii_digit()));
        for text in samples {
            let want = original.encode(*text, true).expect("encodes");
            let got = rebuilt.encode(*text, true).expect("encodes");
            assert_eq!(got.get_ids(), want.get_ids(), "{pre}: {text:?}");
            for skip in [false, true] {
                assert_eq!(
                    rebuilt.decode(got.get_ids(), skip).expect("decodes"),
                    original.decode(want.get_ids(), skip).expect("decodes"),
                    "{pre}: {text:?}"
                );
            }
            assert_eq!(
                rebuilt.decode(got.get_ids(), false).expect("decodes"),
                *text
            );
        }
    }
}

#[test]
fn gpt2_special_tokens_are_whole_and_skippable() {
    let (original, data) = synth_gguf("default");
    let rebuilt = tokenizer_from_gguf(&data).expect("the tokenizer builds");
    let start = original
        .token_to_id("<|im_start|>")
        .expect("the token is in the vocabulary");
    let ids = rebuilt.encode("<|im_start|>hi", false).expect("encodes");
    assert_eq!(ids.get_ids()[0], start);
    assert_eq!(rebuilt.decode(ids.get_ids(), true).expect("decodes"), "hi");
}

#[test]
fn smollm_splits_digits_one_by_one() {
    let (_, data) = synth_gguf("smollm");
    let rebuilt = tokenizer_from_gguf(&data).expect("the tokenizer builds");
    let ids = rebuilt.encode("12345", false).expect("encodes");
    assert_eq!(ids.get_tokens(), ["1", "2", "3", "4", "5"]);
}

#[test]
fn every_supported_pre_type_builds() {
    for (name, _) in PRE_NAMES {
        let (_, data) = synth_gguf(name);
        let tokenizer = tokenizer_from_gguf(&data).unwrap_or_else(|e| panic!("{name}: {e}"));
        for text in SAMPLES {
            let ids = tokenizer.encode(*text, false).expect("encodes");
            assert_eq!(
                tokenizer.decode(ids.get_ids(), false).expect("decodes"),
                *text
            );
        }
    }
    let (_, mut data) = synth_gguf("gpt2");
    data.pre = None;
    assert!(tokenizer_from_gguf(&data).is_ok());
}

/// The pre-tokens of `text` under the `pre` type (byte-level: `Ġ` is a space, `Ċ` a newline).
fn pieces(pre: &str, text: &str) -> Vec<String> {
    use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};
    let pre_tokenizer =
        byte_level_pre_tokenizer(PreType::parse(Some(pre)).expect("a supported type"))
            .expect("builds the pre-tokenizer");
    let mut split = PreTokenizedString::from(text);
    pre_tokenizer
        .pre_tokenize(&mut split)
        .expect("pre-tokenizes");
    split
        .get_splits(OffsetReferential::Original, OffsetType::Byte)
        .into_iter()
        .map(|(piece, _, _)| piece.to_owned())
        .collect()
}

#[test]
fn pre_types_split_as_llama_cpp() {
    assert_eq!(
        pieces("llama-bpe", "Hello  world 12345!!\n\nok"),
        ["Hello", "Ġ", "Ġworld", "Ġ", "123", "45", "!!ĊĊ", "ok"]
    );
    assert_eq!(
        pieces("qwen2", "It's 12345"),
        ["It", "'s", "Ġ", "1", "2", "3", "4", "5"]
    );
    assert_eq!(
        pieces("default", "Hello, world 12345!"),
        ["Hello", ",", "Ġworld", "Ġ", "123", "45", "!"]
    );
    assert_eq!(pieces("smollm", "a 12"), ["a", "Ġ", "1", "2"]);
    assert_eq!(pieces("gpt2", "a  b 12\n"), ["a", "Ġ", "Ġb", "Ġ12", "Ċ"]);
}

#[test]
fn unknown_pre_type_and_model_are_errors() {
    let (_, mut data) = synth_gguf("gpt2");
    data.pre = Some("no-such-pre".to_owned());
    let e = tokenizer_from_gguf(&data)
        .expect_err("is rejected")
        .to_string();
    assert!(e.contains("no-such-pre") && e.contains("llama-bpe"), "{e}");
    data.model = "bert".to_owned();
    let e = tokenizer_from_gguf(&data)
        .expect_err("is rejected")
        .to_string();
    assert!(e.contains("bert"), "{e}");
}

#[test]
fn merges_split_at_the_first_inner_space() {
    assert_eq!(
        parse_merge("Ġ t").expect("a well-formed merge"),
        ("Ġ".to_owned(), "t".to_owned())
    );
    assert_eq!(
        parse_merge("  a").expect("a well-formed merge"),
        (" ".to_owned(), "a".to_owned())
    );
    assert!(parse_merge("ab").is_err());
}

/// A small SentencePiece vocabulary: `<unk>`, `<s>`, `</s>`, the byte tokens, and pieces
/// of "hello world", longer pieces scoring higher.
fn spm_data() -> GgufTokenizerData {
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    let mut token_types = vec![2, 3, 3];
    let mut scores = vec![0.0, 0.0, 0.0];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        token_types.push(6);
        scores.push(0.0);
    }
    let pieces = [
        "▁", "h", "e", "l", "o", "w", "r", "d", "▁h", "▁he", "▁hel", "▁hell", "▁hello", "▁w",
        "▁wo", "▁wor", "▁worl", "▁world", "ll", "lo",
    ];
    for piece in pieces {
        tokens.push(piece.to_owned());
        token_types.push(1);
        scores.push(piece.chars().count() as f32 - 10.0);
    }
    GgufTokenizerData {
        model: "llama".to_owned(),
        tokens,
        token_types,
        scores,
        bos_token_id: Some(1),
        eos_token_id: Some(2),
        unknown_token_id: Some(0),
        ..GgufTokenizerData::default()
    }
}

#[test]
fn sentencepiece_merges_and_decodes() {
    let tokenizer = tokenizer_from_gguf(&spm_data()).expect("the tokenizer builds");
    let enc = tokenizer.encode("hello world", false).expect("encodes");
    assert_eq!(enc.get_tokens(), ["▁hello", "▁world"]);
    assert_eq!(
        tokenizer.decode(enc.get_ids(), false).expect("decodes"),
        "hello world"
    );
}

#[test]
fn sentencepiece_falls_back_to_bytes() {
    let tokenizer = tokenizer_from_gguf(&spm_data()).expect("the tokenizer builds");
    let enc = tokenizer.encode("hello é", false).expect("encodes");
    assert_eq!(enc.get_tokens(), ["▁hello", "▁", "<0xC3>", "<0xA9>"]);
    assert_eq!(
        tokenizer.decode(enc.get_ids(), false).expect("decodes"),
        "hello é"
    );
    let enc = tokenizer.encode("<s>hello", false).expect("encodes");
    assert_eq!(enc.get_tokens(), ["<s>", "▁hello"]);
    assert_eq!(
        tokenizer.decode(enc.get_ids(), true).expect("decodes"),
        "hello"
    );
}

#[test]
fn sentencepiece_without_space_prefix() {
    let mut data = spm_data();
    data.add_space_prefix = Some(false);
    let tokenizer = tokenizer_from_gguf(&data).expect("the tokenizer builds");
    let enc = tokenizer.encode("hello world", false).expect("encodes");
    assert_eq!(enc.get_tokens()[0], "h");
    assert_eq!(
        tokenizer.decode(enc.get_ids(), false).expect("decodes"),
        "hello world"
    );
}

#[test]
fn sentencepiece_merge_order_follows_scores() {
    let data = spm_data();
    let merges = sentencepiece_merges(&data.tokens, &data.scores, &vocab(&data.tokens));
    let first = merges
        .iter()
        .position(|m| m.0 == "▁worl")
        .expect("the merge is present");
    let later = merges
        .iter()
        .position(|m| m.0 == "▁" && m.1 == "h")
        .expect("the merge is present");
    assert!(first < later);
    assert!(merges.contains(&("l".to_owned(), "l".to_owned())));
}

#[test]
fn model_text_from_gguf() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let (_, mut data) = synth_gguf("smollm");
    data.chat_template = Some(CHATML_TEMPLATE.to_owned());
    let bos = data.bos_token_id.expect("the id is set");

    let text = ModelText::from_gguf(&path, data.clone()).expect("the GGUF text loads");
    assert_eq!(text.name, "SmolLM2-135M-Instruct.Q4_1");
    assert_eq!(text.folder, path);
    let mut want = vec![
        data.eos_token_id.expect("the id is set"),
        data.eot_token_id.expect("the id is set"),
    ];
    want.sort_unstable();
    assert_eq!(text.eos_token_ids, want);
    assert_ne!(text.tokenizer.encode("hi", true).expect("encodes")[0], bos);
    let prompt = text
        .chat_template
        .render(&[ChatMessage::new("user", "Hi")], true)
        .expect("renders");
    assert_eq!(
        prompt,
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    let ids = text.tokenizer.encode(&prompt, false).expect("encodes");
    assert_eq!(
        ids[0],
        text.tokenizer
            .token_to_id("<|im_start|>")
            .expect("the token is in the vocabulary")
    );

    data.add_bos_token = Some(true);
    data.eom_token_id = data.eos_token_id;
    let text = ModelText::from_gguf(&path, data).expect("the GGUF text loads");
    assert_eq!(text.eos_token_ids, want);
    assert_eq!(text.tokenizer.encode("hi", true).expect("encodes")[0], bos);
    assert_ne!(text.tokenizer.encode("hi", false).expect("encodes")[0], bos);
}

#[test]
fn llama_model_text_adds_bos_by_default() {
    let path = Path::new("/models/tiny.gguf");
    let text = ModelText::from_gguf(path, spm_data()).expect("the GGUF text loads");
    assert_eq!(text.name, "tiny");
    assert_eq!(text.eos_token_ids, [2]);
    assert!(text.chat_template.is_fallback());
    assert_eq!(
        text.tokenizer.encode("hello", true).expect("encodes"),
        [1, 3 + 256 + 12]
    );
}

#[test]
fn bad_template_names_the_file() {
    let mut data = spm_data();
    data.chat_template = Some("{% for %}".to_owned());
    let e = ModelText::from_gguf(Path::new("/m/x.gguf"), data)
        .expect_err("is rejected")
        .to_string();
    assert!(e.contains("/m/x.gguf"), "{e}");
}
