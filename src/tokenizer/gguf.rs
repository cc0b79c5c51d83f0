//! Rebuilds the Hugging Face tokenizer from GGUF metadata (`tokenizer.ggml.*`).
//!
//! The GGUF keeps the byte-level BPE vocabulary and merges but not the pipeline around them, so
//! we write the `tokenizer.json` that `transformers` ships for Qwen2/Qwen3 (NFC normalizer, the
//! Qwen2 split regex, byte-level pre-tokenizer/decoder) and hand it to `tokenizers`.
//!
//! Token types (llama.cpp `llama_token_type`): 1 normal, 2 unknown, 3 control, 4 user-defined,
//! 5 unused, 6 byte. Control tokens become special added tokens, user-defined ones non-special
//! added tokens (so `<tool_call>` survives `skip_special_tokens`); all others are plain vocabulary
//! entries that only BPE merges can produce.
//!
//! Every token, added ones included, is put in the BPE vocabulary under its GGUF id, so the added
//! tokens resolve to exactly those ids (checked after loading).

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;
use serde_json::{json, Map};

use super::TokenizerError;

/// Qwen2's pre-tokenizer split pattern, verbatim from Qwen2/Qwen3 `tokenizer.json`
/// (llama.cpp `LLAMA_VOCAB_PRE_TYPE_QWEN2`).
pub(super) const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

pub(super) struct Built {
    pub inner: tokenizers::Tokenizer,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
}

pub(super) fn build(md: &HashMap<String, Value>) -> Result<Built, TokenizerError> {
    let model = get_str(md, "tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(TokenizerError::Unsupported(format!(
            "GGUF tokenizer.ggml.model = {model:?}; only \"gpt2\" (byte-level BPE) is supported"
        )));
    }
    // Qwen GGUFs converted before llama.cpp added `tokenizer.ggml.pre` (mid 2024) lack the key;
    // they are still Qwen2 vocabularies, and Qwen models are all this server loads.
    match opt_str(md, "tokenizer.ggml.pre")? {
        None | Some("qwen2") => {}
        Some(other) => {
            return Err(TokenizerError::Unsupported(format!(
                "GGUF tokenizer.ggml.pre = {other:?}; only \"qwen2\" is supported"
            )))
        }
    }
    if opt_bool(md, "tokenizer.ggml.add_bos_token")? == Some(true) {
        return Err(TokenizerError::Unsupported(
            "GGUF tokenizer.ggml.add_bos_token = true; Qwen tokenizers add no BOS".into(),
        ));
    }

    let tokens = get_str_array(md, "tokenizer.ggml.tokens")?;
    let types = get_int_array(md, "tokenizer.ggml.token_type")?;
    if types.len() != tokens.len() {
        return Err(TokenizerError::InvalidGguf(format!(
            "tokenizer.ggml.token_type has {} entries but tokenizer.ggml.tokens has {}",
            types.len(),
            tokens.len()
        )));
    }
    let merges = get_str_array(md, "tokenizer.ggml.merges")?;

    let mut vocab = Map::with_capacity(tokens.len());
    let mut added_tokens = Vec::new();
    for (id, (&token, &ty)) in tokens.iter().zip(&types).enumerate() {
        if !(1..=6).contains(&ty) {
            return Err(TokenizerError::InvalidGguf(format!(
                "tokenizer.ggml.token_type[{id}] = {ty} is not a llama.cpp token type (1..=6)"
            )));
        }
        if let Some(first) = vocab.insert(token.to_owned(), json!(id)) {
            return Err(TokenizerError::InvalidGguf(format!(
                "tokenizer.ggml.tokens: {token:?} appears at ids {first} and {id}"
            )));
        }
        if ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_USER_DEFINED {
            added_tokens.push(json!({
                "id": id,
                "content": token,
                "single_word": false,
                "lstrip": false,
                "rstrip": false,
                "normalized": false,
                "special": ty == TOKEN_TYPE_CONTROL,
            }));
        }
    }

    let merges = merges
        .iter()
        .enumerate()
        .map(|(i, merge)| match merge.split_once(' ') {
            // Byte-level tokens never contain a space (it is spelled `Ġ`), so one split is exact.
            Some((a, b)) if !b.contains(' ') => Ok(json!([a, b])),
            _ => Err(TokenizerError::InvalidGguf(format!(
                "tokenizer.ggml.merges[{i}] = {merge:?} is not two tokens separated by one space"
            ))),
        })
        .collect::<Result<Vec<_>, _>>()?;

    let byte_level = json!({
        "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false
    });
    let num_tokens = tokens.len();
    let eos_token_id = opt_token_id(md, "tokenizer.ggml.eos_token_id", num_tokens)?;
    // Embedding GGUFs (Qwen3-Embedding) append EOS, as their tokenizer.json's template does;
    // only `Tokenizer::encode_with_special_tokens` runs it.
    let post_processor = match (opt_bool(md, "tokenizer.ggml.add_eos_token")?, eos_token_id) {
        (Some(true), Some(eos)) => {
            let eos_token = tokens[eos as usize];
            let text = |id: &str| json!({"Sequence": {"id": id, "type_id": 0}});
            let end = json!({"SpecialToken": {"id": eos_token, "type_id": 0}});
            let template = json!({
                "type": "TemplateProcessing",
                "single": [text("A"), end],
                "pair": [text("A"), end, text("B"), end],
                "special_tokens": {eos_token: {"id": eos_token, "ids": [eos], "tokens": [eos_token]}},
            });
            json!({"type": "Sequence", "processors": [byte_level, template]})
        }
        (Some(true), None) => {
            return Err(TokenizerError::InvalidGguf(
                "tokenizer.ggml.add_eos_token = true without tokenizer.ggml.eos_token_id".into(),
            ))
        }
        _ => byte_level.clone(),
    };
    let tokenizer_json = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": QWEN2_PATTERN},
                    "behavior": "Isolated",
                    "invert": false
                },
                byte_level,
            ]
        },
        "post_processor": post_processor,
        "decoder": byte_level,
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": false,
            "vocab": vocab,
            "merges": merges,
        }
    });
    let inner: tokenizers::Tokenizer = serde_json::from_value(tokenizer_json)
        .map_err(|e| TokenizerError::Build(format!("from GGUF metadata: {e}")))?;

    for (id, (&token, &ty)) in tokens.iter().zip(&types).enumerate() {
        if (ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_USER_DEFINED)
            && inner.token_to_id(token) != Some(id as u32)
        {
            return Err(TokenizerError::Build(format!(
                "added token {token:?} resolved to {:?} instead of its GGUF id {id}",
                inner.token_to_id(token)
            )));
        }
    }

    Ok(Built {
        inner,
        bos_token_id: opt_token_id(md, "tokenizer.ggml.bos_token_id", num_tokens)?,
        eos_token_id,
        pad_token_id: opt_token_id(md, "tokenizer.ggml.padding_token_id", num_tokens)?,
    })
}

fn type_name(v: &Value) -> String {
    match v {
        Value::U8(_) => "u8".into(),
        Value::I8(_) => "i8".into(),
        Value::U16(_) => "u16".into(),
        Value::I16(_) => "i16".into(),
        Value::U32(_) => "u32".into(),
        Value::I32(_) => "i32".into(),
        Value::U64(_) => "u64".into(),
        Value::I64(_) => "i64".into(),
        Value::F32(_) => "f32".into(),
        Value::F64(_) => "f64".into(),
        Value::Bool(_) => "bool".into(),
        Value::String(_) => "string".into(),
        Value::Array(items) => match items.first() {
            Some(first) => format!("array of {}", type_name(first)),
            None => "empty array".into(),
        },
    }
}

fn wrong_type(key: &str, expected: &'static str, found: &Value) -> TokenizerError {
    TokenizerError::WrongType {
        key: key.to_owned(),
        expected,
        found: type_name(found),
    }
}

fn get<'a>(md: &'a HashMap<String, Value>, key: &str) -> Result<&'a Value, TokenizerError> {
    md.get(key).ok_or_else(|| TokenizerError::MissingKey {
        key: key.to_owned(),
    })
}

fn as_int(v: &Value) -> Option<i64> {
    Some(match *v {
        Value::U8(x) => x.into(),
        Value::I8(x) => x.into(),
        Value::U16(x) => x.into(),
        Value::I16(x) => x.into(),
        Value::U32(x) => x.into(),
        Value::I32(x) => x.into(),
        Value::U64(x) => i64::try_from(x).ok()?,
        Value::I64(x) => x,
        _ => return None,
    })
}

pub(super) fn opt_str<'a>(
    md: &'a HashMap<String, Value>,
    key: &str,
) -> Result<Option<&'a str>, TokenizerError> {
    match md.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(wrong_type(key, "string", other)),
    }
}

fn get_str<'a>(md: &'a HashMap<String, Value>, key: &str) -> Result<&'a str, TokenizerError> {
    opt_str(md, key)?.ok_or_else(|| TokenizerError::MissingKey {
        key: key.to_owned(),
    })
}

fn opt_bool(md: &HashMap<String, Value>, key: &str) -> Result<Option<bool>, TokenizerError> {
    match md.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(wrong_type(key, "bool", other)),
    }
}

fn get_str_array<'a>(
    md: &'a HashMap<String, Value>,
    key: &str,
) -> Result<Vec<&'a str>, TokenizerError> {
    let value = get(md, key)?;
    let Value::Array(items) = value else {
        return Err(wrong_type(key, "array of string", value));
    };
    items
        .iter()
        .map(|item| match item {
            Value::String(s) => Ok(s.as_str()),
            _ => Err(wrong_type(key, "array of string", value)),
        })
        .collect()
}

fn get_int_array(md: &HashMap<String, Value>, key: &str) -> Result<Vec<i64>, TokenizerError> {
    let value = get(md, key)?;
    let Value::Array(items) = value else {
        return Err(wrong_type(key, "array of integer", value));
    };
    items
        .iter()
        .map(|item| as_int(item).ok_or_else(|| wrong_type(key, "array of integer", value)))
        .collect()
}

fn opt_token_id(
    md: &HashMap<String, Value>,
    key: &str,
    num_tokens: usize,
) -> Result<Option<u32>, TokenizerError> {
    let Some(value) = md.get(key) else {
        return Ok(None);
    };
    let id = as_int(value).ok_or_else(|| wrong_type(key, "integer", value))?;
    match u32::try_from(id) {
        Ok(id) if (id as usize) < num_tokens => Ok(Some(id)),
        _ => Err(TokenizerError::InvalidGguf(format!(
            "{key} = {id} is outside the vocabulary (0..{num_tokens})"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> Value {
        Value::String(x.into())
    }

    /// A toy byte-level vocabulary: "a", "b", "ab", "Ġ", plus `<|im_start|>` (control) and
    /// `<tool_call>` (user-defined).
    fn toy() -> HashMap<String, Value> {
        let tokens = ["a", "b", "ab", "Ġ", "<|im_start|>", "<tool_call>"];
        let types = [1, 1, 1, 1, 3, 4];
        HashMap::from([
            ("tokenizer.ggml.model".into(), s("gpt2")),
            ("tokenizer.ggml.pre".into(), s("qwen2")),
            (
                "tokenizer.ggml.tokens".into(),
                Value::Array(tokens.iter().map(|t| s(t)).collect()),
            ),
            (
                "tokenizer.ggml.token_type".into(),
                Value::Array(types.iter().map(|&t| Value::I32(t)).collect()),
            ),
            ("tokenizer.ggml.merges".into(), Value::Array(vec![s("a b")])),
            ("tokenizer.ggml.eos_token_id".into(), Value::U32(4)),
        ])
    }

    #[test]
    fn toy_vocabulary_encodes_merges_and_added_tokens() {
        let tok = super::super::Tokenizer::from_gguf(&toy()).unwrap();
        assert_eq!(
            tok.encode("ab<|im_start|>a b<tool_call>").unwrap(),
            [2, 4, 0, 3, 1, 5]
        );
        assert_eq!(tok.eos_token_id(), Some(4));
        assert_eq!(tok.special_ids(), [4]);
        assert_eq!(tok.decode(&[2, 4, 5], true).unwrap(), "ab<tool_call>");
        assert_eq!(tok.vocab_size(), 6);
    }

    #[test]
    fn add_eos_token_appends_eos_only_with_special_tokens() {
        let plain = super::super::Tokenizer::from_gguf(&toy()).unwrap();
        assert_eq!(plain.encode_with_special_tokens("ab a").unwrap(), [2, 3, 0]);
        let mut md = toy();
        md.insert("tokenizer.ggml.add_eos_token".into(), Value::Bool(true));
        let tok = super::super::Tokenizer::from_gguf(&md).unwrap();
        assert_eq!(tok.encode_with_special_tokens("ab a").unwrap(), [2, 3, 0, 4]);
        assert_eq!(tok.encode("ab a").unwrap(), [2, 3, 0]);
        md.remove("tokenizer.ggml.eos_token_id");
        let err = build(&md).err().unwrap();
        assert!(err.to_string().contains("eos_token_id"), "{err}");
    }

    #[test]
    fn other_models_are_unsupported_and_name_what_was_found() {
        let mut md = toy();
        md.insert("tokenizer.ggml.model".into(), s("llama"));
        let err = build(&md).err().unwrap();
        assert!(matches!(err, TokenizerError::Unsupported(_)));
        assert!(err.to_string().contains("\"llama\""), "{err}");

        let mut md = toy();
        md.insert("tokenizer.ggml.pre".into(), s("llama-bpe"));
        let err = build(&md).err().unwrap();
        assert!(err.to_string().contains("\"llama-bpe\""), "{err}");
    }

    #[test]
    fn missing_pre_is_accepted_as_qwen2() {
        let mut md = toy();
        md.remove("tokenizer.ggml.pre");
        assert!(build(&md).is_ok());
    }

    #[test]
    fn missing_and_ill_typed_keys_are_named() {
        let mut md = toy();
        md.remove("tokenizer.ggml.merges");
        let err = build(&md).err().unwrap();
        assert!(err.to_string().contains("tokenizer.ggml.merges"), "{err}");

        let mut md = toy();
        md.insert("tokenizer.ggml.token_type".into(), s("oops"));
        let err = build(&md).err().unwrap();
        assert!(matches!(err, TokenizerError::WrongType { .. }));
        assert!(
            err.to_string().contains("tokenizer.ggml.token_type"),
            "{err}"
        );

        let mut md = toy();
        md.insert("tokenizer.ggml.eos_token_id".into(), Value::U32(99));
        let err = build(&md).err().unwrap();
        assert!(
            err.to_string().contains("tokenizer.ggml.eos_token_id"),
            "{err}"
        );
    }
}
