//! A [`tokenizers::Tokenizer`] from the tokenizer metadata of a GGUF file, built the way
//! llama.cpp reads it (`src/llama-vocab.cpp`), and [`ModelText::from_gguf`].
//!
//! The model crate parses the file and hands over plain values ([`GgufTokenizerData`]); this
//! crate knows nothing of the GGUF format.
//!
//! | `tokenizer.ggml.model` | llama.cpp | built here |
//! |---|---|---|
//! | `gpt2` | `LLAMA_VOCAB_TYPE_BPE`, `llm_tokenizer_bpe` | BPE (vocab = `tokens`, `merges`); pre-tokenizer: one `Split` (`Isolated`) per regex of the `tokenizer.ggml.pre` type, in order, then `ByteLevel` without its own regex; `ByteLevel` decoder |
//! | `llama` | `LLAMA_VOCAB_TYPE_SPM`, `llm_tokenizer_spm` | BPE with byte fallback, merges derived from the pieces' scores (as `transformers`' `SentencePieceExtractor`); normalizer `Prepend("▁")` (if `add_space_prefix`) + `Replace(" ", "▁")`; decoder as `LlamaTokenizerFast` |
//!
//! The regexes are those of the `switch (vocab.get_pre_type())` in `llm_tokenizer_bpe`'s
//! constructor; llama.cpp applies them one after the other, each splitting the pieces of the
//! previous one and keeping unmatched text as pieces of its own, which is what a `Sequence` of
//! `Split` pre-tokenizers with `Isolated` does. The `pre` names are those `llama_vocab::load`
//! maps to each type (`"gpt2"` is accepted besides llama.cpp's `"gpt-2"`). The Llama 3 type
//! sets `ignore_merges` there, and here (a pre-token that is itself in the vocabulary is one
//! token).
//!
//! Token types: control (3) and unknown (2) tokens become special added tokens and user-defined
//! (4) ones plain added tokens, all matched whole in the raw input (not normalised), as
//! llama.cpp's `tokenizer_st_partition` matches them; special ones are dropped by
//! `skip_special_tokens`, as llama.cpp drops control and unknown tokens unless asked.

use std::path::Path;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{BPE, Merges, Vocab};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior,
};

use crate::chat_template::ChatTemplate;
use crate::error::TextError;
use crate::files::GenerationDefaults;
use crate::model_text::ModelText;
use crate::tokenizer::Tokenizer;

/// The tokenizer and chat metadata of a GGUF file (`tokenizer.ggml.*`, `tokenizer.chat_template`), as plain values.
#[derive(Debug, Clone, Default)]
pub struct GgufTokenizerData {
    /// `tokenizer.ggml.model`: `"gpt2"` (byte-level BPE) or `"llama"` (SentencePiece).
    pub model: String,
    /// `tokenizer.ggml.pre`: the pre-tokenizer type of a `gpt2` model.
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`: the vocabulary; a token's id is its index.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type`; empty if absent. 1 normal, 2 unknown, 3 control,
    /// 4 user-defined, 5 unused, 6 byte.
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.merges`, each `"left right"`; empty for `llama`.
    pub merges: Vec<String>,
    /// `tokenizer.ggml.scores`; may be empty for `gpt2`.
    pub scores: Vec<f32>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos_token_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos_token_id: Option<u32>,
    /// `tokenizer.ggml.eot_token_id`.
    pub eot_token_id: Option<u32>,
    /// `tokenizer.ggml.eom_token_id`.
    pub eom_token_id: Option<u32>,
    /// `tokenizer.ggml.unknown_token_id`.
    pub unknown_token_id: Option<u32>,
    /// `tokenizer.ggml.padding_token_id`.
    pub padding_token_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`.
    pub add_bos_token: Option<bool>,
    /// `tokenizer.ggml.add_eos_token`.
    pub add_eos_token: Option<bool>,
    /// `tokenizer.ggml.add_space_prefix`.
    pub add_space_prefix: Option<bool>,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<String>,
}

impl GgufTokenizerData {
    /// The text of token `id`, if it is in the vocabulary.
    fn token_text(&self, id: Option<u32>) -> Option<&str> {
        let id = usize::try_from(id?).ok()?;
        self.tokens.get(id).map(String::as_str)
    }
}

/// `tokenizer.ggml.token_type` of an unknown token.
const TYPE_UNKNOWN: i32 = 2;
/// `tokenizer.ggml.token_type` of a control token.
const TYPE_CONTROL: i32 = 3;
/// `tokenizer.ggml.token_type` of a user-defined token.
const TYPE_USER_DEFINED: i32 = 4;

/// The SentencePiece word-boundary marker.
const SPM_SPACE: &str = "▁";

/// GPT-2's regex (llama.cpp's `LLAMA_VOCAB_PRE_TYPE_GPT2`), also a part of other types.
const GPT2_REGEX: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// llama.cpp's `default:` regexes.
const DEFAULT_REGEXES: &[&str] = &[
    r"[\p{P}\$\+<=>\^~\|]+",
    GPT2_REGEX,
    r"\p{N}+",
    r"[0-9][0-9][0-9]",
];
/// `LLAMA_VOCAB_PRE_TYPE_SMOLLM` (with `STARCODER`, `REFACT`, `COMMAND_R`, ...): digits one by one.
const SMOLLM_REGEXES: &[&str] = &[r"\p{N}", GPT2_REGEX];
/// `LLAMA_VOCAB_PRE_TYPE_LLAMA3`, llama.cpp's adaptation of Llama 3's `tokenizer.json` regex.
const LLAMA3_REGEXES: &[&str] = &[
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
];
/// `LLAMA_VOCAB_PRE_TYPE_QWEN2`: as Llama 3 but digits one by one.
const QWEN2_REGEXES: &[&str] = &[
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
];

/// The pre-tokenizer types supported, as llama.cpp's `llama_vocab_pre_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PreType {
    Default,
    Gpt2,
    Llama3,
    Qwen2,
    Smollm,
}

/// `tokenizer.ggml.pre` values and their types (from `llama_vocab::load`).
const PRE_NAMES: &[(&str, PreType)] = &[
    ("default", PreType::Default),
    ("gpt2", PreType::Gpt2),
    ("gpt-2", PreType::Gpt2),
    ("llama3", PreType::Llama3),
    ("llama-v3", PreType::Llama3),
    ("llama-bpe", PreType::Llama3),
    ("qwen2", PreType::Qwen2),
    ("deepseek-r1-qwen", PreType::Qwen2),
    ("smollm", PreType::Smollm),
];

impl PreType {
    /// The type of `tokenizer.ggml.pre`; llama.cpp uses the default type when it is absent.
    fn parse(pre: Option<&str>) -> Result<Self, TextError> {
        let Some(pre) = pre else {
            return Ok(Self::Default);
        };
        PRE_NAMES
            .iter()
            .find(|(name, _)| *name == pre)
            .map(|(_, ty)| *ty)
            .ok_or_else(|| {
                let supported: Vec<&str> = PRE_NAMES.iter().map(|(name, _)| *name).collect();
                TextError::Tokenizer(format!(
                    "unsupported GGUF pre-tokenizer type {pre:?} (tokenizer.ggml.pre); supported: {}",
                    supported.join(", ")
                ))
            })
    }

    /// The regexes llama.cpp splits the text with, in order.
    fn regexes(self) -> &'static [&'static str] {
        match self {
            Self::Default => DEFAULT_REGEXES,
            Self::Gpt2 => &[GPT2_REGEX],
            Self::Llama3 => LLAMA3_REGEXES,
            Self::Qwen2 => QWEN2_REGEXES,
            Self::Smollm => SMOLLM_REGEXES,
        }
    }

    /// Whether a pre-token found whole in the vocabulary skips the merges.
    fn ignore_merges(self) -> bool {
        self == Self::Llama3
    }
}

/// Builds the tokenizer that llama.cpp would use for a GGUF file's tokenizer metadata; see the
/// module docs for the mapping. Errors on a `model` or `pre` type not supported, or on merges
/// that do not fit the vocabulary.
pub fn tokenizer_from_gguf(data: &GgufTokenizerData) -> Result<tokenizers::Tokenizer, TextError> {
    if data.tokens.is_empty() {
        return Err(TextError::Tokenizer(
            "the GGUF file has no tokens (tokenizer.ggml.tokens)".to_owned(),
        ));
    }
    let mut tokenizer = match data.model.as_str() {
        "gpt2" => byte_level_bpe(data)?,
        "llama" => sentencepiece_bpe(data)?,
        other => {
            return Err(TextError::Tokenizer(format!(
                "unsupported GGUF tokenizer model {other:?} (tokenizer.ggml.model); supported: gpt2, llama"
            )));
        }
    };
    tokenizer
        .add_tokens(added_tokens(data))
        .map_err(|e| TextError::Tokenizer(e.to_string()))?;
    Ok(tokenizer)
}

/// Token text → id; a repeated text keeps its last id, as llama.cpp's `token_to_id`.
fn vocab(tokens: &[String]) -> Vocab {
    tokens
        .iter()
        .enumerate()
        .filter_map(|(id, t)| Some((t.clone(), u32::try_from(id).ok()?)))
        .collect()
}

/// The byte-level BPE of a `gpt2` model.
fn byte_level_bpe(data: &GgufTokenizerData) -> Result<tokenizers::Tokenizer, TextError> {
    let pre = PreType::parse(data.pre.as_deref())?;
    let merges = data
        .merges
        .iter()
        .map(|m| parse_merge(m))
        .collect::<Result<Merges, _>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab(&data.tokens), merges)
        .ignore_merges(pre.ignore_merges())
        .build()
        .map_err(|e| TextError::Tokenizer(e.to_string()))?;
    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(byte_level_pre_tokenizer(pre)?));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    Ok(tokenizer)
}

/// `"left right"` → `(left, right)`, split at the first space after the first byte, as
/// llama.cpp does (so that a left part `" "` works).
fn parse_merge(merge: &str) -> Result<(String, String), TextError> {
    merge
        .as_bytes()
        .iter()
        .skip(1)
        .position(|&b| b == b' ')
        .map(|i| (merge[..=i].to_owned(), merge[i + 2..].to_owned()))
        .ok_or_else(|| {
            TextError::Tokenizer(format!(
                "malformed GGUF merge {merge:?} (tokenizer.ggml.merges)"
            ))
        })
}

/// One `Split` per regex of `pre`, then `ByteLevel` without its own regex.
fn byte_level_pre_tokenizer(pre: PreType) -> Result<PreTokenizerWrapper, TextError> {
    let mut steps = pre
        .regexes()
        .iter()
        .map(|re| {
            Split::new(
                SplitPattern::Regex((*re).to_owned()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map(PreTokenizerWrapper::from)
            .map_err(|e| TextError::Tokenizer(format!("pre-tokenizer regex {re:?}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    steps.push(ByteLevel::new(false, false, false).into());
    Ok(PreTokenizerSequence::new(steps).into())
}

/// The SentencePiece BPE of a `llama` model, as llama.cpp's SPM session.
fn sentencepiece_bpe(data: &GgufTokenizerData) -> Result<tokenizers::Tokenizer, TextError> {
    let vocab = vocab(&data.tokens);
    let merges = sentencepiece_merges(&data.tokens, &data.scores, &vocab);
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unk) = data.token_text(data.unknown_token_id) {
        builder = builder.unk_token(unk.to_owned());
    }
    let bpe = builder
        .build()
        .map_err(|e| TextError::Tokenizer(e.to_string()))?;
    let space_prefix = data.add_space_prefix != Some(false);
    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    tokenizer
        .with_normalizer(Some(sentencepiece_normalizer(space_prefix)?))
        .map_err(|e| TextError::Tokenizer(e.to_string()))?;
    tokenizer.with_decoder(Some(sentencepiece_decoder(space_prefix)?));
    Ok(tokenizer)
}

/// The merges of a SentencePiece vocabulary, as `transformers`' `SentencePieceExtractor`
/// derives them: every split of a piece into two pieces of the vocabulary, the merged piece's
/// score highest first, ties by the merged, left and right ids.
fn sentencepiece_merges(tokens: &[String], scores: &[f32], vocab: &Vocab) -> Merges {
    let mut found: Vec<(f32, [u32; 3], &str, &str)> = Vec::new();
    for (index, piece) in tokens.iter().enumerate() {
        let Some(&id) = vocab.get(piece) else {
            continue;
        };
        if usize::try_from(id).ok() != Some(index) {
            continue; // a repeated text: only the id the vocabulary keeps
        }
        let score = scores.get(index).copied().unwrap_or(0.0);
        for (at, _) in piece.char_indices().skip(1) {
            let (left, right) = piece.split_at(at);
            if let (Some(&l), Some(&r)) = (vocab.get(left), vocab.get(right)) {
                found.push((score, [id, l, r], left, right));
            }
        }
    }
    found.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    found
        .into_iter()
        .map(|(_, _, l, r)| (l.to_owned(), r.to_owned()))
        .collect()
}

/// `Prepend("▁")` (when llama.cpp adds a space prefix), then `Replace(" ", "▁")`.
fn sentencepiece_normalizer(space_prefix: bool) -> Result<NormalizerWrapper, TextError> {
    let mut steps: Vec<NormalizerWrapper> = Vec::new();
    if space_prefix {
        steps.push(Prepend::new(SPM_SPACE.to_owned()).into());
    }
    steps.push(
        Replace::new(" ", SPM_SPACE)
            .map_err(|e| TextError::Tokenizer(e.to_string()))?
            .into(),
    );
    Ok(NormalizerSequence::new(steps).into())
}

/// `LlamaTokenizerFast`'s decoder: `Replace("▁", " ")`, `ByteFallback`, `Fuse`, and
/// `Strip(' ', 1, 0)` for the space prefix.
fn sentencepiece_decoder(space_prefix: bool) -> Result<DecoderWrapper, TextError> {
    let mut steps: Vec<DecoderWrapper> = vec![
        Replace::new(SPM_SPACE, " ")
            .map_err(|e| TextError::Tokenizer(e.to_string()))?
            .into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if space_prefix {
        steps.push(Strip::new(' ', 1, 0).into());
    }
    Ok(DecoderSequence::new(steps).into())
}

/// Control, unknown and user-defined tokens, matched whole in the raw input.
fn added_tokens(data: &GgufTokenizerData) -> Vec<AddedToken> {
    data.tokens
        .iter()
        .zip(&data.token_types)
        .filter(|(_, ty)| matches!(**ty, TYPE_UNKNOWN | TYPE_CONTROL | TYPE_USER_DEFINED))
        .map(|(text, ty)| {
            AddedToken::from(text.clone(), *ty != TYPE_USER_DEFINED).normalized(false)
        })
        .collect()
}

impl ModelText {
    /// The text side of the GGUF file `path`, from its tokenizer metadata `data` (which the
    /// model crate reads). The name is the file's stem; bos is added to raw prompts when
    /// `tokenizer.ggml.add_bos_token` says so (by default for `llama` models, as llama.cpp);
    /// generation stops at the eos, eot and eom tokens; sampling defaults are the defaults.
    pub fn from_gguf(path: &Path, data: GgufTokenizerData) -> Result<Self, TextError> {
        let inner = tokenizer_from_gguf(&data)?;
        let add_bos = data.add_bos_token.unwrap_or(data.model == "llama");
        let bos_text = data.token_text(data.bos_token_id).map(str::to_owned);
        let eos_text = data.token_text(data.eos_token_id).map(str::to_owned);
        let tokenizer = Tokenizer::new(inner, add_bos.then_some(bos_text.as_deref()).flatten());
        let template_source = data.chat_template;
        let chat_template = ChatTemplate::new(
            template_source.as_deref(),
            bos_text.unwrap_or_default(),
            eos_text.unwrap_or_default(),
        )
        .map_err(|e| match e {
            TextError::Template(m) => TextError::Template(format!("{}: {m}", path.display())),
            other => other,
        })?;
        let mut eos_token_ids: Vec<u32> = [data.eos_token_id, data.eot_token_id, data.eom_token_id]
            .into_iter()
            .flatten()
            .collect();
        eos_token_ids.sort_unstable();
        eos_token_ids.dedup();
        let name = path
            .file_stem()
            .map_or_else(|| "model".to_owned(), |n| n.to_string_lossy().into_owned());
        Ok(Self {
            name,
            folder: path.to_path_buf(),
            tokenizer,
            chat_template,
            generation: GenerationDefaults::default(),
            eos_token_ids,
        })
    }
}

#[cfg(test)]
#[path = "gguf_tests.rs"]
mod tests;
