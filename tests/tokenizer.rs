//! The tokenizer layer against Python `transformers` on the real Qwen data.
//!
//! Reference outputs are in `tests/fixtures/` (written by `scripts/make_reference.py`); the GGUF
//! and the Qwen3 tokenizer come from `scripts/fetch-test-data.sh`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::quantized::gguf_file;
use qwen_serve::tokenizer::{ChatTemplate, ChatTemplateSources, IncrementalDecoder, Tokenizer};
use serde::Deserialize;
use serde_json::{Map, Value};
use tokenizers::{NormalizedString, Normalizer};

const GGUF_NAME: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";
const IM_START: u32 = 151644;

fn test_data_dir() -> PathBuf {
    match std::env::var_os("QWEN_SERVE_TEST_DATA") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME is not set"))
            .join(".cache/qwen-serve/test-data"),
    }
}

fn test_data(relative: &str) -> PathBuf {
    let path = test_data_dir().join(relative);
    assert!(
        path.is_file(),
        "missing test data {}: run `scripts/fetch-test-data.sh` (QWEN_SERVE_TEST_DATA overrides the directory)",
        path.display()
    );
    path
}

fn fixture(relative: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(relative);
    assert!(
        path.is_file(),
        "missing fixture {} (written by scripts/make_reference.py)",
        path.display()
    );
    path
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> T {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn gguf_metadata() -> &'static HashMap<String, gguf_file::Value> {
    static METADATA: OnceLock<HashMap<String, gguf_file::Value>> = OnceLock::new();
    METADATA.get_or_init(|| {
        let path = test_data(GGUF_NAME);
        let mut file = std::fs::File::open(&path).unwrap();
        gguf_file::Content::read(&mut file)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .metadata
    })
}

fn gguf_tokenizer() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| Tokenizer::from_gguf(gguf_metadata()).expect("tokenizer from GGUF"))
}

fn qwen3_tokenizer() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        Tokenizer::from_file(&test_data("qwen3-tokenizer/tokenizer.json"))
            .expect("Qwen3 tokenizer.json")
    })
}

fn qwen3_config() -> Value {
    read_json(&test_data("qwen3-tokenizer/tokenizer_config.json"))
}

#[derive(Deserialize)]
struct Tokenization {
    names: Vec<String>,
    texts: Vec<String>,
    gguf_ids: Vec<Vec<u32>>,
    qwen3_ids: Vec<Vec<u32>>,
    decode: Vec<DecodeCase>,
}

#[derive(Deserialize)]
struct DecodeCase {
    name: String,
    ids: Vec<u32>,
    skip_special_tokens: bool,
    text: String,
}

fn tokenization() -> Tokenization {
    let t: Tokenization = read_json(&fixture("tokenization.json"));
    let n = t.texts.len();
    assert!(n > 0 && [t.names.len(), t.gguf_ids.len(), t.qwen3_ids.len()] == [n, n, n]);
    t
}

/// Whether Qwen's NFC normalizer changes `text`.
fn changed_by_nfc(tokenizer: &Tokenizer, text: &str) -> bool {
    let mut normalized = NormalizedString::from(text);
    let normalizer = tokenizer
        .inner()
        .get_normalizer()
        .expect("Qwen tokenizers normalize (NFC)");
    normalizer.normalize(&mut normalized).unwrap();
    normalized.get() != text
}

/// Added tokens of the Qwen3 tokenizer that the Qwen2.5 GGUF vocabulary lacks (`<think>`...).
fn qwen3_only_tokens() -> Vec<String> {
    let gguf = gguf_tokenizer();
    let only: Vec<String> = qwen3_tokenizer()
        .inner()
        .get_added_tokens_decoder()
        .into_iter()
        .filter(|(id, token)| gguf.token_to_id(&token.content) != Some(*id))
        .map(|(_, token)| token.content)
        .collect();
    assert!(only.iter().any(|t| t == "<think>"), "{only:?}");
    only
}

#[test]
fn gguf_tokenizer_ids_match_transformers() {
    let t = tokenization();
    let tok = gguf_tokenizer();
    let mut failures = Vec::new();
    let mut num_nfc_divergent = 0;
    for (i, text) in t.texts.iter().enumerate() {
        let ids = tok.encode(text).unwrap();
        if changed_by_nfc(tok, text) {
            // transformers' GGUF loader builds the tokenizer without Qwen2's NFC normalizer (as
            // does llama.cpp); we keep NFC, like Qwen's own tokenizer.json and Qwen2Tokenizer.
            // So here the reference is the Qwen tokenizer.json, and the transformers GGUF ids
            // must be exactly the un-normalized text.
            num_nfc_divergent += 1;
            assert_eq!(
                tok.decode(&t.gguf_ids[i], false).unwrap(),
                *text,
                "{}",
                t.names[i]
            );
            if ids != t.qwen3_ids[i] {
                failures.push(format!(
                    "{} (NFC): ours {ids:?}\n  tokenizer.json {:?}",
                    t.names[i], t.qwen3_ids[i]
                ));
            }
        } else if ids != t.gguf_ids[i] {
            failures.push(format!(
                "{}: ours {ids:?}\n  transformers {:?}",
                t.names[i], t.gguf_ids[i]
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} texts differ:\n{}",
        failures.len(),
        t.texts.len(),
        failures.join("\n")
    );
    assert!(
        num_nfc_divergent < t.texts.len() / 4,
        "NFC exemption covers {num_nfc_divergent} texts"
    );
}

#[test]
fn gguf_and_qwen3_tokenizers_agree_with_qwen3_reference() {
    let t = tokenization();
    let only = qwen3_only_tokens();
    let mut failures = Vec::new();
    let mut num_compared = 0;
    for (i, text) in t.texts.iter().enumerate() {
        let qwen3 = qwen3_tokenizer().encode(text).unwrap();
        if qwen3 != t.qwen3_ids[i] {
            failures.push(format!(
                "{} (tokenizer.json): ours {qwen3:?}\n  transformers {:?}",
                t.names[i], t.qwen3_ids[i]
            ));
        }
        if only.iter().any(|token| text.contains(token.as_str())) {
            continue;
        }
        num_compared += 1;
        let gguf = gguf_tokenizer().encode(text).unwrap();
        if gguf != t.qwen3_ids[i] {
            failures.push(format!(
                "{} (GGUF): ours {gguf:?}\n  Qwen3 transformers {:?}",
                t.names[i], t.qwen3_ids[i]
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        num_compared + 2 >= t.texts.len(),
        "only {num_compared} texts compared"
    );
}

#[test]
fn decode_matches_transformers() {
    let t = tokenization();
    let tok = gguf_tokenizer();
    let failures: Vec<String> = t
        .decode
        .iter()
        .filter_map(|case| {
            let text = tok.decode(&case.ids, case.skip_special_tokens).unwrap();
            (text != case.text).then(|| {
                format!(
                    "{} skip={}: ours {text:?}, transformers {:?}",
                    case.name, case.skip_special_tokens, case.text
                )
            })
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A token may hold part of a character: its piece is those raw bytes (what logprobs list as
/// `bytes`, where decoding the token alone gives U+FFFD), and a text's pieces join to its UTF-8.
#[test]
fn piece_bytes_are_raw_and_join_to_the_text() {
    for tok in [gguf_tokenizer(), qwen3_tokenizer()] {
        let text = "\u{1f980} crabs, \u{9f98}\u{9f98} and <|im_end|>";
        let ids = tok.encode_with_special_tokens(text).unwrap();
        let joined: Vec<u8> = ids.iter().flat_map(|&id| tok.piece_bytes(id)).collect();
        assert_eq!(String::from_utf8(joined).as_deref(), Ok(text));
        let partial = ids.iter().filter(|&&id| std::str::from_utf8(&tok.piece_bytes(id)).is_err()).count();
        assert!(partial > 0, "no token of {text:?} holds part of a character: {ids:?}");
    }
}

/// Streams `ids` through the incremental decoder; checks no delta splits a character and the
/// deltas add up to the one-shot decode.
fn check_stream(tok: &Tokenizer, name: &str, ids: &[u32], skip: bool) -> Result<(), String> {
    let mut decoder = IncrementalDecoder::new(skip);
    let mut streamed = String::new();
    for &id in ids {
        let delta = decoder.push(tok, id).unwrap();
        if delta.ends_with('\u{FFFD}') {
            return Err(format!(
                "{name} skip={skip}: delta {delta:?} ends in U+FFFD"
            ));
        }
        streamed.push_str(&delta);
    }
    streamed.push_str(&decoder.finish(tok).unwrap());
    let expected = tok.decode(ids, skip).unwrap();
    if streamed != expected {
        return Err(format!(
            "{name} skip={skip}: streamed {streamed:?}, decode {expected:?}"
        ));
    }
    Ok(())
}

#[test]
fn incremental_deltas_concatenate_to_the_full_decode() {
    let t = tokenization();
    let tok = gguf_tokenizer();
    let mut failures = Vec::new();
    let cases = t
        .names
        .iter()
        .zip(&t.gguf_ids)
        .chain(t.decode.iter().map(|c| (&c.name, &c.ids)));
    for (name, ids) in cases {
        for skip in [false, true] {
            failures.extend(check_stream(tok, name, ids, skip).err());
        }
    }
    // A whole conversation rendered and encoded, streamed as if generated.
    let text = &t.texts.concat();
    failures.extend(check_stream(tok, "all texts", &tok.encode(text).unwrap(), true).err());
    // Both tokenizers stream the byte-level way (no decode call per token).
    let qwen3 = qwen3_tokenizer();
    assert!(tok.byte_pieces().is_some() && qwen3.byte_pieces().is_some());
    for (name, ids) in t.names.iter().zip(&t.qwen3_ids) {
        failures.extend(check_stream(qwen3, name, ids, true).err());
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Random ids (split characters, invalid bytes, special and out-of-vocabulary ids among them)
/// stream to the one-shot decode.
#[test]
fn random_ids_stream_to_the_full_decode() {
    let tok = gguf_tokenizer();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    let mut failures = Vec::new();
    for i in 0..300 {
        // Byte tokens (ids below 256 hold single bytes in Qwen's vocabulary) often, any id else.
        let ids: Vec<u32> = (0..1 + next(40)).map(|_| if next(2) == 0 { next(256) } else { next(152_000) } as u32).collect();
        for skip in [false, true] {
            failures.extend(check_stream(tok, &format!("random {i}"), &ids, skip).err());
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn im_start_in_a_prompt_is_one_special_token() {
    for tok in [gguf_tokenizer(), qwen3_tokenizer()] {
        let ids = tok.encode("<|im_start|>user\nhi<|im_end|>").unwrap();
        assert_eq!(ids[0], IM_START, "{ids:?}");
        assert_eq!(ids.iter().filter(|&&id| id == IM_START).count(), 1);
        assert_eq!(tok.token_to_id("<|im_start|>"), Some(IM_START));
        assert_eq!(tok.id_to_token(IM_START).as_deref(), Some("<|im_start|>"));
        assert!(tok.is_special(IM_START));
        // A near miss is ordinary text.
        assert!(!tok.encode("<|im_start |>").unwrap().contains(&IM_START));
    }
}

#[test]
fn gguf_special_ids_and_vocabulary() {
    let tok = gguf_tokenizer();
    assert_eq!(tok.vocab_size(), 151_936);
    assert_eq!(qwen3_tokenizer().vocab_size(), 151_669);
    assert_eq!(
        (tok.eos_token_id(), tok.bos_token_id(), tok.pad_token_id()),
        (Some(151_645), Some(151_643), Some(151_643))
    );
    assert_eq!(tok.special_ids().len(), 20, "the GGUF's control tokens");
    assert!(
        !tok.is_special(151_657),
        "<tool_call> is user-defined, not special"
    );
    assert_eq!(tok.token_to_id("Ġthe"), Some(279));
}

/// First difference between two strings, with context, for a readable failure message.
fn diff(expected: &str, actual: &str) -> String {
    let at = expected
        .char_indices()
        .zip(actual.chars())
        .find(|((_, a), b)| a != b)
        .map(|((i, _), _)| i)
        .unwrap_or(expected.len().min(actual.len()));
    let around = |s: &str| {
        let at = at.min(s.len());
        let before: String = s[..at]
            .chars()
            .rev()
            .take(60)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let after: String = s[at..].chars().take(60).collect();
        format!("{before:?} | {after:?}")
    };
    format!(
        "first difference at byte {at} (lengths {} vs {}):\n  expected: {}\n  actual:   {}",
        expected.len(),
        actual.len(),
        around(expected),
        around(actual)
    )
}

#[derive(Deserialize)]
struct TemplateFixtures {
    cases: Vec<TemplateCase>,
}

#[derive(Deserialize)]
struct TemplateCase {
    template: String,
    name: String,
    messages: Vec<Value>,
    tools: Option<Vec<Value>>,
    add_generation_prompt: bool,
    kwargs: Map<String, Value>,
    expected: String,
}

#[test]
fn chat_templates_render_exactly_like_transformers() {
    // The sources come from the model files, as the server loads them; the fixture copies
    // must be the same text.
    let qwen25_source = ChatTemplateSources::from_gguf(gguf_metadata())
        .unwrap()
        .expect("GGUF chat template");
    let config = qwen3_config();
    let qwen3_source = ChatTemplateSources::from_tokenizer_config(&config)
        .unwrap()
        .expect("Qwen3 chat template");
    for (name, source) in [
        ("qwen2.5", &qwen25_source.default),
        ("qwen3", &qwen3_source.default),
    ] {
        let copy = std::fs::read_to_string(fixture(&format!("templates/{name}.jinja"))).unwrap();
        assert_eq!(
            &copy, source,
            "tests/fixtures/templates/{name}.jinja differs from the model's template"
        );
    }
    let eos = |tok: &Tokenizer| tok.eos_token_id().and_then(|id| tok.id_to_token(id));
    let templates = HashMap::from([
        (
            "qwen2.5",
            ChatTemplate::from_sources(&qwen25_source, None, eos(gguf_tokenizer())).unwrap(),
        ),
        (
            "qwen3",
            ChatTemplate::from_config_value(
                &config["chat_template"],
                None,
                Some("<|im_end|>".into()),
            )
            .unwrap(),
        ),
    ]);

    let fixtures: TemplateFixtures = read_json(&fixture("chat_templates.json"));
    assert!(
        fixtures.cases.len() >= 20,
        "only {} template cases",
        fixtures.cases.len()
    );
    let mut failures = Vec::new();
    for case in &fixtures.cases {
        let template = templates
            .get(case.template.as_str())
            .unwrap_or_else(|| panic!("unknown template {}", case.template));
        let rendered = template.render(
            &case.messages,
            case.tools.as_deref(),
            case.add_generation_prompt,
            &case.kwargs,
        );
        match rendered {
            Ok(text) if text == case.expected => {}
            Ok(text) => failures.push(format!(
                "{}/{}: {}",
                case.template,
                case.name,
                diff(&case.expected, &text)
            )),
            Err(e) => failures.push(format!("{}/{}: {e}", case.template, case.name)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        fixtures.cases.len(),
        failures.join("\n\n")
    );
}

#[test]
fn rendered_prompts_encode_with_single_special_tokens() {
    let fixtures: TemplateFixtures = read_json(&fixture("chat_templates.json"));
    let tok = gguf_tokenizer();
    let case = fixtures
        .cases
        .iter()
        .find(|c| c.template == "qwen2.5" && c.name == "multi_turn")
        .expect("multi_turn case");
    let ids = tok.encode(&case.expected).unwrap();
    let num_turns = case.expected.matches("<|im_start|>").count();
    assert_eq!(ids.iter().filter(|&&id| id == IM_START).count(), num_turns);
    assert_eq!(tok.decode(&ids, false).unwrap(), case.expected);
}

/// JSON mode reads each token as bytes: for both tokenizers, the bytes of a text's tokens,
/// concatenated, are the text (the reference texts: spaces, newlines, CJK, emoji split across
/// tokens); special tokens have none.
#[test]
fn token_bytes_concatenate_to_the_text() {
    let t = tokenization();
    for (name, tok) in [("gguf", gguf_tokenizer()), ("qwen3", qwen3_tokenizer())] {
        let bytes = tok.token_bytes();
        assert_eq!(bytes.len(), tok.vocab_size());
        assert!(bytes[IM_START as usize].is_empty(), "{name}: <|im_start|> is special");
        let mut compared = 0;
        for (case, text) in t.names.iter().zip(&t.texts) {
            // NFC may change a text before it is split; those are not byte-for-byte round trips.
            if changed_by_nfc(tok, text) {
                continue;
            }
            let ids = tok.encode(text).unwrap();
            let joined: Vec<u8> = ids.iter().flat_map(|&id| bytes[id as usize].iter().copied()).collect();
            if ids.iter().any(|&id| tok.is_special(id)) {
                continue;
            }
            assert_eq!(String::from_utf8_lossy(&joined), text.as_str(), "{name}: {case}");
            compared += 1;
        }
        assert!(compared * 2 > t.texts.len(), "{name}: {compared} of {} texts compared", t.texts.len());
    }
}
