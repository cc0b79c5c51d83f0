//! `GET /openapi.json`: the API as this server implements it.

use serde_json::{json, Value};

fn error_responses() -> Value {
    let err = json!({"description": "OpenAI-style error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    json!({"400": err, "401": err, "404": err, "413": err, "422": err, "429": err, "503": err})
}

fn sampling_properties() -> Value {
    json!({
        "model": {"type": "string"},
        "max_tokens": {"type": "integer", "minimum": 1},
        "max_completion_tokens": {"type": "integer", "minimum": 1},
        "n": {"type": "integer", "minimum": 1, "maximum": 16},
        "seed": {"type": "integer"},
        "stop": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 16}]},
        "stop_token_ids": {"type": "array", "items": {"type": "integer"}},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "top_k": {"type": "integer", "minimum": -1},
        "min_p": {"type": "number", "minimum": 0, "maximum": 1},
        "presence_penalty": {"type": "number", "minimum": -2, "maximum": 2},
        "frequency_penalty": {"type": "number", "minimum": -2, "maximum": 2},
        "repetition_penalty": {"type": "number", "exclusiveMinimum": 0, "maximum": 2},
        "logit_bias": {"type": "object", "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100}},
        "ignore_eos": {"type": "boolean"},
        "min_tokens": {"type": "integer", "minimum": 0},
        "stream": {"type": "boolean"},
        "stream_options": {"type": "object", "nullable": true, "description": "only with `stream: true`", "properties": {"include_usage": {"type": "boolean", "nullable": true}, "continuous_usage_stats": {"type": "boolean", "nullable": true, "description": "vLLM's: the usage so far on every chunk"}}},
    })
}

fn with(mut base: Value, extra: Value) -> Value {
    if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    base
}

pub fn spec() -> Value {
    let json_body = |schema: &str| json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
    let ok = |description: &str| json!({"description": description, "content": {"application/json": {}, "text/event-stream": {}}});
    let mut post_responses = error_responses();
    post_responses["200"] = ok("the result, or SSE chunks ending in `data: [DONE]` when `stream` is true");
    // Anthropic's routes answer errors in Anthropic's envelope.
    let anthropic_err = json!({"description": "Anthropic-style error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/AnthropicError"}}}});
    let mut messages_api = json!({"400": anthropic_err, "401": anthropic_err, "404": anthropic_err, "413": anthropic_err, "422": anthropic_err, "429": anthropic_err, "503": anthropic_err});
    messages_api["200"] = ok("the message, or Anthropic's SSE events (`message_start`, `content_block_delta`, ..., `message_stop`) when `stream` is true");
    let mut responses_api = error_responses();
    responses_api["200"] = ok("the response object, or its typed SSE events (`event: response.output_text.delta`, ...) ending in `response.completed` / `response.incomplete` when `stream` is true");
    json!({
        "openapi": "3.0.3",
        "info": {"title": "qwen-serve", "version": env!("CARGO_PKG_VERSION"), "description": "OpenAI-compatible API for Qwen models"},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object", "properties": {
                    "message": {"type": "string"}, "type": {"type": "string"}, "param": {"type": "string", "nullable": true}, "code": {"type": "string", "nullable": true}}}}},
                "AnthropicError": {"type": "object", "required": ["type", "error"], "properties": {"type": {"type": "string", "enum": ["error"]}, "error": {"type": "object", "required": ["type", "message"], "properties": {
                    "type": {"type": "string"}, "message": {"type": "string"}, "param": {"type": "string"}, "code": {"type": "string"}}}}},
                "ChatCompletionRequest": {"type": "object", "required": ["messages"], "properties": with(with(sampling_properties(), json!({
                    "messages": {"type": "array", "minItems": 1, "items": {"type": "object", "required": ["role"], "properties": {
                        "role": {"type": "string", "enum": ["system", "developer", "user", "assistant", "tool"]},
                        "content": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "object", "properties": {"type": {"type": "string", "enum": ["text"]}, "text": {"type": "string"}}}}], "nullable": true},
                        "tool_calls": {"type": "array", "items": {"type": "object"}},
                        "tool_call_id": {"type": "string"},
                        "reasoning_content": {"type": "string"}}}},
                    "logprobs": {"type": "boolean"},
                    "top_logprobs": {"type": "integer", "minimum": 0, "maximum": 20},
                    "return_tokens_as_token_ids": token_ids(),
                    "tools": {"type": "array", "items": {"type": "object"}},
                    "tool_choice": {"oneOf": [{"type": "string", "enum": ["auto", "none", "required"]},
                        {"type": "object", "required": ["type", "function"], "properties": {"type": {"const": "function"}, "function": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}}}]},
                    "chat_template_kwargs": {"type": "object"}})), held_output())},
                "CompletionRequest": {"type": "object", "required": ["prompt"], "properties": with(with(sampling_properties(), json!({
                    "prompt": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}, {"type": "array", "items": {"type": "integer"}}, {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}}]},
                    "echo": {"type": "boolean"},
                    "suffix": {"type": "string", "description": "Fill in the middle: the text after the completion (models with Qwen2.5-Coder's FIM tokens)"},
                    "logprobs": {"type": "integer", "minimum": 0, "maximum": 20},
                    "return_tokens_as_token_ids": token_ids()})), held_output())},
                "InfillRequest": {"type": "object", "required": ["input_prefix", "input_suffix"], "properties": with(llama_sampling(), json!({
                    "input_prefix": {"type": "string"}, "input_suffix": {"type": "string"}, "prompt": {"type": "string"},
                    "input_extra": {"type": "array", "items": {"type": "object", "required": ["text"], "properties": {"filename": {"type": "string"}, "text": {"type": "string"}}}}}))},
                "LlamaCompletionRequest": {"type": "object", "required": ["prompt"], "properties": with(llama_sampling(), json!({
                    "prompt": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"oneOf": [{"type": "string"}, {"type": "integer"}]}, "description": "token ids, or strings and token ids read in order as one prompt"}]},
                    "grammar": {"type": "string", "description": "a GBNF grammar the whole output is a sentence of"},
                    "json_schema": {"type": "object", "description": "the output a JSON object valid under this schema"}}))},
                "ResponsesRequest": {"type": "object", "required": ["input"], "properties": with(sampling_properties(), json!({
                    "input": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "object", "description": "a message (`role`, `content`), a `function_call` or a `function_call_output`"}}]},
                    "instructions": {"type": "string"},
                    "max_output_tokens": {"type": "integer", "minimum": 1},
                    "tools": {"type": "array", "items": {"type": "object", "required": ["type", "name"], "properties": {"type": {"const": "function"}, "name": {"type": "string"}, "description": {"type": "string"}, "parameters": {"type": "object"}, "strict": {"type": "boolean"}}}},
                    "tool_choice": {"oneOf": [{"type": "string", "enum": ["auto", "none", "required"]}, {"type": "object", "required": ["type", "name"], "properties": {"type": {"const": "function"}, "name": {"type": "string"}}}]},
                    "parallel_tool_calls": {"type": "boolean"},
                    "text": {"type": "object", "properties": {"format": {"type": "object", "required": ["type"], "properties": {"type": {"type": "string", "enum": ["text", "json_object", "json_schema"]}, "name": {"type": "string"}, "schema": {"type": "object"}, "strict": {"type": "boolean"}}}}},
                    "reasoning": {"type": "object", "properties": {"effort": {"type": "string", "description": "`none` turns thinking off on a template that renders it; any other effort on"}}},
                    "store": {"type": "boolean", "description": "kept in memory (the last 1,024) for `previous_response_id` and GET; default true"},
                    "previous_response_id": {"type": "string"},
                    "metadata": {"type": "object"},
                    "structured_outputs": structured_outputs()}))},
                "MessagesRequest": {"type": "object", "required": ["messages"], "properties": with(sampling_properties(), json!({
                    "messages": {"type": "array", "items": {"type": "object", "required": ["role", "content"], "properties": {"role": {"type": "string", "enum": ["user", "assistant"]},
                        "content": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "object", "description": "a text, thinking, tool_use or tool_result block"}}]}}}},
                    "system": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]},
                    "stop_sequences": {"type": "array", "items": {"type": "string"}},
                    "tools": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}, "description": {"type": "string"}, "input_schema": {"type": "object"}, "strict": {"type": "boolean"}}}},
                    "tool_choice": {"type": "object", "required": ["type"], "properties": {"type": {"type": "string", "enum": ["auto", "any", "none", "tool"]}, "name": {"type": "string"}, "disable_parallel_tool_use": {"type": "boolean"}}},
                    "thinking": {"type": "object", "properties": {"type": {"type": "string", "enum": ["enabled", "disabled"]}, "budget_tokens": {"type": "integer"}}}}))},
                "EmbeddingRequest": {"type": "object", "description": "`input` or `messages`", "properties": {
                    "input": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}, {"type": "array", "items": {"type": "integer", "minimum": 0}}, {"type": "array", "items": {"type": "array", "items": {"type": "integer", "minimum": 0}}}], "description": "at most 2,048 inputs"},
                    "messages": {"type": "array", "items": {"type": "object"}, "description": "vLLM's: one conversation, rendered with the chat template"},
                    "add_generation_prompt": {"type": "boolean", "description": "with `messages`: open the assistant's turn (default false)"},
                    "chat_template_kwargs": {"type": "object"},
                    "model": {"type": "string"},
                    "encoding_format": {"type": "string", "enum": ["float", "base64"], "description": "base64: little-endian f32 bytes"},
                    "dimensions": {"type": "integer", "minimum": 1, "description": "keep the first values (Matryoshka), then renormalise"},
                    "truncate_prompt_tokens": {"type": "integer", "description": "embed each input's last k tokens (-1: no limit)"},
                    "add_special_tokens": {"type": "boolean", "description": "the tokenizer's post-processor tokens (default true; false with `messages`)"},
                    "normalize": {"type": "boolean", "description": "L2-normalise (default true)"}}},
                "RerankRequest": {"type": "object", "required": ["query", "documents"], "properties": {
                    "model": {"type": "string"},
                    "query": {"type": "string"},
                    "documents": {"type": "array", "maxItems": 2048, "items": {"oneOf": [{"type": "string"}, {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}}]}},
                    "top_n": {"type": "integer", "minimum": 0, "description": "the best n results (0 or absent: all)"},
                    "return_documents": {"type": "boolean", "description": "repeat each result's document (default true)"},
                    "instruction": {"type": "string", "description": "the task, in Qwen3-Reranker's `<Instruct>` line"},
                    "truncate_prompt_tokens": {"type": "integer", "description": "cut each pair's prompt to k tokens (-1: the context) by dropping the document's tail"},
                    "max_tokens_per_doc": {"type": "integer", "minimum": 1, "description": "keep about n of each document's tokens (Cohere's)"}}},
                "ScoreRequest": {"type": "object", "required": ["text_1", "text_2"], "properties": {
                    "model": {"type": "string"},
                    "text_1": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}], "description": "one query, or one per `text_2`"},
                    "text_2": {"oneOf": [{"type": "string"}, {"type": "array", "maxItems": 2048, "items": {"type": "string"}}]},
                    "instruction": {"type": "string"},
                    "truncate_prompt_tokens": {"type": "integer"}}},
                "TokenizeRequest": {"type": "object", "properties": {"model": {"type": "string"}, "prompt": {"type": "string"}, "messages": {"type": "array", "items": {"type": "object"}}, "add_generation_prompt": {"type": "boolean"}, "continue_final_message": {"type": "boolean"}, "tools": {"type": "array", "items": {"type": "object"}}, "chat_template_kwargs": {"type": "object"}}},
                "DetokenizeRequest": {"type": "object", "required": ["tokens"], "properties": {"model": {"type": "string"}, "tokens": {"type": "array", "items": {"type": "integer", "minimum": 0}}}},
            }
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/chat/completions": {"post": {"summary": "Chat completion", "requestBody": json_body("ChatCompletionRequest"), "responses": post_responses}},
            "/v1/completions": {"post": {"summary": "Text completion", "requestBody": json_body("CompletionRequest"), "responses": post_responses}},
            "/v1/embeddings": {"post": {"summary": "Embeddings: the last token's final hidden state, L2-normalised", "requestBody": json_body("EmbeddingRequest"), "responses": {"200": {"description": "`{\"object\": \"list\", \"data\": [{\"object\": \"embedding\", \"index\", \"embedding\"}], \"usage\"}`", "content": {"application/json": {}}}, "400": error_responses()["400"]}}},
            "/v1/rerank": {"post": {"summary": "Documents ranked by relevance to a query (Qwen3-Reranker's yes/no score); also /rerank and /v2/rerank", "requestBody": json_body("RerankRequest"), "responses": {"200": {"description": "`{\"results\": [{\"index\", \"relevance_score\", \"document\"}], \"usage\"}`, best first", "content": {"application/json": {}}}, "400": error_responses()["400"]}}},
            "/v1/score": {"post": {"summary": "Relevance scores of text pairs (Qwen3-Reranker's yes/no score); also /score", "requestBody": json_body("ScoreRequest"), "responses": {"200": {"description": "`{\"object\": \"list\", \"data\": [{\"index\", \"object\": \"score\", \"score\"}], \"usage\"}`", "content": {"application/json": {}}}, "400": error_responses()["400"]}}},
            "/v1/responses": {"post": {"summary": "OpenAI's Responses API", "requestBody": json_body("ResponsesRequest"), "responses": responses_api}},
            "/v1/responses/{id}": {
                "get": {"summary": "A stored response", "responses": {"200": {"description": "the response object", "content": {"application/json": {}}}, "404": error_responses()["404"]}},
                "delete": {"summary": "Forget a stored response", "responses": {"200": {"description": "`{\"id\", \"object\": \"response\", \"deleted\": true}`", "content": {"application/json": {}}}, "404": error_responses()["404"]}}},
            "/v1/responses/{id}/input_items": {"get": {"summary": "A stored response's own input items, each with an `id`, paged",
                "parameters": [
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}},
                    {"name": "order", "in": "query", "schema": {"type": "string", "enum": ["asc", "desc"], "default": "desc"}},
                    {"name": "after", "in": "query", "description": "an item id: the items after it in `order`", "schema": {"type": "string"}}],
                "responses": {"200": {"description": "`{\"object\": \"list\", \"data\": [items], \"first_id\", \"last_id\", \"has_more\"}`", "content": {"application/json": {}}}, "400": error_responses()["400"], "404": error_responses()["404"]}}},
            "/v1/messages": {"post": {"summary": "Anthropic's Messages API", "requestBody": json_body("MessagesRequest"), "responses": messages_api}},
            "/v1/messages/count_tokens": {"post": {"summary": "The prompt tokens a /v1/messages request would take", "requestBody": json_body("MessagesRequest"), "responses": {"200": {"description": "`{\"input_tokens\": N}`", "content": {"application/json": {}}}, "400": messages_api["400"]}}},
            "/v1/models": {"get": {"summary": "The served model", "responses": {"200": {"description": "model list", "content": {"application/json": {}}}, "401": error_responses()["401"]}}},
            "/v1/models/{model}": {"get": {"summary": "The served model by its name", "responses": {"200": {"description": "the model object", "content": {"application/json": {}}}, "401": error_responses()["401"], "404": error_responses()["404"]}}},
            "/completion": {"post": {"summary": "Completion, as llama.cpp's /completion (its request and response shapes)", "requestBody": json_body("LlamaCompletionRequest"), "responses": {"200": {"description": "llama.cpp's completion object, or its SSE chunks with `stream`", "content": {"application/json": {}}}, "400": error_responses()["400"]}}},
            "/completions": {"post": {"summary": "The same as /completion: llama-server routes both", "requestBody": json_body("LlamaCompletionRequest"), "responses": {"200": {"description": "llama.cpp's completion object, or its SSE chunks with `stream`", "content": {"application/json": {}}}, "400": error_responses()["400"]}}},
            "/infill": {"post": {"summary": "Fill in the middle, as llama.cpp's /infill (its request and response shapes)", "requestBody": json_body("InfillRequest"), "responses": {"200": {"description": "llama.cpp's completion object, or its SSE chunks with `stream`", "content": {"application/json": {}}}, "400": error_responses()["400"]}}},
            "/tokenize": {"post": {"summary": "Text or chat messages to token ids", "requestBody": json_body("TokenizeRequest"), "responses": {"200": {"description": "tokens", "content": {"application/json": {}}}, "400": error_responses()["400"]}}},
            "/detokenize": {"post": {"summary": "Token ids to text", "requestBody": json_body("DetokenizeRequest"), "responses": {"200": {"description": "text", "content": {"application/json": {}}}, "400": error_responses()["400"]}}},
            "/health": {"get": {"summary": "Liveness (no auth)", "security": [], "responses": {"200": {"description": "ok", "content": {"application/json": {}}}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics (no auth)", "security": [], "responses": {"200": {"description": "exposition text", "content": {"text/plain": {}}}}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3", "content": {"application/json": {}}}}}},
        }
    })
}

/// `return_tokens_as_token_ids` (chat and completions).
fn token_ids() -> Value {
    json!({"type": "boolean", "description": "vLLM's extension: logprob tokens as `token_id:{id}`"})
}

/// llama.cpp's sampling fields (`/completion`, `/infill`).
fn llama_sampling() -> Value {
    json!({
        "n_predict": {"type": "integer", "minimum": -1}, "temperature": {"type": "number"}, "top_k": {"type": "integer"}, "top_p": {"type": "number"}, "min_p": {"type": "number"},
        "repeat_penalty": {"type": "number"}, "presence_penalty": {"type": "number"}, "frequency_penalty": {"type": "number"}, "seed": {"type": "integer"},
        "repeat_last_n": {"type": "integer", "minimum": -1, "description": "the penalties count this many last tokens of prompt and output (64; -1 all; 0 none)"},
        "logit_bias": {"description": "[[token id or text, bias or false], ...] or {\"id or text\": bias or false}; false bans the token"},
        "samplers": {"description": "the sampler chain as names or letters; steps left out are off"},
        "stop": {"type": "array", "items": {"type": "string"}}, "ignore_eos": {"type": "boolean"}, "stream": {"type": "boolean"},
        "n_probs": {"type": "integer", "minimum": 0, "maximum": 20, "description": "the most likely tokens at each step, as `completion_probabilities`"}})
}

/// What holds a chat or completion's output: `response_format`, vLLM's `structured_outputs` and
/// `guided_*`, llama.cpp's `grammar`.
fn held_output() -> Value {
    let before = |field: &str| format!("vLLM before v0.12: `structured_outputs.{field}`");
    json!({
        "response_format": response_format(),
        "structured_outputs": structured_outputs(),
        "guided_choice": {"type": "array", "items": {"type": "string"}, "description": before("choice")},
        "guided_regex": {"type": "string", "description": before("regex")},
        "guided_json": {"type": "object", "description": before("json")},
        "guided_grammar": {"type": "string", "description": before("grammar")},
        "grammar": {"type": "string", "description": "llama.cpp's: a GBNF grammar the whole output is a sentence of (from its `root` rule)"},
        "json_schema": {"type": "object", "description": "llama.cpp's: the output a JSON object valid under this schema"},
        "ebnf": {"type": "string", "description": "SGLang's: as `grammar`"},
        "regex": {"type": "string", "description": "SGLang's: as `structured_outputs.regex`"}})
}

/// vLLM's `structured_outputs` (chat, completions, responses): one of `choice`, `regex`,
/// `grammar`, `json`, `json_object`.
fn structured_outputs() -> Value {
    json!({"type": "object", "description": "vLLM's extension: the whole output held to one of these", "properties": {
        "choice": {"type": "array", "minItems": 1, "items": {"type": "string"}, "description": "exactly one of these strings"},
        "regex": {"type": "string", "description": "matched against the whole output (ECMA-262 syntax, as a JSON schema's `pattern`)"},
        "grammar": {"type": "string", "description": "a GBNF grammar (llama.cpp's format, as xgrammar reads it) the whole output is a sentence of"},
        "json": {"oneOf": [{"type": "object"}, {"type": "string"}], "description": "a JSON schema, or its text"},
        "json_object": {"type": "boolean"}}})
}

/// `response_format` (chat and completions): plain text, any JSON object, or an object held to
/// `json_schema.schema`.
fn response_format() -> Value {
    json!({"type": "object", "required": ["type"], "properties": {
        "type": {"type": "string", "enum": ["text", "json_object", "json_schema"]},
        "json_schema": {"type": "object", "required": ["schema"], "properties": {"name": {"type": "string"}, "strict": {"type": "boolean"}, "schema": {"type": "object"}}}}})
}
