//! Turns the `--model` argument into a ready model: weights, config, tokenizer, chat template.
//!
//! Four sources, chosen from the argument: a `.gguf` file, a local Hugging Face folder, a Hub
//! repo id, or a Hub repo id with a GGUF quantization (`owner/name:Q4_K_M`); Hub files are
//! downloaded through hf-hub into the standard Hugging Face cache.

mod export;
mod folder;
mod gguf;
pub(crate) mod gguf_files;
mod hub;
mod progress;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use qwen_serve_models::{CausalLm, ModelConfig, ModelError};
use thiserror::Error;

use crate::engine::sampling_defaults::SamplingDefaults;
use crate::tokenizer::{ChatTemplate, Tokenizer, TokenizerError};

pub use export::export_hf_folder;
pub use gguf::gguf_config;

#[derive(Debug, Error)]
pub enum LoadError {
    #[error("{0}: no such file or directory")]
    NotFound(PathBuf),
    #[error("{path}: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error("unsupported architecture `{found}`; supported: {}", qwen_serve_models::Architecture::SUPPORTED.join(", "))]
    UnsupportedArchitecture { found: String },
    #[error("{0}")]
    Hub(String),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// Where the weights come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    Gguf(PathBuf),
    Folder(PathBuf),
    Hub { repo_id: String, revision: Option<String> },
    /// `owner/name:TAG`: the GGUF file of a Hub repository whose name carries the
    /// quantization `TAG` (llama.cpp's `-hf owner/name:TAG`).
    HubGguf { repo_id: String, tag: String, revision: Option<String> },
}

impl ModelSource {
    /// An existing path is a file or folder; otherwise `owner/name` is a Hub repo id.
    pub fn parse(model: &str, revision: Option<&str>) -> Result<Self, LoadError> {
        let path = Path::new(model);
        if path.is_dir() {
            return Ok(Self::Folder(path.to_path_buf()));
        }
        if path.is_file() {
            return Ok(Self::Gguf(path.to_path_buf()));
        }
        let (repo_id, tag) = match model.rsplit_once(':') {
            Some((repo, tag)) => (repo, Some(tag)),
            None => (model, None),
        };
        // Hub names and quantization tags: letters, digits, `-`, `_`, `.`.
        let name = |p: &str| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        let looks_like_repo = repo_id.split('/').count() == 2
            && !repo_id.starts_with('.')
            && !repo_id.ends_with(".gguf")
            && repo_id.split('/').all(name)
            && tag.is_none_or(name);
        let revision = revision.map(str::to_string);
        if looks_like_repo {
            Ok(match tag {
                Some(tag) => Self::HubGguf { repo_id: repo_id.to_string(), tag: tag.to_string(), revision },
                None => Self::Hub { repo_id: repo_id.to_string(), revision },
            })
        } else {
            Err(LoadError::NotFound(path.to_path_buf()))
        }
    }
}

#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// `None`: keep GGUF matrices quantized and run safetensors in [`default_dtype`] (f32 on
    /// the CPU, bf16 on a GPU). `Some`: dequantize / convert every weight to this dtype.
    pub dtype: Option<DType>,
    /// Safetensors only: quantize projection matrices to this GGUF type at load (CPU).
    pub quantize: Option<candle_core::quantized::GgmlDType>,
    /// Where weights, activations and the KV cache live.
    pub device: Device,
    pub revision: Option<String>,
    /// A Jinja template file that replaces the model's own chat template.
    pub chat_template: Option<PathBuf>,
    /// Replaces the config's `rope_scaling` (`--rope-scaling`).
    pub rope_scaling: Option<serde_json::Value>,
    /// Take requests' sampling defaults from the model's `generation_config.json` (vLLM's
    /// `--generation-config auto`, its default); `false`: OpenAI's (`vllm`).
    pub generation_config: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { dtype: None, quantize: None, device: Device::Cpu, revision: None, chat_template: None, rope_scaling: None, generation_config: true }
    }
}

/// Activations and KV cache when `--dtype` is unset (and safetensors weights): f32 on the CPU,
/// where our kernels are fastest and exact in it; bf16 on a GPU, half the memory and traffic.
pub fn default_dtype(device: &Device) -> DType {
    if device.is_cpu() { DType::F32 } else { DType::BF16 }
}

/// Everything needed to turn text into tokens and tokens into logits.
pub struct LoadedModel {
    pub model: Box<dyn CausalLm>,
    pub tokenizer: Tokenizer,
    pub chat_template: Option<ChatTemplate>,
    /// Tokens that end generation (the model's EOS and its chat end-of-turn marker).
    pub eos_token_ids: Vec<u32>,
    /// A short human-readable name (file or repo id).
    pub name: String,
    /// Sampling defaults for requests: the model folder's `generation_config.json` when
    /// [`LoadOptions::generation_config`] allows it, else OpenAI's.
    pub sampling_defaults: SamplingDefaults,
}

pub fn load(model: &str, opts: &LoadOptions) -> Result<LoadedModel, LoadError> {
    let mut loaded = load_source(model, opts)?;
    if let Some(path) = &opts.chat_template {
        let source = read_to_string(path)?;
        let eos = loaded.eos_token_ids.first().and_then(|&id| loaded.tokenizer.id_to_token(id));
        loaded.chat_template = Some(ChatTemplate::new(&source, None, eos)?);
    }
    release_free_memory();
    Ok(loaded)
}

/// Gives the allocator's free pages back to the system. Loading frees a lot (building the
/// tokenizer from GGUF metadata took ~210 MB transiently for the test model; GGUF blocks are
/// replaced by their repacked copies) and glibc keeps most of it mapped otherwise.
pub(super) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // Safety: malloc_trim only returns unused heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn load_source(model: &str, opts: &LoadOptions) -> Result<LoadedModel, LoadError> {
    match ModelSource::parse(model, opts.revision.as_deref())? {
        ModelSource::Gguf(path) => gguf::load(&path, opts),
        ModelSource::Folder(path) => folder::load(&path, opts),
        ModelSource::Hub { repo_id, revision } => {
            let dir = hub::fetch(&repo_id, revision.as_deref())?;
            let mut loaded = folder::load(&dir, opts)?;
            loaded.name = repo_id;
            Ok(loaded)
        }
        ModelSource::HubGguf { repo_id, tag, revision } => {
            let path = hub::fetch_gguf(&repo_id, &tag, revision.as_deref())?;
            let mut loaded = gguf::load(&path, opts)?;
            loaded.name = format!("{repo_id}:{tag}");
            Ok(loaded)
        }
    }
}

/// `config` with the options' overrides (`--rope-scaling`) applied.
fn configured(config: ModelConfig, opts: &LoadOptions) -> Result<ModelConfig, LoadError> {
    match &opts.rope_scaling {
        None => Ok(config),
        Some(scaling) => config.with_rope_scaling(scaling.clone()).map_err(|e| {
            let why = match e {
                ModelError::Config(m) => m,
                e => e.to_string(),
            };
            LoadError::Model(ModelError::Config(format!("--rope-scaling: {why}")))
        }),
    }
}

/// Adds the end-of-turn and end-of-text markers Qwen chat models stop on, when the vocabulary
/// has them, to the checkpoint's declared EOS ids.
fn stop_tokens(tokenizer: &Tokenizer, declared: impl IntoIterator<Item = u32>) -> Vec<u32> {
    let mut ids: Vec<u32> = declared.into_iter().collect();
    for marker in ["<|im_end|>", "<|endoftext|>"] {
        if let Some(id) = tokenizer.token_to_id(marker) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    ids.dedup();
    ids
}

fn read_to_string(path: &Path) -> Result<String, LoadError> {
    std::fs::read_to_string(path).map_err(|source| LoadError::Io { path: path.to_path_buf(), source })
}
