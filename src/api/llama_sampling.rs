//! llama.cpp's sampling fields, read as llama-server reads them: its names and defaults
//! (temperature 0.8, top-k 40, top-p 0.95, min-p 0.05 where the request is silent, not the
//! model's generation config), its sampler order (top-k, top-p and min-p judge the
//! distribution at temperature 1, then the temperature shapes what is left), its penalties over
//! the last `repeat_last_n` tokens of prompt and output together, its `logit_bias` forms and
//! its `samplers` chain. Samplers it has and this server does not are refused unless off.

use serde::Deserialize;
use serde_json::Value;

use super::types::{SamplingFields, StringOrList};
use super::validate;
use crate::engine::sampler::{SamplingParams, MAX_LOGPROBS};
use crate::engine::EngineHandle;
use crate::error::ApiError;
use crate::tokenizer::Tokenizer;

/// llama.cpp's default `repeat_last_n`.
const REPEAT_LAST_N: usize = 64;

/// llama.cpp's sampling fields (those it has that qwen-serve does too).
#[derive(Debug, Default, Deserialize)]
pub struct LlamaSampling {
    /// Tokens to write; -1 (llama.cpp's default): until EOS or the context's end.
    pub n_predict: Option<i64>,
    pub temperature: Option<f32>,
    pub top_k: Option<i64>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    /// -1 (llama.cpp's default), or any negative: a random seed.
    pub seed: Option<i64>,
    pub stop: Option<Vec<String>>,
    pub ignore_eos: Option<bool>,
    /// The most likely tokens to list at each step (`completion_probabilities`); 0: none.
    pub n_probs: Option<i64>,
    /// The reply's `tokens`: the ids written (SSE chunks carry theirs anyway).
    #[serde(default)]
    pub return_tokens: bool,
    #[serde(default)]
    pub stream: bool,
    /// llama.cpp's samplers this server does not have: refused unless set to their "off"
    /// value, rather than silently sampling otherwise than asked.
    pub mirostat: Option<f64>,
    pub typical_p: Option<f64>,
    pub dynatemp_range: Option<f64>,
    pub xtc_probability: Option<f64>,
    pub dry_multiplier: Option<f64>,
    pub top_n_sigma: Option<f64>,
    /// `[[id or text, bias or false], ...]` or `{"id or text": bias or false}`: added to the
    /// token's logit (every token of a text's); `false` bans the token.
    pub logit_bias: Option<Value>,
    /// The penalties count the last this many tokens of prompt and output: 64 by default, -1
    /// the whole context, 0 no penalties.
    pub repeat_last_n: Option<i64>,
    /// The sampler chain, as names (`["top_k", "temperature"]`) or letters (`"kt"`): a sampler
    /// left out is off ([`Chain`]).
    pub samplers: Option<Value>,
    /// `true` asks for probabilities after llama.cpp's whole sampler chain (`prob`,
    /// `top_probs`); only `false` (the default: `logprob`, `top_logprobs`) is taken.
    pub post_sampling_probs: Option<bool>,
}

impl LlamaSampling {
    /// The samplers asked for that this server does not have.
    fn refuse_missing_samplers(&self) -> Result<(), ApiError> {
        let off = [("mirostat", self.mirostat, 0.0), ("typical_p", self.typical_p, 1.0), ("dynatemp_range", self.dynatemp_range, 0.0),
            ("xtc_probability", self.xtc_probability, 0.0), ("dry_multiplier", self.dry_multiplier, 0.0)];
        for (field, value, off) in off {
            if value.is_some_and(|v| v != off) {
                return Err(ApiError::invalid(field, format!("`{field}` is not supported here: only {off} (off) is taken; use temperature, top_k, top_p, min_p and the penalties")));
            }
        }
        if self.top_n_sigma.is_some_and(|v| v > 0.0) {
            return Err(ApiError::invalid("top_n_sigma", "`top_n_sigma` is not supported here: only -1 (off) is taken"));
        }
        if self.post_sampling_probs == Some(true) {
            return Err(ApiError::invalid(
                "post_sampling_probs",
                "`post_sampling_probs: true` is not supported here: `n_probs` reports the model's log-probabilities before sampling (`logprob`, `top_logprobs`), as `false` does",
            ));
        }
        Ok(())
    }

    /// The engine's parameters for a prompt of `prompt_len` tokens, and the same request as
    /// OpenAI's fields (to check a held output against).
    pub fn params(&self, engine: &EngineHandle, prompt_len: usize) -> Result<(SamplingParams, SamplingFields), ApiError> {
        self.refuse_missing_samplers()?;
        let chain = Chain::parse(self.samplers.as_ref())?;
        let max_tokens = match self.n_predict {
            None | Some(-1) => None,
            Some(n) if n >= 0 => Some(n),
            Some(n) => return Err(ApiError::invalid("n_predict", format!("`n_predict` must be -1 (no limit) or at least 0, got {n}"))),
        };
        let n_probs = match self.n_probs {
            None | Some(0) => None,
            Some(k) if (1..=MAX_LOGPROBS as i64).contains(&k) => Some(k as usize),
            Some(k) => return Err(ApiError::invalid("n_probs", format!("`n_probs` must be in [0, {MAX_LOGPROBS}], got {k}"))),
        };
        if max_tokens == Some(0) {
            // llama.cpp's "evaluate the prompt only" (editor plugins send it to warm the prompt
            // cache): the prompt is computed (and its blocks cached), nothing is sampled. The
            // engine's prompt-only request is the pooling one; its result is not read.
            let params = SamplingParams { embed: true, max_tokens: 0, ..Default::default() };
            return Ok((params, SamplingFields { max_tokens: Some(0), ..Default::default() }));
        }
        let window = match self.repeat_last_n {
            None => REPEAT_LAST_N,
            // The whole context: every token of the sequence.
            Some(-1) => usize::MAX,
            Some(n) if n >= 0 => n as usize,
            Some(n) => return Err(ApiError::invalid("repeat_last_n", format!("`repeat_last_n` must be -1 (the whole context) or at least 0, got {n}"))),
        };
        let penalties = chain.penalties && window > 0;
        let fields = SamplingFields {
            max_tokens,
            seed: self.seed.filter(|&s| s >= 0),
            stop: self.stop.clone().map(StringOrList::Many),
            // Without a temperature step llama.cpp draws from the distribution as it is.
            temperature: Some(if chain.temperature { self.temperature.unwrap_or(0.8) } else { 1.0 }),
            top_k: Some(match self.top_k.unwrap_or(40) {
                k if k <= 0 || !chain.top_k => -1,
                k => k,
            }),
            top_p: Some(if chain.top_p { self.top_p.unwrap_or(0.95) } else { 1.0 }),
            min_p: Some(if chain.min_p { self.min_p.unwrap_or(0.05) } else { 0.0 }),
            repetition_penalty: self.repeat_penalty.filter(|_| penalties),
            presence_penalty: self.presence_penalty.filter(|_| penalties),
            frequency_penalty: self.frequency_penalty.filter(|_| penalties),
            ignore_eos: self.ignore_eos,
            ..Default::default()
        };
        let mut params = validate::sampling_params(&fields, engine.tokenizer().vocab_size(), engine.default_max_tokens(prompt_len), n_probs, &Default::default())
            .map_err(|e| match e.param.as_deref() {
                Some("repetition_penalty") => e.with_param("repeat_penalty"),
                Some("max_tokens") => e.with_param("n_predict"),
                _ => e,
            })?;
        params.truncate_first = chain.truncate_first;
        params.penalty_last_n = Some(window);
        params.logit_bias = logit_bias(self.logit_bias.as_ref(), engine.tokenizer())?;
        Ok((params, fields))
    }
}

/// `logit_bias` in llama.cpp's forms: pairs `[id or text, bias or false]`, or an object whose
/// keys are ids or texts. A text biases each of its tokens; `false` bans (-inf). An entry
/// llama.cpp would skip is refused here, naming the field.
fn logit_bias(value: Option<&Value>, tokenizer: &Tokenizer) -> Result<Vec<(u32, f32)>, ApiError> {
    let bad = |message: String| ApiError::invalid("logit_bias", message);
    let entries: Vec<(Value, &Value)> = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(pairs)) => pairs
            .iter()
            .map(|pair| match pair.as_array().map(Vec::as_slice) {
                Some([key, bias]) => Ok((key.clone(), bias)),
                _ => Err(bad(format!("each `logit_bias` entry must be a pair [token id or text, bias or false], got {pair}"))),
            })
            .collect::<Result<_, _>>()?,
        // An object's keys are ids where they read as one (llama.cpp's rule).
        Some(Value::Object(map)) => map.iter().map(|(k, bias)| (k.parse::<u64>().map_or_else(|_| Value::from(k.as_str()), Value::from), bias)).collect(),
        Some(other) => return Err(bad(format!("`logit_bias` must be a list of [token, bias] pairs or an object, got {other}"))),
    };
    let vocab = tokenizer.vocab_size();
    let mut out = Vec::new();
    for (key, bias) in entries {
        let bias = match bias {
            Value::Bool(false) => f32::NEG_INFINITY,
            Value::Number(n) => match n.as_f64() {
                Some(b) if (-100.0..=100.0).contains(&b) => b as f32,
                _ => return Err(bad(format!("`logit_bias` biases must be in [-100, 100] or false (never the token), got {n}"))),
            },
            other => return Err(bad(format!("a `logit_bias` bias must be a number or false (never the token), got {other}"))),
        };
        let ids = match &key {
            Value::Number(n) => match n.as_u64() {
                Some(id) if (id as usize) < vocab => vec![id as u32],
                _ => return Err(bad(format!("token id {n} in `logit_bias` is outside the vocabulary [0, {vocab})"))),
            },
            Value::String(text) => match tokenizer.encode(text) {
                Ok(ids) if !ids.is_empty() => ids,
                Ok(_) => return Err(bad("a `logit_bias` text must not be empty".into())),
                Err(e) => return Err(bad(format!("`logit_bias` text {text:?} could not be tokenized: {e}"))),
            },
            other => return Err(bad(format!("a `logit_bias` token must be an id or a text, got {other}"))),
        };
        out.extend(ids.into_iter().map(|id| (id, bias)));
    }
    Ok(out)
}

/// A step of llama.cpp's sampler chain as this server has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Penalties,
    TopK,
    TopP,
    MinP,
    Temperature,
    /// A sampler this server lacks, whose own field must then be off (DRY, typical-p, XTC,
    /// top-n-sigma): a step that changes nothing.
    Off,
}

impl Step {
    /// By llama.cpp's names (and its alternative spellings) or letters; `Err`: a sampler that
    /// acts here whatever its fields say (infill, adaptive-p), or no sampler.
    fn named(name: &str) -> Result<Self, String> {
        Ok(match name {
            "penalties" | "e" => Self::Penalties,
            "top_k" | "top-k" | "k" => Self::TopK,
            "top_p" | "top-p" | "nucleus" | "p" => Self::TopP,
            "min_p" | "min-p" | "m" => Self::MinP,
            "temperature" | "temp" | "t" => Self::Temperature,
            "dry" | "d" | "typ_p" | "typ-p" | "typical_p" | "typical-p" | "typical" | "typ" | "y" | "xtc" | "x" | "top_n_sigma" | "top-n-sigma" | "s" => Self::Off,
            "infill" | "i" | "adaptive_p" | "adaptive-p" | "a" => return Err(format!("the {name:?} sampler is not supported here")),
            _ => return Err(format!("{name:?} is not a llama.cpp sampler")),
        })
    }
}

/// Which samplers run, from `samplers`: those left out are off (a chain without
/// `temperature` draws at temperature 1). The order must be one this server samples in:
/// penalties first, then top-k, top-p and min-p in that order, with the temperature after
/// them (llama.cpp's default) or before them (vLLM's order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Chain {
    penalties: bool,
    top_k: bool,
    top_p: bool,
    min_p: bool,
    temperature: bool,
    truncate_first: bool,
}

impl Chain {
    fn parse(value: Option<&Value>) -> Result<Self, ApiError> {
        let bad = |message: String| ApiError::invalid("samplers", message);
        let names: Vec<String> = match value {
            None | Some(Value::Null) => return Ok(Self { penalties: true, top_k: true, top_p: true, min_p: true, temperature: true, truncate_first: true }),
            Some(Value::String(letters)) => letters.chars().map(String::from).collect(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_owned).ok_or_else(|| bad(format!("`samplers` must be sampler names or a string of letters, got {v}"))))
                .collect::<Result<_, _>>()?,
            Some(other) => return Err(bad(format!("`samplers` must be a list of sampler names or a string of letters, got {other}"))),
        };
        let steps: Vec<Step> = names.iter().map(|n| Step::named(n)).collect::<Result<_, _>>().map_err(bad)?;
        if let Some(i) = (1..steps.len()).find(|&i| steps[i] != Step::Off && steps[..i].contains(&steps[i])) {
            return Err(bad(format!("`samplers` names {:?} twice", names[i])));
        }
        let at = |step: Step| steps.iter().position(|&s| s == step);
        let cuts: Vec<usize> = [Step::TopK, Step::TopP, Step::MinP].into_iter().filter_map(at).collect();
        let temperature = at(Step::Temperature);
        let in_order = cuts.is_sorted()
            && at(Step::Penalties).is_none_or(|p| cuts.iter().chain(&temperature).all(|&c| p < c))
            && temperature.is_none_or(|t| cuts.iter().all(|&c| c < t) || cuts.iter().all(|&c| c > t));
        if !in_order {
            return Err(bad(format!(
                "`samplers` {names:?} is not an order this server samples in: penalties first, then top_k, top_p and min_p in that order, with temperature after them (llama.cpp's default) or before them"
            )));
        }
        Ok(Self {
            penalties: at(Step::Penalties).is_some(),
            top_k: at(Step::TopK).is_some(),
            top_p: at(Step::TopP).is_some(),
            min_p: at(Step::MinP).is_some(),
            temperature: temperature.is_some(),
            truncate_first: temperature.is_none_or(|t| cuts.iter().all(|&c| c < t)),
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::engine::sequence::tests::byte_level_tokenizer;

    #[test]
    fn logit_bias_takes_llama_cpp_forms() {
        let tokenizer = byte_level_tokenizer(json!({"a": 0, "b": 1, "c": 2}));
        let bias = |v: Value| logit_bias(Some(&v), &tokenizer);
        let ban = f32::NEG_INFINITY;
        assert_eq!(bias(json!([[2, -1.5], [0, false]])).unwrap(), [(2, -1.5), (0, ban)]);
        // A text: each of its tokens; an object's keys: ids where they read as one.
        assert_eq!(bias(json!([["ab", 3]])).unwrap(), [(0, 3.0), (1, 3.0)]);
        assert_eq!(bias(json!({"1": false, "c": 2})).unwrap(), [(1, ban), (2, 2.0)]);
        for wrong in [json!([[3, 1.0]]), json!([[0, true]]), json!([[0, 101]]), json!([[0]]), json!([["", 1]]), json!([[[0], 1]]), json!(5)] {
            assert_eq!(bias(wrong.clone()).err().and_then(|e| e.param).as_deref(), Some("logit_bias"), "{wrong}");
        }
    }

    #[test]
    fn samplers_turn_steps_off_and_set_the_temperatures_place() {
        let chain = |v: Value| Chain::parse(Some(&v));
        let all = Chain { penalties: true, top_k: true, top_p: true, min_p: true, temperature: true, truncate_first: true };
        assert_eq!(Chain::parse(None).unwrap(), all);
        // llama.cpp's default chain, by names and by letters.
        let default = json!(["penalties", "dry", "top_n_sigma", "top_k", "typ_p", "top_p", "min_p", "xtc", "temperature"]);
        assert_eq!(chain(default).unwrap(), all);
        assert_eq!(chain(json!("edskypmxt")).unwrap(), all);
        assert_eq!(chain(json!(["temperature", "top_k"])).unwrap(), Chain { penalties: false, top_k: true, top_p: false, min_p: false, temperature: true, truncate_first: false });
        assert_eq!(chain(json!(["min_p"])).unwrap(), Chain { penalties: false, top_k: false, top_p: false, min_p: true, temperature: false, truncate_first: true });
        // Orders this server does not sample in, unknown names, repeats.
        for wrong in [json!(["top_p", "top_k"]), json!(["top_k", "temperature", "min_p"]), json!(["temperature", "penalties"]), json!(["top_k", "mirostat"]), json!("kq"), json!(["infill"]), json!(["top_k", "top_k"]), json!([1])] {
            assert_eq!(chain(wrong.clone()).err().and_then(|e| e.param).as_deref(), Some("samplers"), "{wrong}");
        }
    }

    #[test]
    fn samplers_and_modes_this_server_lacks_are_refused_by_name() {
        let refused = |body: Value| {
            let sampling: LlamaSampling = serde_json::from_value(body).unwrap();
            sampling.refuse_missing_samplers().err().and_then(|e| e.param)
        };
        assert_eq!(refused(json!({"post_sampling_probs": true})).as_deref(), Some("post_sampling_probs"));
        assert_eq!(refused(json!({"mirostat": 2})).as_deref(), Some("mirostat"));
        assert_eq!(refused(json!({"top_n_sigma": 1.5})).as_deref(), Some("top_n_sigma"));
        // Their off values, as llama.cpp's web UI sends them, are taken.
        assert_eq!(refused(json!({"post_sampling_probs": false, "mirostat": 0, "typical_p": 1.0, "top_n_sigma": -1.0})), None);
    }
}
