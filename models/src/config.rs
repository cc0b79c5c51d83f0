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
}

impl Architecture {
    /// `model_type` values this build serves.
    pub const SUPPORTED: &'static [&'static str] = &["qwen2", "qwen3"];

    pub fn from_model_type(model_type: &str) -> Option<Self> {
        match model_type {
            "qwen2" => Some(Self::Qwen2),
            "qwen3" => Some(Self::Qwen3),
            _ => None,
        }
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
    /// transformers >= 5 writes `{"rope_theta", "rope_type"}` here (and may omit `rope_theta`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<serde_json::Value>,
}

fn default_rope_theta() -> f64 {
    10_000.0
}

impl ModelConfig {
    pub fn from_json(text: &str) -> Result<Self, ModelError> {
        let mut cfg: Self = serde_json::from_str(text).map_err(|e| ModelError::Config(e.to_string()))?;
        let raw: serde_json::Value = serde_json::from_str(text).expect("parsed above");
        if raw.get("rope_theta").is_none() {
            if let Some(theta) = cfg.rope_parameters.as_ref().and_then(|p| p.get("rope_theta")).and_then(|t| t.as_f64()) {
                cfg.rope_theta = theta;
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn architecture(&self) -> Architecture {
        Architecture::from_model_type(&self.model_type).expect("validated")
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    pub fn attention_bias(&self) -> bool {
        self.attention_bias.unwrap_or(self.architecture() == Architecture::Qwen2)
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
        if self.use_sliding_window {
            return err("`use_sliding_window: true` is not supported".into());
        }
        if let Some(kind) = self.rope_parameters.as_ref().and_then(|p| p.get("rope_type")).and_then(|t| t.as_str()) {
            if kind != "default" {
                return err(format!("`rope_parameters.rope_type` `{kind}` is not supported"));
            }
        }
        if let Some(s) = &self.rope_scaling {
            if !s.is_null() {
                return err(format!("`rope_scaling` {s} is not supported"));
            }
        }
        Ok(())
    }
}
