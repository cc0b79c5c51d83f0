//! Chat templates: renders a conversation to the prompt text exactly as `transformers`'
//! `apply_chat_template(..., tokenize=False)` does.
//!
//! `transformers` renders with Jinja2 (`ImmutableSandboxedEnvironment(trim_blocks=True,
//! lstrip_blocks=True)` plus the loop-controls extension) and adds `raise_exception`,
//! `strftime_now` and its own `tojson`; the variables are the special tokens, the caller's
//! kwargs, `messages`, `tools`, `documents` and `add_generation_prompt`. This is the same set-up
//! in minijinja, with Python's string methods from `minijinja_contrib::pycompat` and Python's
//! printing of `None`/`True`/floats (see `pyfmt.rs`).
//!
//! Not supported: the `{% generation %}` block of transformers' `AssistantTracker` extension
//! (only used for assistant-token masks in training templates).

use std::collections::BTreeMap;
use std::fmt;

use minijinja::{Environment, Error, ErrorKind, Value};
use serde_json::{Map, Value as Json};

use super::{pyfmt, pyjson, strftime, ChatTemplateSources, TokenizerError};

const DEFAULT_NAME: &str = "default";
const TOOL_USE_NAME: &str = "tool_use";

/// Variables the renderer sets itself; a template kwarg may not override them (in
/// `transformers` that is a Python `TypeError`).
const RESERVED: [&str; 4] = ["messages", "tools", "documents", "add_generation_prompt"];

/// A compiled chat template (plus the model's "tool_use" variant, if it has one). Shareable:
/// rendering takes `&self`.
pub struct ChatTemplate {
    env: Environment<'static>,
    has_tool_use: bool,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("has_tool_use", &self.has_tool_use)
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

/// Marks an error raised by the template's own `raise_exception(message)`, so that `render`
/// can tell it (a bad conversation) from a broken template.
#[derive(Debug)]
struct Raised(String);

impl fmt::Display for Raised {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message.clone()).with_source(Raised(message)))
}

impl ChatTemplate {
    /// Compiles `source` once. `bos_token`/`eos_token` become template variables when given
    /// (left undefined otherwise, as for Qwen, whose config has no BOS token).
    pub fn new(
        source: &str,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<Self, TokenizerError> {
        Self::compile(source, None, bos_token, eos_token)
    }

    /// From the `chat_template` value of `tokenizer_config.json`: a template string, or a list
    /// of `{"name", "template"}` of which "default" is used, and "tool_use" when tools are given.
    pub fn from_config_value(
        chat_template: &Json,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<Self, TokenizerError> {
        let sources = ChatTemplateSources::from_config_value(chat_template)?;
        Self::from_sources(&sources, bos_token, eos_token)
    }

    /// Compiles the default template and the "tool_use" one, if any; `render` picks.
    pub fn from_sources(
        sources: &ChatTemplateSources,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<Self, TokenizerError> {
        Self::compile(
            &sources.default,
            sources.tool_use.as_deref(),
            bos_token,
            eos_token,
        )
    }

    fn compile(
        default: &str,
        tool_use: Option<&str>,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<Self, TokenizerError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(pyfmt::python_formatter);
        env.add_filter("tojson", pyjson::tojson);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", |format: &str| {
            strftime::strftime_now(format)
        });
        for (name, source) in [(DEFAULT_NAME, Some(default)), (TOOL_USE_NAME, tool_use)] {
            if let Some(source) = source {
                env.add_template_owned(name, source.to_owned())
                    .map_err(|e| TokenizerError::TemplateSyntax(e.to_string()))?;
            }
        }
        Ok(Self {
            env,
            has_tool_use: tool_use.is_some(),
            bos_token,
            eos_token,
        })
    }

    /// Renders the prompt. `extra` holds template kwargs (e.g. `enable_thinking`), which become
    /// top-level variables; `tools: None` renders as Python's `tools=None`, and `Some` (even
    /// empty, like `tools is not None` in transformers) selects the "tool_use" template if any.
    pub fn render(
        &self,
        messages: &[Json],
        tools: Option<&[Json]>,
        add_generation_prompt: bool,
        extra: &Map<String, Json>,
    ) -> Result<String, TokenizerError> {
        let mut ctx: BTreeMap<&str, Value> = BTreeMap::new();
        if let Some(bos) = &self.bos_token {
            ctx.insert("bos_token", Value::from(bos.as_str()));
        }
        if let Some(eos) = &self.eos_token {
            ctx.insert("eos_token", Value::from(eos.as_str()));
        }
        for (key, value) in extra {
            if RESERVED.contains(&key.as_str()) {
                return Err(TokenizerError::TemplateRender(format!(
                    "`{key}` is set by the server and cannot be passed as a template kwarg"
                )));
            }
            ctx.insert(key, Value::from_serialize(value));
        }
        ctx.insert("messages", Value::from_serialize(messages));
        ctx.insert(
            "tools",
            tools.map_or(Value::from(()), Value::from_serialize),
        );
        ctx.insert("documents", Value::from(()));
        ctx.insert("add_generation_prompt", Value::from(add_generation_prompt));

        let name = if tools.is_some() && self.has_tool_use {
            TOOL_USE_NAME
        } else {
            DEFAULT_NAME
        };
        let template = self
            .env
            .get_template(name)
            .expect("templates are added in `compile`");
        template.render(ctx).map_err(render_error)
    }
}

fn render_error(err: Error) -> TokenizerError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(e) = source {
        if let Some(Raised(message)) = e.downcast_ref::<Raised>() {
            return TokenizerError::TemplateRaised(message.clone());
        }
        source = e.source();
    }
    TokenizerError::TemplateRender(err.to_string())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn render(source: &str, messages: Json) -> Result<String, TokenizerError> {
        let template = ChatTemplate::new(source, None, Some("<|im_end|>".into()))?;
        let messages = messages.as_array().unwrap().clone();
        template.render(&messages, None, false, &Map::new())
    }

    #[test]
    fn raise_exception_fails_the_render_with_its_message() {
        let source = "{% if messages[0].role != 'user' %}{{ raise_exception('First message must be from the user.') }}{% endif %}ok";
        let err = render(source, json!([{"role": "system", "content": "x"}])).unwrap_err();
        match err {
            TokenizerError::TemplateRaised(message) => {
                assert_eq!(message, "First message must be from the user.")
            }
            other => panic!("expected TemplateRaised, got {other:?}"),
        }
        assert_eq!(
            render(source, json!([{"role": "user", "content": "x"}])).unwrap(),
            "ok"
        );
    }

    #[test]
    fn syntax_errors_are_errors_not_panics() {
        for source in [
            "{% if x %}unclosed",
            "{{ }}",
            "{% for %}{% endfor %}",
            "{{ a | }}",
        ] {
            let err = ChatTemplate::new(source, None, None).unwrap_err();
            assert!(
                matches!(err, TokenizerError::TemplateSyntax(_)),
                "{source}: {err}"
            );
        }
    }

    #[test]
    fn runtime_errors_are_errors() {
        let err = render(
            "{{ messages[0].content.nope() }}",
            json!([{"content": "x"}]),
        )
        .unwrap_err();
        assert!(matches!(err, TokenizerError::TemplateRender(_)), "{err}");
    }

    #[test]
    fn python_constructs_used_by_qwen_templates() {
        let source = concat!(
            "{%- set ns = namespace(last=messages|length - 1) %}",
            "{%- for m in messages[::-1] %}{{ (messages|length - 1) - loop.index0 }}{{ m.role[0] }}{% endfor %}|",
            "{{- messages[0].content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') }}|",
            "{{- messages[0].content.startswith('<think>') }}{{ messages[0].content.endswith('x') }}|",
            "{{- ' a\\n'.strip('\\n') }}|{{ messages[1].content is string }}{{ messages[1].content is none }}|",
            "{{- ns.last }}|{{ eos_token }}|{{ bos_token is defined }}|{{ enable_thinking is defined }}",
        );
        let out = render(
            source,
            json!([{"role": "assistant", "content": "<think>\nhmm\n</think>\n\nx"}, {"role": "user", "content": null}]),
        )
        .unwrap();
        assert_eq!(
            out,
            "1u0a|hmm|TrueTrue| a|FalseTrue|1|<|im_end|>|False|False"
        );
    }

    #[test]
    fn kwargs_are_top_level_variables_and_python_printing() {
        let template = ChatTemplate::new(
            "{% if enable_thinking is false %}off{% endif %} {{ n }} {{ f }} {{ none_value }} {{ l }}",
            None,
            None,
        )
        .unwrap();
        let extra = json!({"enable_thinking": false, "n": 3, "f": 1e-7, "none_value": null, "l": ["a", true]});
        let out = template
            .render(&[], None, false, extra.as_object().unwrap())
            .unwrap();
        assert_eq!(out, "off 3 1e-07 None ['a', True]");

        let reserved = json!({"messages": []});
        let err = template
            .render(&[], None, false, reserved.as_object().unwrap())
            .unwrap_err();
        assert!(err.to_string().contains("`messages`"), "{err}");
    }

    #[test]
    fn trim_and_lstrip_blocks_like_transformers() {
        let source = "{% for m in messages %}\n    {% if m.role == 'user' %}\n<{{ m.content }}>\n    {% endif %}\n{% endfor %}\n";
        let out = render(
            source,
            json!([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]),
        )
        .unwrap();
        // Jinja2 with trim_blocks + lstrip_blocks (and without keep_trailing_newline).
        assert_eq!(out, "<a>\n<b>\n");
    }

    #[test]
    fn tools_none_is_falsy_and_given_tools_are_rendered() {
        let template =
            ChatTemplate::new("{% if tools %}{% for t in tools %}{{ t | tojson }}{% endfor %}{% else %}none{% endif %}", None, None)
                .unwrap();
        assert_eq!(
            template.render(&[], None, false, &Map::new()).unwrap(),
            "none"
        );
        let tools = [json!({"type": "function", "function": {"name": "f", "parameters": {}}})];
        assert_eq!(
            template
                .render(&[], Some(&tools), false, &Map::new())
                .unwrap(),
            r#"{"type": "function", "function": {"name": "f", "parameters": {}}}"#
        );
    }

    #[test]
    fn config_value_list_uses_tool_use_only_with_tools() {
        let value =
            json!([{"name": "default", "template": "D"}, {"name": "tool_use", "template": "T"}]);
        let template = ChatTemplate::from_config_value(&value, None, None).unwrap();
        assert_eq!(template.render(&[], None, false, &Map::new()).unwrap(), "D");
        assert_eq!(
            template.render(&[], Some(&[]), false, &Map::new()).unwrap(),
            "T"
        );
        let err = ChatTemplate::from_config_value(
            &json!([{"name": "default", "template": "{% if %}"}]),
            None,
            None,
        )
        .unwrap_err();
        assert!(matches!(err, TokenizerError::TemplateSyntax(_)), "{err}");
    }
}
