//! Any OpenAI-compatible server as a target: streamed `/v1/completions` with token-id prompts,
//! over blocking HTTP (one connection per benchmark thread).
//!
//! TTFT is the time to the first chunk carrying generated text. The number of generated tokens
//! comes from the final `usage` chunk (`stream_options.include_usage`) when the server sends
//! one, else from the number of text-bearing chunks (llama-server and qwen-serve stream one
//! token per chunk).

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{Sampling, Target, Timing};

pub struct HttpTarget {
    base: String,
    agent: ureq::Agent,
    /// The id `/v1/models` lists first, sent as `model`.
    model: Option<String>,
    name: String,
}

impl HttpTarget {
    /// Asks the server at `base` (`http://host:port`) which model it serves and who it is.
    pub fn connect(base: &str) -> Result<Self, String> {
        let base = base.trim_end_matches('/').trim_end_matches("/v1").to_string();
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(10))
            // Between two reads: a long queue at high concurrency must not time out.
            .timeout_read(Duration::from_secs(600))
            .max_idle_connections_per_host(256)
            .build();
        let models: Value = agent
            .get(&format!("{base}/v1/models"))
            .call()
            .map_err(|e| describe(&base, e))?
            .into_string()
            .map_err(|e| format!("{base}/v1/models: {e}"))
            .and_then(|s| serde_json::from_str(&s).map_err(|e| format!("{base}/v1/models: not JSON: {e}")))?;
        let first = &models["data"][0];
        let model = first["id"].as_str().map(str::to_string);
        let name = match first["owned_by"].as_str() {
            Some(owner) => format!("{owner} at {base}"),
            None => base.clone(),
        };
        Ok(Self { base, agent, model, name })
    }
}

impl Target for HttpTarget {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn run_one(&self, prompt: &[u32], output_len: usize, sampling: &Sampling) -> Result<Timing, String> {
        // top_k and min_p are vLLM's and llama.cpp's extensions; 0 means off to both (and to
        // us), and is sent so that a server's own defaults (llama-server's top_k 40 and min_p
        // 0.05, a model's generation config) stay off.
        let body = json!({
            "model": self.model,
            "prompt": prompt,
            "max_tokens": output_len,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "top_k": sampling.top_k,
            "min_p": 0.0,
            // No penalty either (a served model's generation config may set one by default).
            "repetition_penalty": 1.0,
            "ignore_eos": true,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        let url = format!("{}/v1/completions", self.base);
        let start = Instant::now();
        let resp = self
            .agent
            .post(&url)
            .set("Content-Type", "application/json")
            .send_string(&body.to_string())
            .map_err(|e| describe(&url, e))?;
        let (mut first, mut last, mut num_chunks, mut num_usage) = (None, start, 0, None);
        for line in BufReader::new(resp.into_reader()).lines() {
            let line = line.map_err(|e| format!("{url}: reading the stream: {e}"))?;
            let Some(data) = line.strip_prefix("data:") else { continue };
            let chunk = Chunk::parse(data.trim()).map_err(|e| format!("{url}: {e}"))?;
            if chunk.done {
                break;
            }
            if chunk.has_text {
                let now = Instant::now();
                first.get_or_insert(now);
                last = now;
                num_chunks += 1;
            }
            num_usage = chunk.num_completion_tokens.or(num_usage);
        }
        Timing::new(start, first, last, num_usage.unwrap_or(num_chunks))
    }
}

fn describe(url: &str, e: ureq::Error) -> String {
    match e {
        ureq::Error::Status(code, resp) => format!("{url}: HTTP {code}: {}", resp.into_string().unwrap_or_default()),
        ureq::Error::Transport(t) => format!("{url}: {t}"),
    }
}

/// What the benchmark needs from one `data:` payload.
#[derive(Debug, PartialEq)]
struct Chunk {
    done: bool,
    /// Some choice carries generated text.
    has_text: bool,
    num_completion_tokens: Option<usize>,
}

impl Chunk {
    fn parse(data: &str) -> Result<Self, String> {
        if data == "[DONE]" {
            return Ok(Self { done: true, has_text: false, num_completion_tokens: None });
        }
        let v: Value = serde_json::from_str(data).map_err(|e| format!("a stream chunk is not JSON ({e}): {data}"))?;
        if let Some(error) = v.get("error") {
            return Err(format!("the server sent an error: {error}"));
        }
        let has_text = v["choices"].as_array().is_some_and(|cs| cs.iter().any(|c| c["text"].as_str().is_some_and(|t| !t.is_empty())));
        let num_completion_tokens = v["usage"]["completion_tokens"].as_u64().map(|n| n as usize);
        Ok(Self { done: false, has_text, num_completion_tokens })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_chunks_count_and_empty_ones_do_not() {
        let c = Chunk::parse(r#"{"id":"cmpl-1","choices":[{"index":0,"text":" fox","finish_reason":null}]}"#).unwrap();
        assert_eq!(c, Chunk { done: false, has_text: true, num_completion_tokens: None });
        // llama-server's last chunk: empty text, a finish reason.
        let c = Chunk::parse(r#"{"choices":[{"index":0,"text":"","finish_reason":"length"}]}"#).unwrap();
        assert!(!c.has_text && !c.done);
    }

    #[test]
    fn usage_chunk_gives_the_token_count() {
        let c = Chunk::parse(r#"{"choices":[],"usage":{"prompt_tokens":8,"completion_tokens":4,"total_tokens":12}}"#).unwrap();
        assert_eq!(c, Chunk { done: false, has_text: false, num_completion_tokens: Some(4) });
    }

    #[test]
    fn done_and_errors() {
        assert!(Chunk::parse("[DONE]").unwrap().done);
        let e = Chunk::parse(r#"{"error":{"message":"generation was aborted","type":"server_error"}}"#).unwrap_err();
        assert!(e.contains("generation was aborted"), "{e}");
        assert!(Chunk::parse("{not json").is_err());
    }
}
