//! Text in and out through the public API: streaming detokenisation of characters split across
//! byte tokens, and chat template rendering.

use wayfinder_text::TextError;
use wayfinder_text::chat_template::{ChatMessage, ChatTemplate};
use wayfinder_text::synth::{CHATML_TEMPLATE, train_tokenizer};
use wayfinder_text::tokenizer::{IncrementalDetokenizer, Tokenizer};

// ---------------------------------------------------------------------------------------------
// Streaming detokenisation
// ---------------------------------------------------------------------------------------------

/// A byte-level BPE with so few merges that most non-ASCII characters are several tokens.
fn small_tokenizer() -> Tokenizer {
    Tokenizer::new(train_tokenizer(300).expect("train tokenizer"), None)
}

/// Texts with multi-byte characters (2, 3 and 4 bytes) and words with leading spaces.
const TEXTS: [&str; 6] = [
    "東京",
    "Hello 東京 and café!",
    " naïve résumé in Zürich, São Paulo 🙂 🚀",
    "🙂🙂🙂 Москва Ελλάδα ✨",
    "  two leading spaces, then é and 北京",
    "plain ascii text with   spaces\nand a newline",
];

/// Feeds `ids` one by one after `prompt`; returns every piece pushed (the flush last).
fn stream(tokenizer: &Tokenizer, prompt: &[u32], ids: &[u32]) -> Vec<String> {
    let mut detok = IncrementalDetokenizer::new(prompt, true);
    let mut pieces: Vec<String> = ids
        .iter()
        .map(|&id| detok.push(tokenizer, id).expect("push"))
        .collect();
    pieces.push(detok.flush(tokenizer).expect("flush"));
    pieces
}

#[test]
fn the_test_tokenizer_splits_characters_into_several_tokens() {
    let tokenizer = small_tokenizer();
    for text in ["東京", "🙂"] {
        let ids = tokenizer.encode(text, false).expect("encode");
        assert!(
            ids.len() > text.chars().count(),
            "{text:?} should be split into byte tokens, got {ids:?}"
        );
    }
    // One token per byte, so a prompt ending in "東京" leaves the detokenizer's five-token
    // window of context starting inside a character.
    assert_eq!(tokenizer.encode("東京", false).expect("encode").len(), 6);
}

#[test]
fn streamed_text_equals_the_full_decode_and_never_splits_a_character() {
    let tokenizer = small_tokenizer();
    for text in TEXTS {
        let ids = tokenizer.encode(text, false).expect("encode");
        let pieces = stream(&tokenizer, &[], &ids);
        let whole = tokenizer.decode(&ids, true).expect("decode");
        assert_eq!(whole, text, "byte-level BPE round-trips");
        assert_eq!(pieces.concat(), whole, "pieces of {text:?}: {pieces:?}");
        for piece in &pieces {
            assert!(
                !piece.contains('\u{FFFD}'),
                "{text:?}: piece {piece:?} holds a replacement character"
            );
        }
        // Every piece is a `String`, so valid UTF-8 by construction; the flush adds nothing
        // when the text ends on a whole character.
        assert_eq!(pieces.last().map(String::as_str), Some(""));
        // A push returns nothing exactly while a character is incomplete: always for the texts
        // with characters of three bytes or more (never one token here), never for ASCII.
        let held_back = pieces[..pieces.len() - 1].iter().any(String::is_empty);
        assert_eq!(
            held_back,
            text.chars().any(|c| c.len_utf8() >= 3),
            "{text:?}: {pieces:?}"
        );
    }
}

#[test]
fn special_tokens_in_the_stream_are_skipped_or_kept_like_the_full_decode() {
    let tokenizer = small_tokenizer();
    let text = "Hi 東<|im_end|>京 🙂<|im_start|>assistant\né";
    let ids = tokenizer.encode(text, false).expect("encode");
    let im_end = tokenizer.token_to_id("<|im_end|>").expect("special token");
    assert!(ids.contains(&im_end), "{ids:?}");
    for skip in [true, false] {
        let mut detok = IncrementalDetokenizer::new(&[], skip);
        let mut out = String::new();
        for &id in &ids {
            let piece = detok.push(&tokenizer, id).expect("push");
            assert!(!piece.contains('\u{FFFD}'), "skip {skip}: {piece:?}");
            out.push_str(&piece);
        }
        out.push_str(&detok.flush(&tokenizer).expect("flush"));
        assert_eq!(
            out,
            tokenizer.decode(&ids, skip).expect("decode"),
            "skip {skip}"
        );
    }
}

#[test]
fn streamed_text_after_a_prompt_is_the_difference_of_the_decodes() {
    let tokenizer = small_tokenizer();
    let prompts = [
        "Question: where is 東京?",
        "Answer:",
        "ends with an emoji 🙂",
        // The detokenizer's window of prompt tokens starts inside a character.
        "東京",
        "in 北京 東京",
        "x",
        "",
    ];
    for prompt in prompts {
        let prompt_ids = tokenizer.encode(prompt, false).expect("encode prompt");
        let prompt_text = tokenizer.decode(&prompt_ids, true).expect("decode prompt");
        for text in TEXTS {
            let gen_ids = tokenizer.encode(text, false).expect("encode");
            let all: Vec<u32> = prompt_ids.iter().chain(&gen_ids).copied().collect();
            let full = tokenizer.decode(&all, true).expect("decode");
            let expected = full
                .strip_prefix(prompt_text.as_str())
                .expect("the prompt's text starts the full text");
            let pieces = stream(&tokenizer, &prompt_ids, &gen_ids);
            assert_eq!(
                pieces.concat(),
                expected,
                "{text:?} after {prompt:?}: {pieces:?}"
            );
            assert!(
                pieces.iter().all(|p| !p.contains('\u{FFFD}')),
                "{text:?} after {prompt:?}: {pieces:?}"
            );
        }
    }
}

#[test]
fn a_long_stream_stays_exact_past_the_context_window() {
    // Long enough that the detokenizer trims its window several times.
    let tokenizer = small_tokenizer();
    let text = TEXTS.join(" ").repeat(4);
    let ids = tokenizer.encode(&text, false).expect("encode");
    assert!(ids.len() > 100);
    let pieces = stream(&tokenizer, &[], &ids);
    assert_eq!(pieces.concat(), text);
    assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')));
}

// ---------------------------------------------------------------------------------------------
// Chat templates
// ---------------------------------------------------------------------------------------------

fn system_and_user() -> Vec<ChatMessage> {
    vec![
        ChatMessage::new("system", "You are helpful."),
        ChatMessage::new("user", "Hi there!"),
    ]
}

fn chatml() -> ChatTemplate {
    ChatTemplate::new(
        Some(CHATML_TEMPLATE),
        "<|endoftext|>".into(),
        "<|im_end|>".into(),
    )
    .expect("ChatML compiles")
}

#[test]
fn chatml_renders_with_and_without_the_generation_prompt() {
    let template = chatml();
    assert!(!template.is_fallback());
    let without = "<|im_start|>system\nYou are helpful.<|im_end|>\n\
                   <|im_start|>user\nHi there!<|im_end|>\n";
    assert_eq!(
        template.render(&system_and_user(), false).expect("render"),
        without
    );
    assert_eq!(
        template.render(&system_and_user(), true).expect("render"),
        format!("{without}<|im_start|>assistant\n")
    );
    assert_eq!(
        template.render(&[], true).expect("render"),
        "<|im_start|>assistant\n"
    );
}

#[test]
fn the_fallback_renders_role_lines() {
    let template = ChatTemplate::new(None, String::new(), String::new()).expect("fallback");
    assert!(template.is_fallback());
    assert_eq!(
        template.render(&system_and_user(), true).expect("render"),
        "system: You are helpful.\nuser: Hi there!\nassistant:"
    );
    assert_eq!(
        template.render(&system_and_user(), false).expect("render"),
        "system: You are helpful.\nuser: Hi there!\n"
    );
}

/// Llama 3's template, as `tokenizer_config.json` holds it (one line), plus a role check.
const LLAMA3_TEMPLATE: &str = "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set offset = 1 %}{% else %}{% set offset = 0 %}{% endif %}{% for message in messages %}{% if message['role'] not in ['system', 'user', 'assistant'] %}{{ raise_exception('Unknown role: ' + message['role']) }}{% endif %}{% if loop.first and message['role'] != 'system' %}{{ '<|start_header_id|>system<|end_header_id|>\n\nDefault system prompt.<|eot_id|>' }}{% endif %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'].strip() + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

fn llama3() -> ChatTemplate {
    ChatTemplate::new(
        Some(LLAMA3_TEMPLATE),
        "<|begin_of_text|>".into(),
        "<|eot_id|>".into(),
    )
    .expect("Llama 3 template compiles")
}

#[test]
fn a_llama3_style_template_renders() {
    let template = llama3();
    let messages = vec![
        ChatMessage::new("system", "  You are helpful.\n"),
        ChatMessage::new("user", "\tHi there!  "),
    ];
    assert_eq!(
        template.render(&messages, true).expect("render"),
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are helpful.<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nHi there!<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\n"
    );
    // `loop.first` without a system message inserts the default one.
    let messages = vec![ChatMessage::new("user", "Hello")];
    assert_eq!(
        template.render(&messages, false).expect("render"),
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nDefault system prompt.<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>"
    );
}

#[test]
fn raise_exception_becomes_a_template_error_with_its_message() {
    let template = llama3();
    let messages = vec![ChatMessage::new("wizard", "abracadabra")];
    let err = template
        .render(&messages, true)
        .expect_err("a bad role raises");
    assert!(matches!(err, TextError::Template(_)), "{err:?}");
    assert!(
        err.to_string().contains("Unknown role: wizard"),
        "message: {err}"
    );

    let template = ChatTemplate::new(
        Some("{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"),
        String::new(),
        String::new(),
    )
    .expect("compiles");
    let err = template
        .render(&system_and_user(), false)
        .expect_err("raises");
    let TextError::Template(message) = &err else {
        panic!("expected a template error, got {err:?}");
    };
    assert!(
        message.contains("Conversation roles must alternate"),
        "message: {message}"
    );
}

#[test]
fn a_template_with_a_syntax_error_fails_to_compile() {
    for source in [
        "{% for message in messages %}{{ message.content }}",
        "{{ messages[0]['role'] ",
        "{% if add_generation_prompt %}x{% endfor %}",
    ] {
        let err = ChatTemplate::new(Some(source), String::new(), String::new())
            .expect_err("syntax error");
        assert!(matches!(err, TextError::Template(_)), "{source:?}: {err:?}");
    }
}

#[test]
fn block_tags_on_their_own_lines_leave_no_blank_lines() {
    // `trim_blocks` and `lstrip_blocks`, as `transformers` renders templates.
    let source = "{% for message in messages %}\n    {% if message.role == 'user' %}\n[U] {{ message.content }}\n    {% else %}\n[{{ message.role }}] {{ message.content }}\n    {% endif %}\n{% endfor %}\n{% if add_generation_prompt %}\n[A]\n{% endif %}\n";
    let template = ChatTemplate::new(Some(source), String::new(), String::new()).expect("compiles");
    assert_eq!(
        template.render(&system_and_user(), true).expect("render"),
        "[system] You are helpful.\n[U] Hi there!\n[A]\n"
    );
}
