//! The text side of wayfinder's synthetic models (the built-in `demo` model, `make-model`
//! shapes, test models): a byte-level BPE tokenizer trained on a small built-in corpus, with the
//! ChatML special tokens, and the ChatML template they carry.

use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, TokenizerImpl};

use crate::error::TextError;

/// The ChatML template the synthetic models carry.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Special tokens, in id order after the trained vocabulary.
pub const SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// Text the synthetic tokenizers are trained on.
const CORPUS: &str = include_str!("synth_corpus.txt");

/// A byte-level BPE tokenizer with at most `vocab_size` tokens, trained on the built-in corpus,
/// with the ChatML special tokens ([`SPECIAL_TOKENS`]).
pub fn train_tokenizer(vocab_size: usize) -> Result<tokenizers::Tokenizer, TextError> {
    let err = |e: tokenizers::Error| TextError::Tokenizer(e.to_string());
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(
            SPECIAL_TOKENS
                .iter()
                .map(|t| AddedToken::from(*t, true))
                .collect(),
        )
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut tokenizer: TokenizerImpl<
        BPE,
        tokenizers::NormalizerWrapper,
        ByteLevel,
        ByteLevel,
        ByteLevel,
    > = TokenizerImpl::new(BPE::default());
    tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    tokenizer.with_post_processor(Some(ByteLevel::new(false, true, true)));
    tokenizer.train(&mut trainer, CORPUS.lines()).map_err(err)?;
    let json = tokenizer.to_string(false).map_err(err)?;
    json.parse::<tokenizers::Tokenizer>().map_err(err)
}
