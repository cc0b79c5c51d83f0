//! The model hyper-parameters, read from a Hugging Face `config.json` (GGUF metadata is mapped
//! onto the same struct by the loader).

use serde::{Deserialize, Serialize};

use crate::ModelError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// Qwen2 and Qwen2.5: q/k/v projections carry a bias.
    Qwen2,
    /// Qwen3 (dense): no attention bias, RMSNorm on each head's q and k.
    Qwen3,
    /// Qwen1.5-MoE / Qwen2-MoE: Qwen2's attention; sparse layers route each token to its top-k
    /// experts and add a shared expert behind a sigmoid gate.
    Qwen2Moe,
    /// Qwen3-MoE: Qwen3's attention; sparse layers route each token to its top-k experts.
    Qwen3Moe,
}

impl Architecture {
    /// `model_type` values this build serves.
    pub const SUPPORTED: &'static [&'static str] = &["qwen2", "qwen3", "qwen2_moe", "qwen3_moe"];

    /// A Hugging Face `model_type`, or a GGUF `general.architecture` (llama.cpp spells the MoE
    /// ones without the underscore).
    pub fn from_model_type(model_type: &str) -> Option<Self> {
        match model_type {
            "qwen2" => Some(Self::Qwen2),
            "qwen3" => Some(Self::Qwen3),
            "qwen2_moe" | "qwen2moe" => Some(Self::Qwen2Moe),
            "qwen3_moe" | "qwen3moe" => Some(Self::Qwen3Moe),
            _ => None,
        }
    }

    /// RMSNorm on each head's q and k (the Qwen3 family).
    pub fn qk_norm(self) -> bool {
        matches!(self, Self::Qwen3 | Self::Qwen3Moe)
    }

    pub fn is_moe(self) -> bool {
        matches!(self, Self::Qwen2Moe | Self::Qwen3Moe)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ModelConfig {
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    /// Qwen3 sets it explicitly; Qwen2 implies `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    pub max_position_embeddings: usize,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Qwen3 has it (false); Qwen2 leaves it out and always has q/k/v biases.
    #[serde(default)]
    pub attention_bias: Option<bool>,
    #[serde(default)]
    pub use_sliding_window: bool,
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    /// Where set, transformers takes YaRN's original context from here over `rope_scaling`'s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_max_position_embeddings: Option<usize>,
    /// Rotary embedding on a fraction of each head (Qwen uses all of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial_rotary_factor: Option<f64>,
    /// transformers >= 5 writes `{"rope_theta", "rope_type"}` here (and may omit `rope_theta`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<serde_json::Value>,
    /// Qwen2-MoE's spelling of `attention_bias` (transformers writes it; the Hub's configs leave
    /// it out and mean true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qkv_bias: Option<bool>,
    /// MoE: routed experts per sparse layer (transformers 5 writes `num_local_experts`).
    #[serde(default, alias = "num_local_experts")]
    pub num_experts: usize,
    /// MoE: experts each token is routed to.
    #[serde(default)]
    pub num_experts_per_tok: usize,
    /// MoE: each routed expert's SwiGLU width.
    #[serde(default)]
    pub moe_intermediate_size: usize,
    /// Qwen2-MoE: the shared expert's width (0: none; transformers' 5632 when a `qwen2_moe`
    /// config.json leaves it out).
    #[serde(default)]
    pub shared_expert_intermediate_size: usize,
    /// MoE: renormalise the top-k routing probabilities to sum to 1 (Qwen3-MoE does).
    #[serde(default)]
    pub norm_topk_prob: bool,
    /// MoE: every `decoder_sparse_step`-th layer is sparse (the rest dense)...
    #[serde(default = "one")]
    pub decoder_sparse_step: usize,
    /// ...except these, which are dense.
    #[serde(default)]
    pub mlp_only_layers: Vec<usize>,
}

/// The longest context served (positions stay exact in f32).
pub const MAX_CONTEXT: usize = 1 << 24;

fn one() -> usize {
    1
}

fn default_rope_theta() -> f64 {
    10_000.0
}

impl ModelConfig {
    pub fn from_json(text: &str) -> Result<Self, ModelError> {
        let mut cfg: Self = serde_json::from_str(text).map_err(|e| ModelError::Config(e.to_string()))?;
        let raw: serde_json::Value = serde_json::from_str(text).expect("parsed above");
        if cfg.model_type == "qwen2_moe" && raw.get("shared_expert_intermediate_size").is_none() {
            cfg.shared_expert_intermediate_size = 5632;
        }
        cfg.take_rope_theta()?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// This config with its `rope_scaling` replaced (`--rope-scaling`, as vLLM's flag: how a
    /// checkpoint or GGUF without YaRN in its config gets it), checked.
    pub fn with_rope_scaling(mut self, scaling: serde_json::Value) -> Result<Self, ModelError> {
        self.rope_scaling = Some(scaling);
        self.take_rope_theta()?;
        self.validate()?;
        Ok(self)
    }

    /// transformers: the rope parameters' own `rope_theta` first, then the top-level one.
    fn take_rope_theta(&mut self) -> Result<(), ModelError> {
        if let Some(theta) = self.rope_params().and_then(|(_, p)| p.get("rope_theta").cloned()) {
            self.rope_theta = theta.as_f64().filter(|t| *t > 0.0).ok_or(ModelError::Config(format!("`rope_theta` must be a positive number, got {theta}")))?;
        }
        Ok(())
    }

    pub fn architecture(&self) -> Architecture {
        Architecture::from_model_type(&self.model_type).expect("validated")
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// q/k/v biases: Qwen2 always has them; Qwen2-MoE as `qkv_bias` says (transformers reads
    /// only that field there; the Hub's configs leave it out and mean true); Qwen3 as
    /// `attention_bias` says (false when absent).
    pub fn attention_bias(&self) -> bool {
        match self.architecture() {
            Architecture::Qwen2 => self.attention_bias.unwrap_or(true),
            Architecture::Qwen2Moe => self.qkv_bias.unwrap_or(true),
            Architecture::Qwen3 | Architecture::Qwen3Moe => self.attention_bias.unwrap_or(false),
        }
    }

    /// Whether layer `i` routes its tokens to experts (as transformers decides it): an MoE
    /// model's every `decoder_sparse_step`-th layer, less `mlp_only_layers`.
    pub fn sparse_layer(&self, i: usize) -> bool {
        self.architecture().is_moe()
            && self.num_experts > 0
            && (i + 1) % self.decoder_sparse_step == 0
            && !self.mlp_only_layers.contains(&i)
    }

    /// Rejects what this implementation would silently compute wrongly.
    pub fn validate(&self) -> Result<(), ModelError> {
        let err = |m: String| Err(ModelError::Config(m));
        if Architecture::from_model_type(&self.model_type).is_none() {
            return err(format!(
                "unsupported architecture `{}`; supported: {}",
                self.model_type,
                Architecture::SUPPORTED.join(", ")
            ));
        }
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return err(format!("`{name}` must be positive"));
            }
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return err(format!(
                "`num_attention_heads` ({}) must be a multiple of `num_key_value_heads` ({})",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if self.head_dim() == 0 || self.head_dim() % 2 != 0 {
            return err(format!("head dimension {} must be even and positive", self.head_dim()));
        }
        if self.architecture().is_moe() {
            for (name, v) in [
                ("num_experts", self.num_experts),
                ("num_experts_per_tok", self.num_experts_per_tok),
                ("moe_intermediate_size", self.moe_intermediate_size),
                ("decoder_sparse_step", self.decoder_sparse_step),
            ] {
                if v == 0 {
                    return err(format!("`{name}` must be positive for `{}`", self.model_type));
                }
            }
            if self.num_experts_per_tok > self.num_experts {
                return err(format!(
                    "`num_experts_per_tok` ({}) exceeds `num_experts` ({})",
                    self.num_experts_per_tok, self.num_experts
                ));
            }
        }
        if self.use_sliding_window {
            return err("`use_sliding_window: true` is not supported".into());
        }
        if let Some(f) = self.partial_rotary_factor.filter(|&f| f != 1.0) {
            return err(format!("`partial_rotary_factor` {f} is not supported (only 1)"));
        }
        self.rope()?;
        // The rotary tables hold a row per position, and f32 positions are exact up to 2^24.
        if self.context_length() > MAX_CONTEXT {
            return err(format!("a context of {} tokens (`max_position_embeddings` stretched by its rope scaling) is more than the {MAX_CONTEXT} served", self.context_length()));
        }
        Ok(())
    }

    /// The rotary scaling `rope_scaling` (the Hub's spelling) or, when that is absent,
    /// transformers 5's `rope_parameters` asks for, read as transformers reads it.
    pub fn rope(&self) -> Result<RopeScaling, ModelError> {
        for (field, v) in [("rope_scaling", &self.rope_scaling), ("rope_parameters", &self.rope_parameters)] {
            if let Some(v) = v.as_ref().filter(|v| !v.is_null() && !v.is_object()) {
                return Err(ModelError::Config(format!("`{field}` must be an object, got {v}")));
            }
        }
        match self.rope_params() {
            None => Ok(RopeScaling::None),
            Some((field, params)) => RopeScaling::from_params(params, self.max_position_embeddings, self.original_max_position_embeddings)
                .map_err(|m| ModelError::Config(format!("`{field}`: {m}"))),
        }
    }

    /// The object the rope parameters are read from, as transformers 5 picks it: a non-empty
    /// `rope_scaling` over `rope_parameters`.
    fn rope_params(&self) -> Option<(&'static str, &serde_json::Value)> {
        fn present(v: &Option<serde_json::Value>) -> Option<&serde_json::Value> {
            v.as_ref().filter(|v| v.as_object().is_some_and(|o| !o.is_empty()))
        }
        present(&self.rope_scaling).map(|p| ("rope_scaling", p)).or(present(&self.rope_parameters).map(|p| ("rope_parameters", p)))
    }

    /// The longest sequence the model serves: `max_position_embeddings`, stretched by rope
    /// scaling as vLLM stretches it (YaRN: `original_max_position_embeddings * factor`;
    /// linear: `max_position_embeddings * factor`).
    pub fn context_length(&self) -> usize {
        match self.rope() {
            // `as` saturates: an absurd factor is refused by `validate`, not wrapped.
            Ok(RopeScaling::Yarn(y)) => (y.original_max_position_embeddings as f64 * y.factor) as usize,
            Ok(RopeScaling::Linear { factor }) => (self.max_position_embeddings as f64 * factor) as usize,
            _ => self.max_position_embeddings,
        }
    }
}

/// How positions become rotary angles.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    /// Angle `position * theta^(-2i / head_dim)`.
    None,
    /// Positions divided by `factor`.
    Linear { factor: f64 },
    /// YaRN, static (as transformers and vLLM apply it, at every length).
    Yarn(Yarn),
}

/// YaRN's parameters (arXiv 2309.00071): frequencies that turn fewer than `beta_slow` times
/// over the original context are interpolated (divided by `factor`), those that turn more
/// than `beta_fast` times are kept, a linear ramp between; cos and sin are multiplied by
/// `attention_factor`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Yarn {
    pub factor: f64,
    pub original_max_position_embeddings: usize,
    pub attention_factor: f64,
    pub beta_fast: f64,
    pub beta_slow: f64,
    /// Round the ramp's ends outwards to whole dimensions (transformers' default).
    pub truncate: bool,
}

impl RopeScaling {
    /// The rope types served, for error messages.
    pub const SUPPORTED: &'static str = "default, linear, yarn";

    /// `top_level_original`: a config's own `original_max_position_embeddings`, which
    /// transformers puts over the one in the rope parameters.
    fn from_params(p: &serde_json::Value, max_position_embeddings: usize, top_level_original: Option<usize>) -> Result<Self, String> {
        let kind = p.get("rope_type").or_else(|| p.get("type")).map(|t| t.as_str().ok_or(format!("`rope_type` must be a string, got {t}"))).transpose()?;
        let number = |key: &str| -> Result<Option<f64>, String> {
            match p.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(v) => v.as_f64().filter(|x| x.is_finite()).map(Some).ok_or(format!("`{key}` must be a number, got {v}")),
            }
        };
        if let Some(f) = number("partial_rotary_factor")? {
            if f != 1.0 {
                return Err(format!("`partial_rotary_factor` {f} is not supported (only 1)"));
            }
        }
        // transformers requires the key; a null `factor` in YaRN is the ratio of the lengths.
        let factor = |null: Option<f64>| -> Result<f64, String> {
            if p.get("factor").is_none() {
                return Err("`factor` is missing".into());
            }
            let factor = number("factor")?.or(null).ok_or("`factor` is missing")?;
            if factor < 1.0 {
                return Err(format!("`factor` must be at least 1, got {factor}"));
            }
            Ok(factor)
        };
        match kind.unwrap_or("default") {
            "default" => Ok(Self::None),
            "linear" => Ok(Self::Linear { factor: factor(None)? }),
            "yarn" => {
                let original = match (top_level_original, number("original_max_position_embeddings")?) {
                    (Some(n), _) if n > 0 => n,
                    (Some(n), _) => return Err(format!("`original_max_position_embeddings` must be a positive integer, got {n}")),
                    (None, None) => max_position_embeddings,
                    (None, Some(n)) if n >= 1.0 && n.fract() == 0.0 => n as usize,
                    (None, Some(n)) => return Err(format!("`original_max_position_embeddings` must be a positive integer, got {n}")),
                };
                // transformers: with no factor, the ratio of the two lengths.
                let factor = factor(Some(max_position_embeddings as f64 / original as f64))?;
                let mscale = |scale: f64, m: f64| if scale <= 1.0 { 1.0 } else { 0.1 * m * scale.ln() + 1.0 };
                let attention_factor = match (number("attention_factor")?, number("mscale")?, number("mscale_all_dim")?) {
                    (Some(a), _, _) => a,
                    (None, Some(m), Some(all)) if m != 0.0 && all != 0.0 => mscale(factor, m) / mscale(factor, all),
                    _ => mscale(factor, 1.0),
                };
                // transformers reads these with `or`: 0 means the default too.
                let beta = |key: &str, default: f64| number(key).map(|b| b.filter(|&b| b != 0.0).unwrap_or(default));
                // transformers: `get("truncate", True)`, so an explicit null is false.
                let truncate = match p.get("truncate") {
                    None => true,
                    Some(serde_json::Value::Null) => false,
                    Some(v) => v.as_bool().ok_or(format!("`truncate` must be a boolean, got {v}"))?,
                };
                let yarn = Yarn { factor, original_max_position_embeddings: original, attention_factor, beta_fast: beta("beta_fast", 32.0)?, beta_slow: beta("beta_slow", 1.0)?, truncate };
                if yarn.attention_factor <= 0.0 || yarn.beta_fast <= 0.0 || yarn.beta_slow <= 0.0 {
                    return Err(format!("`attention_factor`, `beta_fast` and `beta_slow` must be positive, got {}, {} and {}", yarn.attention_factor, yarn.beta_fast, yarn.beta_slow));
                }
                Ok(Self::Yarn(yarn))
            }
            other => Err(format!("rope type `{other}` is not supported; supported: {}", Self::SUPPORTED)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{ModelConfig, RopeScaling, Yarn};

    /// A tiny config of `model_type` with `layers` layers, `max_positions` positions and `extra`
    /// fields (`, "key": value, ...`).
    fn config(model_type: &str, layers: usize, max_positions: usize, extra: &str) -> Result<ModelConfig, crate::ModelError> {
        ModelConfig::from_json(&format!(
            r#"{{"model_type": "{model_type}", "vocab_size": 8, "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": {layers},
                "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": {max_positions}, "rms_norm_eps": 1e-6{extra}}}"#
        ))
    }

    fn moe(extra: &str) -> Result<ModelConfig, crate::ModelError> {
        config("qwen3_moe", 4, 8, extra)
    }

    fn qwen2(extra: &str) -> Result<ModelConfig, crate::ModelError> {
        config("qwen2", 1, 32768, extra)
    }

    #[test]
    fn moe_configs_are_checked_and_say_which_layers_are_sparse() {
        let cfg = moe(r#", "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 4, "decoder_sparse_step": 2, "mlp_only_layers": [3]"#).unwrap();
        assert_eq!((0..4).map(|i| cfg.sparse_layer(i)).collect::<Vec<_>>(), [false, true, false, false]);
        // transformers 5 spells the expert count `num_local_experts`.
        let cfg = moe(r#", "num_local_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 4"#).unwrap();
        assert_eq!(cfg.num_experts, 4);
        assert!((0..4).all(|i| cfg.sparse_layer(i)));
        assert!(!cfg.attention_bias() && cfg.shared_expert_intermediate_size == 0);
        // Qwen2-MoE as transformers reads it: biases from `qkv_bias` alone (true when absent),
        // a 5632-wide shared expert when its width is left out.
        let qwen2_moe = |extra: &str| config("qwen2_moe", 1, 8, &format!(r#", "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 4{extra}"#)).unwrap();
        let cfg = qwen2_moe(r#", "attention_bias": false"#);
        assert!(cfg.attention_bias());
        assert_eq!(cfg.shared_expert_intermediate_size, 5632);
        let cfg = qwen2_moe(r#", "qkv_bias": false, "shared_expert_intermediate_size": 16"#);
        assert!(!cfg.attention_bias());
        assert_eq!(cfg.shared_expert_intermediate_size, 16);
        for (extra, field) in [
            (r#", "num_experts_per_tok": 2, "moe_intermediate_size": 4"#, "num_experts"),
            (r#", "num_experts": 4, "moe_intermediate_size": 4"#, "num_experts_per_tok"),
            (r#", "num_experts": 4, "num_experts_per_tok": 2"#, "moe_intermediate_size"),
            (r#", "num_experts": 4, "num_experts_per_tok": 5, "moe_intermediate_size": 4"#, "num_experts_per_tok"),
            (r#", "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 4, "decoder_sparse_step": 0"#, "decoder_sparse_step"),
        ] {
            let err = moe(extra).unwrap_err().to_string();
            assert!(err.contains(field), "{extra}: {err}");
        }
    }

    /// Qwen2.5's documented YaRN block (the Hub's `rope_scaling` with `type`), transformers 5's
    /// `rope_parameters` spelling, their defaults, and the context each gives.
    #[test]
    fn rope_scaling_is_read_as_transformers_reads_it() {
        let cfg = qwen2(r#", "rope_scaling": {"factor": 4.0, "original_max_position_embeddings": 32768, "type": "yarn"}"#).unwrap();
        let qwen = Yarn { factor: 4.0, original_max_position_embeddings: 32768, attention_factor: 0.1 * 4f64.ln() + 1.0, beta_fast: 32.0, beta_slow: 1.0, truncate: true };
        assert_eq!(cfg.rope().unwrap(), RopeScaling::Yarn(qwen));
        assert_eq!(cfg.context_length(), 131072);
        // transformers 5: `rope_parameters`, no original length (then max_position_embeddings),
        // an explicit attention factor, betas and truncation.
        let cfg = qwen2(r#", "rope_theta": 10000, "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 2.5, "attention_factor": 1.5, "beta_fast": 8, "beta_slow": 2, "truncate": false}"#).unwrap();
        let want = Yarn { factor: 2.5, original_max_position_embeddings: 32768, attention_factor: 1.5, beta_fast: 8.0, beta_slow: 2.0, truncate: false };
        assert_eq!((cfg.rope().unwrap(), cfg.rope_theta, cfg.context_length()), (RopeScaling::Yarn(want), 1e6, 81920));
        // DeepSeek's mscale pair gives the attention factor; a null factor: the lengths' ratio;
        // a null truncate: none (Python's None).
        let cfg = qwen2(r#", "rope_scaling": {"rope_type": "yarn", "factor": null, "original_max_position_embeddings": 8192, "mscale": 1, "mscale_all_dim": 1, "truncate": null}"#).unwrap();
        let RopeScaling::Yarn(y) = cfg.rope().unwrap() else { panic!("yarn") };
        assert_eq!((y.factor, y.attention_factor, y.truncate), (4.0, 1.0, false));
        // A top-level original context wins over the rope parameters' (as Phi-3 writes it).
        let cfg = qwen2(r#", "original_max_position_embeddings": 4096, "rope_scaling": {"type": "yarn", "factor": 2, "original_max_position_embeddings": 8192}"#).unwrap();
        assert_eq!(cfg.context_length(), 8192);
        for none in [r#", "rope_scaling": null"#, r#", "rope_scaling": {}, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}"#, ""] {
            let cfg = qwen2(none).unwrap();
            assert_eq!((cfg.rope().unwrap(), cfg.context_length()), (RopeScaling::None, 32768), "{none}");
        }
        // The top-level base where the chosen object has none.
        let cfg = qwen2(r#", "rope_theta": 5e5, "rope_scaling": {"type": "linear", "factor": 2}, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}"#).unwrap();
        assert_eq!(cfg.rope_theta, 5e5);
        assert_eq!((cfg.rope().unwrap(), cfg.context_length()), (RopeScaling::Linear { factor: 2.0 }, 65536));

        for (extra, says) in [
            (r#", "rope_scaling": {"type": "dynamic", "factor": 2}"#, "`rope_scaling`: rope type `dynamic` is not supported; supported: default, linear, yarn"),
            (r#", "rope_parameters": {"rope_type": "llama3", "factor": 8}"#, "`rope_parameters`: rope type `llama3`"),
            (r#", "rope_scaling": {"type": "yarn", "factor": 0.5}"#, "`factor` must be at least 1, got 0.5"),
            (r#", "rope_scaling": {"type": "linear"}"#, "`factor` is missing"),
            (r#", "rope_scaling": {"type": "yarn", "factor": "4"}"#, "`factor` must be a number"),
            (r#", "rope_scaling": {"type": "yarn", "factor": 4, "original_max_position_embeddings": 0}"#, "`original_max_position_embeddings` must be a positive integer"),
            (r#", "rope_scaling": {"type": "yarn", "factor": 4, "partial_rotary_factor": 0.5}"#, "`partial_rotary_factor` 0.5 is not supported"),
            (r#", "rope_scaling": "yarn""#, "`rope_scaling` must be an object"),
            (r#", "rope_scaling": {"type": "yarn"}"#, "`factor` is missing"),
            (r#", "partial_rotary_factor": 0.5"#, "`partial_rotary_factor` 0.5 is not supported"),
            (r#", "rope_scaling": {"type": "linear", "factor": 1e30}"#, "is more than the 16777216 served"),
        ] {
            let err = qwen2(extra).unwrap_err().to_string();
            assert!(err.contains(says), "{extra}: {err}");
        }
    }
}
