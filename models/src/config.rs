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

#[cfg(test)]
mod tests {
    use super::ModelConfig;

    fn moe(extra: &str) -> Result<ModelConfig, crate::ModelError> {
        ModelConfig::from_json(&format!(
            r#"{{"model_type": "qwen3_moe", "vocab_size": 8, "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 4,
                "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 8, "rms_norm_eps": 1e-6{extra}}}"#
        ))
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
        let qwen2 = |extra: &str| {
            ModelConfig::from_json(&format!(
                r#"{{"model_type": "qwen2_moe", "vocab_size": 8, "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1,
                    "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 8, "rms_norm_eps": 1e-6,
                    "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 4{extra}}}"#
            ))
            .unwrap()
        };
        let cfg = qwen2(r#", "attention_bias": false"#);
        assert!(cfg.attention_bias());
        assert_eq!(cfg.shared_expert_intermediate_size, 5632);
        let cfg = qwen2(r#", "qkv_bias": false, "shared_expert_intermediate_size": 16"#);
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
}
