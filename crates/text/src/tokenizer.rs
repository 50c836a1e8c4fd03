//! The tokenizer (the `tokenizers` crate, pure-Rust regex) and streaming detokenisation.
//!
//! [`IncrementalDetokenizer`] turns tokens into text as they are generated without ever emitting
//! half a UTF-8 character and with sentencepiece spaces right: it decodes a short window of the
//! previous tokens together with the new ones and emits only the text that appeared past the
//! window's own text, holding back while the tail is an incomplete character (U+FFFD). This is
//! the method of vLLM's and TGI's detokenizers.

use std::path::Path;

use crate::error::{FileError, TextError};

/// Tokens of context kept before the new ones, so that merges and leading spaces decode right.
const CONTEXT_TOKENS: usize = 5;

/// A Hugging Face tokenizer.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Prepended when encoding with special tokens, if the tokenizer does not add it itself.
    bos: Option<u32>,
    /// The longest token as the vocabulary writes it, in bytes: at least the bytes of text any
    /// one token stands for (byte-level, `▁` and `<0x..>` forms all write a byte in ≥ 1 byte).
    max_token_bytes: usize,
}

impl Tokenizer {
    /// Loads `tokenizer.json`; `add_bos` names the bos token when `tokenizer_config.json` asks
    /// for one to be added.
    pub fn from_file(path: &Path, add_bos: Option<&str>) -> Result<Self, TextError> {
        if !path.is_file() {
            return Err(FileError::Missing(path.to_path_buf()).into());
        }
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| TextError::Tokenizer(format!("{}: {e}", path.display())))?;
        Ok(Self::new(inner, add_bos))
    }

    /// Wraps a tokenizer.
    pub fn new(inner: tokenizers::Tokenizer, add_bos: Option<&str>) -> Self {
        let bos = add_bos.and_then(|t| inner.token_to_id(t));
        let max_token_bytes = inner
            .get_vocab(true)
            .keys()
            .map(String::len)
            .max()
            .unwrap_or(1)
            .max(1);
        Self {
            inner,
            bos,
            max_token_bytes,
        }
    }

    /// Whether `text` is too long to become fewer than `max_tokens` tokens, judged from its
    /// length alone (before paying for tokenizing it): every token stands for at most
    /// `max_token_bytes` bytes of text, and a normalizer is allowed to shrink text by half.
    pub fn cannot_fit(&self, text_bytes: usize, max_tokens: usize) -> bool {
        text_bytes / 2 > max_tokens.saturating_mul(self.max_token_bytes)
    }

    /// Token ids of `text`; with `add_special_tokens`, as the model expects a raw prompt (e.g.
    /// with bos). Chat prompts rendered by a template already hold their special tokens.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, TextError> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| TextError::Tokenizer(e.to_string()))?;
        let mut ids = enc.get_ids().to_vec();
        if add_special_tokens
            && let Some(bos) = self.bos
            && ids.first() != Some(&bos)
        {
            ids.insert(0, bos);
        }
        Ok(ids)
    }

    /// Text of `ids`.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, TextError> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| TextError::Tokenizer(e.to_string()))
    }

    /// The id of a token string.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The string of a token id.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Vocabulary size, with added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The underlying tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// Streaming detokenisation of one sequence; see the module docs.
#[derive(Debug, Clone)]
pub struct IncrementalDetokenizer {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
    skip_special_tokens: bool,
}

impl IncrementalDetokenizer {
    /// A detokenizer for text following `prompt` (its last tokens give context).
    pub fn new(prompt: &[u32], skip_special_tokens: bool) -> Self {
        let ids = prompt[prompt.len().saturating_sub(CONTEXT_TOKENS)..].to_vec();
        Self {
            read_offset: ids.len(),
            ids,
            prefix_offset: 0,
            skip_special_tokens,
        }
    }

    /// Adds a token; returns the text it completes (possibly empty).
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<String, TextError> {
        self.ids.push(id);
        let skip = self.skip_special_tokens;
        let prefix = tokenizer.decode(&self.ids[self.prefix_offset..self.read_offset], skip)?;
        let full = tokenizer.decode(&self.ids[self.prefix_offset..], skip)?;
        if full.len() > prefix.len()
            && !full.ends_with('\u{FFFD}')
            && full.is_char_boundary(prefix.len())
        {
            let delta = full[prefix.len()..].to_owned();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            // Keep the window short: the ids before `prefix_offset` are never decoded again.
            if self.prefix_offset > 4 * CONTEXT_TOKENS {
                self.ids.drain(..self.prefix_offset);
                self.read_offset -= self.prefix_offset;
                self.prefix_offset = 0;
            }
            Ok(delta)
        } else {
            Ok(String::new())
        }
    }

    /// Text still held back at the end of generation (an incomplete character decodes as
    /// U+FFFD, as a full decode would show it).
    pub fn flush(&mut self, tokenizer: &Tokenizer) -> Result<String, TextError> {
        let skip = self.skip_special_tokens;
        let prefix = tokenizer.decode(&self.ids[self.prefix_offset..self.read_offset], skip)?;
        let full = tokenizer.decode(&self.ids[self.prefix_offset..], skip)?;
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        Ok(full.get(prefix.len()..).unwrap_or_default().to_owned())
    }
}
