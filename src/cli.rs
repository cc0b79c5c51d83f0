//! Flags shared by the subcommands, documented where declared.

use candle_core::{DType, Device};

use crate::loader::LoadOptions;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum DtypeArg {
    F32,
    Bf16,
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
    /// safetensors run in f32 on CPU. Set: every weight is dequantized/converted to it.
    #[arg(long, value_enum)]
    pub dtype: Option<DtypeArg>,
}

impl ModelArgs {
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions { dtype: self.dtype.map(DType::from), device: Device::Cpu, revision: self.revision.clone() }
    }
}

/// Logs go to stderr (stdout carries generated text); `RUST_LOG` sets the filter.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}
