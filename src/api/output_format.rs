//! What a request holds its output to: OpenAI's `response_format`, vLLM's `structured_outputs`
//! (`choice`, `regex`, `json`, `json_object`, `grammar`), the `guided_*` fields vLLM took before
//! v0.12 (`guided_choice`, `guided_regex`, `guided_json`, `guided_grammar`), llama.cpp's
//! `grammar` (GBNF) and `json_schema`, and SGLang's `ebnf` and `regex`. At most one may be
//! given; each is compiled once per distinct text (`FormatCache`), and every problem is a 400
//! naming its field.

use serde_json::Value;

use super::types::StructuredOutputFields;
use crate::engine::constraint::{FormatCache, OutputFormat};
use crate::error::ApiError;

/// The output format a request asks for, with the field that asked (errors name it);
/// `(Text, "response_format")` where none does.
pub fn requested(response_format: Option<&Value>, fields: &StructuredOutputFields, formats: &FormatCache) -> Result<(OutputFormat, String), ApiError> {
    let mut asked: Vec<(OutputFormat, String)> = Vec::new();
    let from_response_format = self::response_format(response_format, formats)?;
    if from_response_format != OutputFormat::Text {
        asked.push((from_response_format, "response_format".into()));
    }
    if let Some(so) = fields.structured_outputs.as_ref().filter(|v| !v.is_null()) {
        let Some(so) = so.as_object() else {
            return Err(ApiError::invalid("structured_outputs", "`structured_outputs` must be an object (`choice`, `regex`, `json`, `json_object` or `grammar`)"));
        };
        for (key, value) in so.iter().filter(|(_, v)| !v.is_null()) {
            let field = format!("structured_outputs.{key}");
            match key.as_str() {
                // Backend choices and options that change nothing here.
                "disable_fallback" | "disable_additional_properties" => {}
                "json_object" if value == &Value::Bool(false) => {}
                "disable_any_whitespace" if value == &Value::Bool(false) => {}
                "disable_any_whitespace" => return Err(unsupported(&field, "JSON output may always hold whitespace between tokens")),
                "whitespace_pattern" => return Err(unsupported(&field, "JSON output's whitespace is one space, or a line break and up to 20 spaces or tabs")),
                "structural_tag" => return Err(unsupported(&field, "write the constraint as `grammar`, `regex`, `choice` or `json`")),
                "choice" | "regex" | "json" | "json_object" | "grammar" => asked.push((kind(key, value, &field, formats)?, field)),
                _ => return Err(ApiError::invalid(&field, format!("`{field}` is not a structured output option (`choice`, `regex`, `json`, `json_object`, `grammar`)"))),
            }
        }
    }
    let legacy = [("choice", &fields.guided_choice), ("regex", &fields.guided_regex), ("json", &fields.guided_json), ("grammar", &fields.guided_grammar)];
    for (key, value) in legacy {
        if let Some(value) = value.as_ref().filter(|v| !v.is_null()) {
            let field = format!("guided_{key}");
            asked.push((kind(key, value, &field, formats)?, field));
        }
    }
    // llama.cpp's (an empty grammar is its "none") and SGLang's.
    let others = [("grammar", "grammar", &fields.grammar), ("json", "json_schema", &fields.json_schema), ("grammar", "ebnf", &fields.ebnf), ("regex", "regex", &fields.regex)];
    for (key, field, value) in others {
        if let Some(value) = value.as_ref().filter(|v| !v.is_null() && v.as_str() != Some("")) {
            asked.push((kind(key, value, field, formats)?, field.into()));
        }
    }
    if fields.guided_whitespace_pattern.as_ref().is_some_and(|v| !v.is_null()) {
        return Err(unsupported("guided_whitespace_pattern", "JSON output's whitespace is one space, or a line break and up to 20 spaces or tabs"));
    }
    match asked.len() {
        0 => Ok((OutputFormat::Text, "response_format".into())),
        1 => Ok(asked.pop().expect("one")),
        _ => {
            let (first, second) = (&asked[0].1, &asked[1].1);
            Err(ApiError::invalid(second, format!("`{second}` cannot be combined with `{first}`: the output can be held to one format only")))
        }
    }
}

/// One structured output kind: `choice` (a list of strings), `regex` (a string), `grammar` (GBNF
/// text), `json` (a schema, or its text) or `json_object: true`.
fn kind(key: &str, value: &Value, field: &str, formats: &FormatCache) -> Result<OutputFormat, ApiError> {
    let made = match key {
        "choice" => {
            let choices: Option<Vec<String>> = value.as_array().and_then(|a| a.iter().map(|c| c.as_str().map(str::to_string)).collect());
            let choices = choices.ok_or_else(|| ApiError::invalid(field, format!("`{field}` must be a list of strings")))?;
            formats.choice(&choices)
        }
        "regex" => formats.regex(value.as_str().ok_or_else(|| ApiError::invalid(field, format!("`{field}` must be a string")))?),
        "grammar" => formats.grammar(value.as_str().ok_or_else(|| ApiError::invalid(field, format!("`{field}` must be a string (a GBNF grammar)")))?),
        "json" => {
            let parsed;
            let schema = match value {
                Value::String(text) => {
                    parsed = serde_json::from_str::<Value>(text).map_err(|e| ApiError::invalid(field, format!("`{field}` is a string that is not JSON: {e}")))?;
                    &parsed
                }
                schema => schema,
            };
            formats.schema(schema)
        }
        "json_object" if value == &Value::Bool(true) => Ok(OutputFormat::JsonObject),
        _ => return Err(ApiError::invalid(field, format!("`{field}` must be true or false"))),
    };
    made.map_err(|e| ApiError::invalid(field, format!("`{field}`: {e}")))
}

fn unsupported(field: &str, instead: &str) -> ApiError {
    ApiError::invalid(field, format!("`{field}` is not supported: {instead}"))
}

/// `response_format`: `{"type": "text"}`, `{"type": "json_object"}` or `{"type": "json_schema",
/// "json_schema": {"name": ..., "schema": {...}}}` (the schema compiled here, or found among
/// those `formats` holds, so an unsupported one is a 400 naming its keyword).
fn response_format(format: Option<&Value>, formats: &FormatCache) -> Result<OutputFormat, ApiError> {
    const TYPES: &str = "\"text\", \"json_object\" or \"json_schema\"";
    let Some(format) = format.filter(|f| !f.is_null()) else { return Ok(OutputFormat::Text) };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(OutputFormat::Text),
        Some("json_object") => Ok(OutputFormat::JsonObject),
        Some("json_schema") => {
            let schema = format
                .get("json_schema")
                .and_then(|j| j.get("schema"))
                .ok_or_else(|| ApiError::invalid("response_format", "`response_format.json_schema.schema` is missing"))?;
            formats.schema(schema).map_err(|e| ApiError::invalid("response_format", format!("`response_format.json_schema.schema`: {e}")))
        }
        Some(other) => Err(ApiError::invalid("response_format", format!("`response_format` type {other:?} is not supported ({TYPES})"))),
        None => Err(ApiError::invalid("response_format", format!("`response_format` must be an object with a string `type` ({TYPES})"))),
    }
}
