//! A Hugging Face model folder: `config.json`, `*.safetensors` (one file or sharded with
//! `model.safetensors.index.json`), `tokenizer.json`, and optionally `tokenizer_config.json`
//! and `generation_config.json`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use qwen_serve_models::{Architecture, ModelConfig, Weights};
use serde_json::Value;

use super::{read_to_string, stop_tokens, LoadError, LoadOptions, LoadedModel};
use crate::engine::sampling_defaults::SamplingDefaults;
use crate::tokenizer::{special_token_from_config, ChatTemplate, ChatTemplateSources, Tokenizer};

pub(super) fn load(dir: &Path, opts: &LoadOptions) -> Result<LoadedModel, LoadError> {
    let config_path = dir.join("config.json");
    if !config_path.is_file() {
        return Err(LoadError::Format {
            path: dir.to_path_buf(),
            reason: "no config.json: not a Hugging Face model folder".into(),
        });
    }
    let config_text = read_to_string(&config_path)?;
    let config_json: Value = serde_json::from_str(&config_text)
        .map_err(|e| LoadError::Format { path: config_path.clone(), reason: e.to_string() })?;
    let model_type = config_json.get("model_type").and_then(Value::as_str).unwrap_or("<missing model_type>");
    if Architecture::from_model_type(model_type).is_none() {
        return Err(LoadError::UnsupportedArchitecture { found: model_type.to_string() });
    }
    let config = super::configured(ModelConfig::from_json(&config_text)?, opts)?;

    let files = safetensors_files(dir)?;
    // On the CPU a checkpoint's bf16 is converted to f32 on load.
    let dtype = opts.dtype.unwrap_or_else(|| super::default_dtype(&opts.device));
    let weights = Weights::from_safetensors(&files, dtype, &opts.device)?.quantized_to(opts.quantize);
    let model = qwen_serve_models::load_model(&config, &weights)?;

    let tokenizer_path = dir.join("tokenizer.json");
    if !tokenizer_path.is_file() {
        return Err(LoadError::Format { path: dir.to_path_buf(), reason: "no tokenizer.json".into() });
    }
    let tokenizer = Tokenizer::from_file(&tokenizer_path)?;
    let tok_config = read_json_if_exists(&dir.join("tokenizer_config.json"))?;
    let special = |key: &str| tok_config.as_ref().and_then(|c| special_token_from_config(c, key));
    let sources = match &tok_config {
        Some(c) => ChatTemplateSources::from_tokenizer_config(c)?,
        None => None,
    };
    // Newer checkpoints keep the template in its own file.
    let sources = sources.or_else(|| {
        let source = std::fs::read_to_string(dir.join("chat_template.jinja")).ok()?;
        Some(ChatTemplateSources { default: source, tool_use: None })
    });
    let chat_template = sources
        .map(|s| ChatTemplate::from_sources(&s, special("bos_token"), special("eos_token")))
        .transpose()?;
    let mut eos = ids_of(config_json.get("eos_token_id"));
    let mut sampling_defaults = SamplingDefaults::default();
    if let Some(gen) = read_json_if_exists(&dir.join("generation_config.json"))? {
        eos.extend(ids_of(gen.get("eos_token_id")));
        if opts.generation_config {
            let notes;
            (sampling_defaults, notes) = SamplingDefaults::from_generation_config(&gen);
            if !notes.is_empty() {
                tracing::info!(
                    "sampling defaults from generation_config.json (a request's own values win; --generation-config vllm ignores these): {}",
                    notes.join(", ")
                );
            }
        }
    }
    if let Some(id) = special("eos_token").and_then(|t| tokenizer.token_to_id(&t)) {
        eos.push(id);
    }
    let eos_token_ids = stop_tokens(&tokenizer, eos);
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    Ok(LoadedModel { model, tokenizer, chat_template, eos_token_ids, name, sampling_defaults })
}

/// `eos_token_id` is an integer or a list of them.
fn ids_of(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|id| vec![id as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_u64).map(|id| id as u32).collect(),
        _ => vec![],
    }
}

fn read_json_if_exists(path: &Path) -> Result<Option<Value>, LoadError> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = read_to_string(path)?;
    serde_json::from_str(&text).map(Some).map_err(|e| LoadError::Format { path: path.to_path_buf(), reason: e.to_string() })
}

/// The shards named by the index, else `model.safetensors`, else every `*.safetensors`.
fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let index = dir.join("model.safetensors.index.json");
    if let Some(index_json) = read_json_if_exists(&index)? {
        let map = index_json.get("weight_map").and_then(Value::as_object).ok_or_else(|| LoadError::Format {
            path: index.clone(),
            reason: "no `weight_map` object".into(),
        })?;
        let shards: BTreeSet<&str> = map.values().filter_map(Value::as_str).collect();
        return shards
            .into_iter()
            .map(|s| {
                let p = dir.join(s);
                if p.is_file() { Ok(p) } else { Err(LoadError::NotFound(p)) }
            })
            .collect();
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| LoadError::Io { path: dir.to_path_buf(), source })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(LoadError::Format { path: dir.to_path_buf(), reason: "no *.safetensors weights".into() });
    }
    Ok(files)
}
