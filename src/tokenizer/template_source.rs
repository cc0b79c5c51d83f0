//! Where chat templates come from: `tokenizer_config.json` or GGUF metadata.
//!
//! `chat_template` in `tokenizer_config.json` is either one template string or a list of
//! `{"name", "template"}`; from a list `transformers` uses "tool_use" when tools are passed and
//! it exists, "default" otherwise (other names are only reachable by name, which the server never
//! asks for). GGUF files (llama.cpp convention) keep the default in `tokenizer.chat_template` and
//! named ones in `tokenizer.chat_template.<name>`.

use std::collections::HashMap;

use candle_core::quantized::gguf_file;
use serde_json::Value as Json;

use super::gguf::opt_str;
use super::TokenizerError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatTemplateSources {
    pub default: String,
    pub tool_use: Option<String>,
}

impl ChatTemplateSources {
    /// From a whole `tokenizer_config.json`; `Ok(None)` when it has no `chat_template` (or null).
    pub fn from_tokenizer_config(config: &Json) -> Result<Option<Self>, TokenizerError> {
        match config.get("chat_template") {
            None | Some(Json::Null) => Ok(None),
            Some(value) => Self::from_config_value(value).map(Some),
        }
    }

    /// From the value of the `chat_template` field: a string or a list of `{name, template}`.
    pub fn from_config_value(value: &Json) -> Result<Self, TokenizerError> {
        let invalid = |what: String| TokenizerError::TemplateConfig(what);
        match value {
            Json::String(source) => Ok(Self {
                default: source.clone(),
                tool_use: None,
            }),
            Json::Array(entries) => {
                let mut named = HashMap::new();
                for (i, entry) in entries.iter().enumerate() {
                    let name = entry.get("name").and_then(Json::as_str);
                    let template = entry.get("template").and_then(Json::as_str);
                    let (Some(name), Some(template)) = (name, template) else {
                        return Err(invalid(format!(
                            "entry {i} is not an object with string `name` and `template`"
                        )));
                    };
                    named.insert(name, template);
                }
                let Some(default) = named.get("default") else {
                    let mut names: Vec<_> = named.keys().collect();
                    names.sort();
                    return Err(invalid(format!(
                        "a list of templates {names:?} without one named \"default\""
                    )));
                };
                Ok(Self {
                    default: (*default).to_owned(),
                    tool_use: named.get("tool_use").map(|t| (*t).to_owned()),
                })
            }
            other => {
                let shown: String = other.to_string().chars().take(200).collect();
                Err(invalid(format!(
                    "expected a string or a list of {{name, template}}, found {shown}"
                )))
            }
        }
    }

    /// `Ok(None)` when the GGUF has no `tokenizer.chat_template`.
    pub fn from_gguf(
        metadata: &HashMap<String, gguf_file::Value>,
    ) -> Result<Option<Self>, TokenizerError> {
        let Some(default) = opt_str(metadata, "tokenizer.chat_template")? else {
            return Ok(None);
        };
        Ok(Some(Self {
            default: default.to_owned(),
            tool_use: opt_str(metadata, "tokenizer.chat_template.tool_use")?.map(str::to_owned),
        }))
    }

    /// The template `transformers` would pick; `has_tools` means tools were passed at all
    /// (an empty list counts, as `tools is not None` does there).
    pub fn select(&self, has_tools: bool) -> &str {
        match &self.tool_use {
            Some(tool_use) if has_tools => tool_use,
            _ => &self.default,
        }
    }
}

/// A special token's text from `tokenizer_config.json` (`"eos_token": "<|im_end|>"` or the
/// serialized AddedToken form `{"content": "<|im_end|>", ...}`); `None` when absent or null.
pub fn special_token_from_config(config: &Json, key: &str) -> Option<String> {
    match config.get(key)? {
        Json::String(s) => Some(s.clone()),
        Json::Object(token) => token.get("content")?.as_str().map(str::to_owned),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn string_and_list_forms() {
        let single = json!({"chat_template": "{{ x }}"});
        let sources = ChatTemplateSources::from_tokenizer_config(&single)
            .unwrap()
            .unwrap();
        assert_eq!(
            (sources.select(false), sources.select(true)),
            ("{{ x }}", "{{ x }}")
        );

        let listed = json!({"chat_template": [
            {"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"},
            {"name": "rag", "template": "R"}
        ]});
        let sources = ChatTemplateSources::from_tokenizer_config(&listed)
            .unwrap()
            .unwrap();
        assert_eq!((sources.select(false), sources.select(true)), ("D", "T"));

        for absent in [json!({}), json!({"chat_template": null})] {
            assert_eq!(
                ChatTemplateSources::from_tokenizer_config(&absent).unwrap(),
                None
            );
        }
    }

    #[test]
    fn malformed_values_are_errors() {
        for value in [
            json!([{"name": "tool_use", "template": "T"}]),
            json!([{"name": "default"}]),
            json!(3),
        ] {
            let err = ChatTemplateSources::from_config_value(&value).unwrap_err();
            assert!(matches!(err, TokenizerError::TemplateConfig(_)), "{err}");
        }
    }

    #[test]
    fn gguf_keys() {
        let s = |x: &str| gguf_file::Value::String(x.into());
        let mut md = HashMap::from([("tokenizer.chat_template".to_owned(), s("D"))]);
        let sources = ChatTemplateSources::from_gguf(&md).unwrap().unwrap();
        assert_eq!((sources.select(false), sources.select(true)), ("D", "D"));
        md.insert("tokenizer.chat_template.tool_use".into(), s("T"));
        let sources = ChatTemplateSources::from_gguf(&md).unwrap().unwrap();
        assert_eq!((sources.select(false), sources.select(true)), ("D", "T"));
        md.insert("tokenizer.chat_template".into(), gguf_file::Value::U32(1));
        let err = ChatTemplateSources::from_gguf(&md).unwrap_err();
        assert!(err.to_string().contains("tokenizer.chat_template"), "{err}");
        assert_eq!(
            ChatTemplateSources::from_gguf(&HashMap::new()).unwrap(),
            None
        );
    }

    #[test]
    fn special_tokens_in_both_forms() {
        let config = json!({"eos_token": "<|im_end|>", "bos_token": null,
            "pad_token": {"content": "<|endoftext|>", "special": true}});
        let get = |key| special_token_from_config(&config, key);
        assert_eq!(get("eos_token").as_deref(), Some("<|im_end|>"));
        assert_eq!(get("bos_token"), None);
        assert_eq!(get("pad_token").as_deref(), Some("<|endoftext|>"));
    }
}
