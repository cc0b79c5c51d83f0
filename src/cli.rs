//! Flags shared by the subcommands, documented where declared.

use candle_core::DType;

use crate::device::DeviceArg;
use crate::loader::LoadOptions;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum DtypeArg {
    F32,
    Bf16,
    F16,
}

/// `--quantize` types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum QuantizeArg {
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q4k")]
    Q4k,
    /// Not quantized: stored in bf16 (half f32's memory), multiplied in f32.
    #[value(name = "bf16")]
    Bf16,
    #[value(name = "f16")]
    F16,
}

impl From<DtypeArg> for DType {
    fn from(d: DtypeArg) -> Self {
        match d {
            DtypeArg::F32 => DType::F32,
            DtypeArg::Bf16 => DType::BF16,
            DtypeArg::F16 => DType::F16,
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// A `.gguf` file, a local Hugging Face model folder, or a Hub repo id
    /// (`Qwen/Qwen2.5-0.5B-Instruct`; uses the Hugging Face cache, HF_TOKEN, HF_HUB_OFFLINE).
    #[arg(long, env = "QWEN_SERVE_MODEL")]
    pub model: String,
    /// Hub revision (branch, tag or commit) when --model is a repo id.
    #[arg(long)]
    pub revision: Option<String>,
    /// Weight dtype. Unset: GGUF matrices stay quantized (fastest, least memory) and
    /// safetensors run in f32 on the CPU, bf16 on a GPU (activations and KV cache likewise;
    /// a quantized GGUF's activations are f32 on the CPU, bf16 on a GPU). Set: every weight is
    /// dequantized/converted to it.
    #[arg(long, value_enum)]
    pub dtype: Option<DtypeArg>,
    /// Quantize a safetensors model's projection matrices at load time for the CPU kernels:
    /// `q8_0`, or `q4k` (Q4_K where the input width is a multiple of 256, Q8_0 elsewhere); or
    /// store them in `bf16` / `f16` under f32 activations (half the memory, f32 arithmetic).
    /// Embeddings, norms and biases stay as they are. A GGUF keeps its own types.
    #[arg(long, value_enum)]
    pub quantize: Option<QuantizeArg>,
    /// `cpu`, `cuda` or `cuda:N`. Default: CUDA device 0 when this binary was built with CUDA
    /// support (scripts/build-cuda.sh) and a GPU is present, otherwise the CPU.
    #[arg(long, env = "QWEN_SERVE_DEVICE")]
    pub device: Option<DeviceArg>,
    /// A Jinja chat template file to use instead of the model's own.
    #[arg(long)]
    pub chat_template: Option<std::path::PathBuf>,
    /// Rope scaling as JSON, replacing the model's (vLLM's flag), e.g. Qwen's YaRN for long
    /// contexts: `{"rope_type":"yarn","factor":4.0,"original_max_position_embeddings":32768}`
    /// (the context becomes 131072; the GGUF files Qwen ships carry no YaRN of their own).
    #[arg(long)]
    pub rope_scaling: Option<String>,
    /// Where a request's unset sampling fields come from (vLLM's flag): `auto`, the model
    /// folder's generation_config.json (temperature, top_p, top_k, min_p, repetition_penalty,
    /// max_new_tokens as the most tokens by default; OpenAI's defaults for a GGUF file), or
    /// `vllm`, OpenAI's defaults always.
    #[arg(long, value_enum, default_value_t = GenerationConfigArg::Auto)]
    pub generation_config: GenerationConfigArg,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum GenerationConfigArg {
    Auto,
    Vllm,
}

impl ModelArgs {
    /// Opens the device (see [`crate::device::select`]); errors name the flag.
    pub fn load_options(&self) -> Result<LoadOptions, String> {
        let device = crate::device::select(self.device)?;
        if self.quantize.is_some() && !device.is_cpu() {
            return Err("--quantize is for the CPU kernels; on a GPU use --dtype bf16 or a GGUF model".into());
        }
        Ok(LoadOptions {
            dtype: self.dtype.map(DType::from),
            quantize: self.quantize.map(|q| match q {
                QuantizeArg::Q8_0 => candle_core::quantized::GgmlDType::Q8_0,
                QuantizeArg::Q4k => candle_core::quantized::GgmlDType::Q4K,
                QuantizeArg::Bf16 => candle_core::quantized::GgmlDType::BF16,
                QuantizeArg::F16 => candle_core::quantized::GgmlDType::F16,
            }),
            device,
            revision: self.revision.clone(),
            chat_template: self.chat_template.clone(),
            generation_config: self.generation_config == GenerationConfigArg::Auto,
            rope_scaling: self
                .rope_scaling
                .as_deref()
                .map(|text| match serde_json::from_str::<serde_json::Value>(text) {
                    Ok(v) if v.is_object() => Ok(v),
                    Ok(v) => Err(format!("--rope-scaling must be a JSON object, got {v}")),
                    Err(e) => Err(format!("--rope-scaling is not JSON ({e}): {text}")),
                })
                .transpose()?,
        })
    }
}

/// Logs go to stderr (stdout carries generated text); `RUST_LOG` overrides the level.
pub fn init_logging(default_level: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default_level.into());
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}

/// `--kv-cache-memory` when it is not given and the model runs on the CPU.
const DEFAULT_KV_CACHE_GIB: f64 = 2.0;
const CPU_MAX_NUM_BATCHED_TOKENS: usize = 512;
const CPU_MAX_NUM_SEQS: usize = 64;
const GPU_MAX_NUM_BATCHED_TOKENS: usize = 8192;
const GPU_MAX_NUM_SEQS: usize = 256;

/// Engine sizing and scheduling flags (serve, bench).
#[derive(Debug, Clone, clap::Args)]
pub struct EngineArgs {
    /// KV cache size in GiB (keys and values of all layers, in --kv-cache-dtype). More
    /// means more concurrent tokens before sequences are preempted and recomputed. Default: 2
    /// on the CPU; on a GPU, sized by --gpu-memory-utilization (this flag overrides it). A
    /// size beyond the memory left after loading the model is refused at startup.
    #[arg(long, env = "QWEN_SERVE_KV_CACHE_MEMORY", allow_negative_numbers = true)]
    pub kv_cache_memory: Option<f64>,
    /// On a GPU, the fraction of its whole memory this process may use, in (0, 1]: after the
    /// weights are loaded the KV cache gets `total x fraction - memory already in use` (also
    /// by other processes). The rest is headroom for activations and the CUDA runtime; raise
    /// it for more cached tokens, lower it when sharing the GPU. Ignored on the CPU and when
    /// --kv-cache-memory is given.
    #[arg(long, env = "QWEN_SERVE_GPU_MEMORY_UTILIZATION", default_value_t = 0.9, allow_negative_numbers = true)]
    pub gpu_memory_utilization: f64,
    /// The KV cache's dtype: `auto` (the activations': f32 for a GGUF or f32 model on the CPU,
    /// bf16 on a GPU), `f32`, `bf16` or `f16`. A half-precision cache holds twice the tokens in
    /// the same memory and halves what attention reads; keys and values are rounded to it
    /// (llama.cpp's default cache is f16).
    #[arg(long, env = "QWEN_SERVE_KV_CACHE_DTYPE", default_value = "auto", value_parser = ["auto", "f32", "bf16", "f16"])]
    pub kv_cache_dtype: String,
    /// The longest sequence served, prompt and output together (as vLLM's flag): at most the
    /// model's context length (`max_position_embeddings`, or what its rope scaling stretches it
    /// to, e.g. YaRN's `original_max_position_embeddings x factor`), which is the default.
    #[arg(long)]
    pub max_model_len: Option<usize>,
    /// Speculative decoding by prompt lookup, as vLLM's flag:
    /// `{"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4,
    /// "prompt_lookup_min": 2}`. A sequence whose last few tokens occurred before
    /// proposes what followed them, and one step checks the proposal: the output is the same,
    /// sooner where text repeats (code edits, quoting). Off by default.
    #[arg(long, env = "QWEN_SERVE_SPECULATIVE_CONFIG")]
    pub speculative_config: Option<String>,
    /// Tokens per KV block.
    #[arg(long, default_value_t = 16)]
    pub block_size: usize,
    /// Token budget of one engine step, shared by decodes and prefill chunks: larger prefills
    /// faster, smaller keeps decode latency steady while long prompts arrive. Default: 512 on
    /// the CPU, 8192 on a GPU.
    #[arg(long)]
    pub max_num_batched_tokens: Option<usize>,
    /// Most sequences decoding at once. Default: 64 on the CPU, 256 on a GPU.
    #[arg(long)]
    pub max_num_seqs: Option<usize>,
    /// Most requests waiting for admission; more are refused (HTTP 429).
    #[arg(long, default_value_t = 1024)]
    pub max_waiting: usize,
    /// Turn off reuse of cached prompt prefixes.
    #[arg(long)]
    pub no_prefix_caching: bool,
    /// CPU threads for the kernels (default: physical cores; more oversubscribes them).
    #[arg(long, env = "QWEN_SERVE_THREADS")]
    pub threads: Option<usize>,
}

impl EngineArgs {
    /// Sizes the process-wide thread pools (ours and candle's) before any work starts.
    pub fn init_threads(&self) -> Result<(), String> {
        let n = match self.threads {
            Some(0) => return Err("--threads must be at least 1".into()),
            Some(n) => n,
            None => num_cpus::get_physical().max(1),
        };
        // candle sizes its own pools from this variable.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        rayon::ThreadPoolBuilder::new().num_threads(n).build_global().map_err(|e| format!("thread pool: {e}"))
    }

    /// `config` with the GPU's defaults for the batch limits the user left unset: a GPU step
    /// costs about the same for 1 or hundreds of sequences, so it takes many more at once.
    pub fn for_device(&self, mut config: crate::engine::EngineConfig, device: &candle_core::Device) -> crate::engine::EngineConfig {
        if !device.is_cpu() {
            config.max_num_batched_tokens = self.max_num_batched_tokens.unwrap_or(GPU_MAX_NUM_BATCHED_TOKENS);
            config.max_num_seqs = self.max_num_seqs.unwrap_or(GPU_MAX_NUM_SEQS);
        }
        config
    }

    /// The engine's configuration, with the CPU's batch limits where unset (see [`Self::for_device`]).
    pub fn engine_config(&self) -> Result<crate::engine::EngineConfig, String> {
        if let Some(gib) = self.kv_cache_memory {
            if !(gib > 0.0 && gib.is_finite()) {
                return Err(format!("--kv-cache-memory must be a positive number of GiB, got {gib}"));
            }
        }
        let util = self.gpu_memory_utilization;
        if !(util > 0.0 && util <= 1.0) {
            return Err(format!("--gpu-memory-utilization must be in (0, 1], got {util}"));
        }
        let batched_tokens = self.max_num_batched_tokens.unwrap_or(CPU_MAX_NUM_BATCHED_TOKENS);
        let num_seqs = self.max_num_seqs.unwrap_or(CPU_MAX_NUM_SEQS);
        for (flag, v) in [("--block-size", self.block_size), ("--max-num-batched-tokens", batched_tokens), ("--max-num-seqs", num_seqs), ("--max-waiting", self.max_waiting)] {
            if v == 0 {
                return Err(format!("{flag} must be at least 1"));
            }
        }
        Ok(crate::engine::EngineConfig {
            block_size: self.block_size,
            kv_cache_bytes: (self.kv_cache_memory.unwrap_or(DEFAULT_KV_CACHE_GIB) * (1u64 << 30) as f64) as usize,
            // An explicit size wins on every device.
            gpu_memory_utilization: self.kv_cache_memory.is_none().then_some(util),
            max_num_batched_tokens: batched_tokens,
            max_num_seqs: num_seqs,
            max_waiting: self.max_waiting,
            enable_prefix_caching: !self.no_prefix_caching,
            kv_cache_dtype: match self.kv_cache_dtype.as_str() {
                "f32" => Some(candle_core::DType::F32),
                "bf16" => Some(candle_core::DType::BF16),
                "f16" => Some(candle_core::DType::F16),
                _ => None,
            },
            max_model_len: self.max_model_len,
            speculative: self.speculative_config.as_deref().map(crate::engine::speculative::SpeculativeConfig::parse).transpose()?,
            sample_on_device: None,
        })
    }
}

