//! Writes a GGUF model out as a Hugging Face folder (f32 safetensors, config, tokenizer,
//! template), so that one set of real weights exercises both loading paths.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use qwen_serve_models::gguf_tensor_name;
use serde_json::json;

use super::gguf_files::GgufFiles;
use super::{gguf::gguf_config, LoadError};
use crate::tokenizer::{ChatTemplateSources, Tokenizer};

/// The Hugging Face names of a Qwen checkpoint with `num_layers` layers.
fn hf_tensor_names(num_layers: usize) -> Vec<String> {
    let mut names: Vec<String> = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"].map(String::from).into();
    for i in 0..num_layers {
        for module in [
            "input_layernorm.weight",
            "post_attention_layernorm.weight",
            "self_attn.q_proj.weight",
            "self_attn.q_proj.bias",
            "self_attn.k_proj.weight",
            "self_attn.k_proj.bias",
            "self_attn.v_proj.weight",
            "self_attn.v_proj.bias",
            "self_attn.o_proj.weight",
            "self_attn.q_norm.weight",
            "self_attn.k_norm.weight",
            "mlp.gate_proj.weight",
            "mlp.up_proj.weight",
            "mlp.down_proj.weight",
        ] {
            names.push(format!("model.layers.{i}.{module}"));
        }
    }
    names
}

pub fn export_hf_folder(gguf: &Path, out: &Path) -> Result<(), LoadError> {
    let format = |reason: String| LoadError::Format { path: gguf.to_path_buf(), reason };
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| LoadError::Io { path, source }
    };
    let files = GgufFiles::open(gguf)?;
    let content = &files.content;
    let config = gguf_config(content).map_err(format)?;
    if config.architecture().is_moe() {
        // The expert tensors would need unstacking into per-expert names; not done here.
        return Err(format(format!("exporting a `{}` (MoE) GGUF is not supported", config.model_type)));
    }
    std::fs::create_dir_all(out).map_err(io(out))?;

    let mut tensors = HashMap::new();
    for hf in hf_tensor_names(config.num_hidden_layers) {
        let gguf_name = gguf_tensor_name(&hf).expect("every listed name maps");
        if !content.tensor_infos.contains_key(&gguf_name) {
            continue;
        }
        let q = files.tensor(&gguf_name, &Device::Cpu).map_err(|e| format(e.to_string()))?;
        let t: Tensor = q.dequantize(&Device::Cpu).and_then(|t| t.to_dtype(DType::F32)).map_err(|e| format(e.to_string()))?;
        tensors.insert(hf, t);
    }
    let weights = out.join("model.safetensors");
    candle_core::safetensors::save(&tensors, &weights).map_err(|e| format(e.to_string()))?;

    let mut config_json = serde_json::to_value(&config).expect("config serialises");
    let arch = if config.model_type == "qwen3" { "Qwen3ForCausalLM" } else { "Qwen2ForCausalLM" };
    config_json["architectures"] = json!([arch]);
    config_json["torch_dtype"] = json!("float32");
    write(out, "config.json", &config_json.to_string())?;

    let tokenizer = Tokenizer::from_gguf(&content.metadata)?;
    write(out, "tokenizer.json", &tokenizer.inner().to_string(false).map_err(|e| format(e.to_string()))?)?;
    let token_text = |key: &str| {
        content.metadata.get(key).and_then(|v| v.to_u32().ok()).and_then(|id| tokenizer.id_to_token(id))
    };
    let template = ChatTemplateSources::from_gguf(&content.metadata)?.map(|s| s.default);
    let tokenizer_config = json!({
        "chat_template": template,
        "eos_token": token_text("tokenizer.ggml.eos_token_id"),
        "pad_token": token_text("tokenizer.ggml.padding_token_id"),
        "bos_token": null,
    });
    write(out, "tokenizer_config.json", &tokenizer_config.to_string())
}

fn write(dir: &Path, name: &str, text: &str) -> Result<(), LoadError> {
    let path = dir.join(name);
    std::fs::write(&path, text).map_err(|source| LoadError::Io { path, source })
}
