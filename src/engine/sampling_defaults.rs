//! What a request that leaves a sampling field out gets: OpenAI's defaults, or the model's own
//! recommendation from its `generation_config.json` (`temperature`, `top_p`, `top_k`, `min_p`,
//! `repetition_penalty`, `max_new_tokens`), as vLLM serves it (`--generation-config auto`, its
//! default). Qwen's instruct models recommend e.g. temperature 0.7, top-p 0.8, top-k 20 and a
//! repetition penalty of 1.05.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingDefaults {
    pub temperature: f32,
    pub top_p: f32,
    /// 0: off.
    pub top_k: usize,
    pub min_p: f32,
    pub repetition_penalty: f32,
    /// At most this many tokens when the request names no `max_tokens`.
    pub max_tokens: Option<usize>,
}

impl Default for SamplingDefaults {
    fn default() -> Self {
        Self { temperature: 1.0, top_p: 1.0, top_k: 0, min_p: 0.0, repetition_penalty: 1.0, max_tokens: None }
    }
}

impl SamplingDefaults {
    /// The sampling fields of a `generation_config.json`, over OpenAI's defaults. A field outside
    /// what a request may send is left at its default, and said so in the returned notes (as is
    /// every field taken, for the log).
    pub fn from_generation_config(config: &Value) -> (Self, Vec<String>) {
        let mut d = Self::default();
        let mut notes = vec![];
        let mut number = |key: &str, ok: &dyn Fn(f64) -> bool| -> Option<f64> {
            let v = config.get(key)?;
            match v.as_f64().filter(|&x| ok(x)) {
                Some(x) => {
                    notes.push(format!("{key} {v}"));
                    Some(x)
                }
                None => {
                    notes.push(format!("{key} {v} ignored (outside what a request may send)"));
                    None
                }
            }
        };
        if let Some(x) = number("temperature", &|x| (0.0..=2.0).contains(&x)) {
            d.temperature = x as f32;
        }
        if let Some(x) = number("top_p", &|x| x > 0.0 && x <= 1.0) {
            d.top_p = x as f32;
        }
        // transformers' top_k 0 and vLLM's -1 both mean off.
        if let Some(x) = number("top_k", &|x| x.fract() == 0.0 && (x >= -1.0) && x <= u32::MAX as f64) {
            d.top_k = x.max(0.0) as usize;
        }
        if let Some(x) = number("min_p", &|x| (0.0..=1.0).contains(&x)) {
            d.min_p = x as f32;
        }
        if let Some(x) = number("repetition_penalty", &|x| x > 0.0 && x <= 2.0) {
            d.repetition_penalty = x as f32;
        }
        if let Some(x) = number("max_new_tokens", &|x| x.fract() == 0.0 && x >= 1.0 && x <= u32::MAX as f64) {
            d.max_tokens = Some(x as usize);
        }
        (d, notes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn qwen_instruct_recommendations_become_the_defaults() {
        let qwen = json!({"bos_token_id": 151643, "do_sample": true, "eos_token_id": [151645, 151643], "pad_token_id": 151643,
            "repetition_penalty": 1.05, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "transformers_version": "4.37.0"});
        let (d, notes) = SamplingDefaults::from_generation_config(&qwen);
        assert_eq!(d, SamplingDefaults { temperature: 0.7, top_p: 0.8, top_k: 20, min_p: 0.0, repetition_penalty: 1.05, max_tokens: None });
        assert_eq!(notes, ["temperature 0.7", "top_p 0.8", "top_k 20", "repetition_penalty 1.05"]);
        assert_eq!(SamplingDefaults::from_generation_config(&json!({})).0, SamplingDefaults::default());
    }

    #[test]
    fn values_a_request_could_not_send_are_left_out() {
        let odd = json!({"temperature": 3.0, "top_p": 0, "top_k": -1, "min_p": "0.1", "repetition_penalty": 1.1, "max_new_tokens": 2.5});
        let (d, notes) = SamplingDefaults::from_generation_config(&odd);
        assert_eq!(d, SamplingDefaults { repetition_penalty: 1.1, ..Default::default() });
        assert_eq!(notes.iter().filter(|n| n.ends_with("ignored (outside what a request may send)")).count(), 4, "{notes:?}");
        assert_eq!(SamplingDefaults::from_generation_config(&json!({"max_new_tokens": 512})).0.max_tokens, Some(512));
    }
}
