//! A `.gguf` model (one file, or the parts of a split one): config, weights, tokenizer and
//! chat template all come from it.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use qwen_serve_models::{Architecture, GgufReader, ModelConfig, Weights};

use super::gguf_files::GgufFiles;
use super::{progress, stop_tokens, LoadError, LoadOptions, LoadedModel};
use crate::tokenizer::{ChatTemplate, ChatTemplateSources, Tokenizer};

pub(super) fn load(path: &Path, opts: &LoadOptions) -> Result<LoadedModel, LoadError> {
    let format = |reason: String| LoadError::Format { path: path.to_path_buf(), reason };
    let files = GgufFiles::open(path)?;
    let name = files.name.clone();
    let content = &files.content;
    let config = super::configured(gguf_config(content).map_err(format)?, opts)?;

    // The tokenizer first: building it from the metadata takes ~210 MB for a moment (test
    // model), given back before the weights arrive rather than on top of them.
    let tokenizer = Tokenizer::from_gguf(&content.metadata)?;
    let token = |key: &str| {
        content.metadata.get(key).and_then(|v| as_u64(v)).and_then(|id| tokenizer.id_to_token(id as u32))
    };
    let chat_template = ChatTemplateSources::from_gguf(&content.metadata)?
        .map(|s| ChatTemplate::from_sources(&s, token("tokenizer.ggml.bos_token_id"), token("tokenizer.ggml.eos_token_id")))
        .transpose()?;
    let eos = content.metadata.get("tokenizer.ggml.eos_token_id").and_then(as_u64).map(|id| id as u32);
    let eos_token_ids = stop_tokens(&tokenizer, eos);
    super::release_free_memory();

    // Tensors are read as the model asks for them, so that a matrix repacked for our kernels
    // is freed before the next is read (peak memory ~ the loaded model, not twice it).
    if opts.quantize.is_some() {
        tracing::warn!("--quantize is ignored for a GGUF model: it keeps its own types");
    }
    let bar = progress::bar(content.tensor_infos.len() as u64, "loading weights");
    let names: Vec<String> = content.tensor_infos.keys().cloned().collect();
    let device = opts.device.clone();
    let read_bar = bar.clone();
    let read: GgufReader = Box::new(move |name| {
        let t = files.tensor(name, &device).map_err(|e| candle_core::Error::Msg(format!("tensor `{name}`: {e}")));
        read_bar.inc(1);
        t
    });
    let weights = Weights::from_gguf(names, read, opts.dtype, super::default_dtype(&opts.device), &opts.device);
    let model = qwen_serve_models::load_model(&config, &weights).map_err(|e| match e {
        // Candle errors while building from a GGUF come from reading its tensors: name the file.
        qwen_serve_models::ModelError::Candle(e) => format(e.to_string()),
        e => LoadError::from(e),
    })?;
    drop(weights);
    bar.finish_and_clear();
    // A GGUF file carries no generation config: OpenAI's defaults.
    Ok(LoadedModel { model, tokenizer, chat_template, eos_token_ids, name, sampling_defaults: Default::default() })
}

fn as_u64(v: &Value) -> Option<u64> {
    match *v {
        Value::U8(x) => Some(x as u64),
        Value::U16(x) => Some(x as u64),
        Value::U32(x) => Some(x as u64),
        Value::U64(x) => Some(x),
        Value::I8(x) => u64::try_from(x).ok(),
        Value::I16(x) => u64::try_from(x).ok(),
        Value::I32(x) => u64::try_from(x).ok(),
        Value::I64(x) => u64::try_from(x).ok(),
        _ => None,
    }
}

fn as_f64(v: &Value) -> Option<f64> {
    match *v {
        Value::F32(x) => Some(x as f64),
        Value::F64(x) => Some(x),
        _ => as_u64(v).map(|x| x as f64),
    }
}

/// llama.cpp's rope scaling keys as the `rope_scaling` object of a config.json (what
/// llama.cpp's converter read them from); `None` for none. Values llama.cpp reads as unset
/// (a factor of 0, a negative extrapolation factor, an original context of 0) are unset here.
fn gguf_rope_scaling(md: &HashMap<String, Value>, arch: &str) -> Result<Option<serde_json::Value>, String> {
    let key = |k: &str| format!("{arch}.rope.{k}");
    let float = |k: &str| md.get(&key(k)).map(|v| as_f64(v).ok_or(format!("non-numeric `{}`", key(k)))).transpose();
    // Keys whose meaning this loader does not map are refused rather than ignored.
    for (k, neutral) in [("scaling.attn_factor", 1.0), ("scaling.yarn_log_multiplier", 0.0), ("scaling.yarn_ext_factor", 1.0)] {
        if let Some(v) = float(k)? {
            if v != neutral && !(k.ends_with("ext_factor") && v < 0.0) {
                return Err(format!("`{}` = {v} is not supported", key(k)));
            }
        }
    }
    // The older key for a linear factor; 0 and 1 scale nothing.
    let factor = match float("scaling.factor")? {
        Some(f) => Some(f),
        None => float("scale_linear")?,
    }
    .filter(|&f| f != 0.0 && f != 1.0);
    let kind = match md.get(&key("scaling.type")) {
        None => factor.map(|_| "linear".to_string()),
        Some(Value::String(s)) if s == "none" => None,
        Some(Value::String(s)) if (s == "linear" || s == "yarn") && factor.is_none() => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(v) => return Err(format!("non-string `{}`: {v:?}", key("scaling.type"))),
    };
    let Some(kind) = kind else { return Ok(None) };
    let original = match md.get(&key("scaling.original_context_length")) {
        None => None,
        Some(v) => Some(as_u64(v).ok_or(format!("non-integer `{}`", key("scaling.original_context_length")))?).filter(|&n| n > 0),
    };
    let mut params = serde_json::json!({ "rope_type": kind });
    // attention_factor / betas as transformers reads the config they were converted from
    // (llama.cpp itself reads them only for some architectures).
    let fields = [
        ("factor", factor),
        ("original_max_position_embeddings", original.map(|n| n as f64)),
        ("attention_factor", float("scaling.yarn_attn_factor")?),
        ("beta_fast", float("scaling.yarn_beta_fast")?),
        ("beta_slow", float("scaling.yarn_beta_slow")?),
    ];
    for (name, value) in fields {
        if let Some(v) = value {
            params[name] = serde_json::json!(v);
        }
    }
    Ok(Some(params))
}

/// Maps llama.cpp's `{arch}.*` metadata onto the Hugging Face config fields.
pub fn gguf_config(content: &Content) -> Result<ModelConfig, String> {
    let md = &content.metadata;
    let arch = match md.get("general.architecture") {
        Some(Value::String(s)) => s.clone(),
        _ => return Err("missing `general.architecture`".into()),
    };
    if Architecture::from_model_type(&arch).is_none() {
        return Err(format!(
            "unsupported architecture `{arch}`; supported: {}",
            Architecture::SUPPORTED.join(", ")
        ));
    }
    let int = |key: &str| -> Result<usize, String> {
        let full = format!("{arch}.{key}");
        md.get(&full).and_then(as_u64).map(|v| v as usize).ok_or(format!("missing or non-integer `{full}`"))
    };
    let float = |key: &str| md.get(&format!("{arch}.{key}")).and_then(as_f64);
    let embd = content.tensor_infos.get("token_embd.weight").ok_or("missing tensor `token_embd.weight`")?;
    let num_heads = int("attention.head_count")?;
    let hidden = int("embedding_length")?;
    let architecture = Architecture::from_model_type(&arch).expect("checked above");
    // MoE as llama.cpp reads it: every layer sparse; the top-k weights renormalised for
    // Qwen3-MoE and not for Qwen2-MoE (unless the file says); Qwen2-MoE's shared expert as wide
    // as the dense feed-forward unless its own width is given.
    let (num_experts, top_k, moe_width, shared_width, norm_topk_prob) = if architecture.is_moe() {
        let norm = match md.get(&format!("{arch}.expert_weights_norm")) {
            Some(Value::Bool(b)) => *b,
            _ => architecture == Architecture::Qwen3Moe,
        };
        // Missing or 0: the dense width, as llama.cpp reads it.
        let shared = match architecture {
            Architecture::Qwen2Moe => match int("expert_shared_feed_forward_length") {
                Ok(w) if w > 0 => w,
                _ => int("feed_forward_length")?,
            },
            _ => 0,
        };
        let (experts, used) = (int("expert_count")?, int("expert_used_count")?);
        // Per-layer widths (an array) must agree; missing: the dense width over the experts
        // used, as llama.cpp falls back (older Qwen1.5-MoE files).
        let key = format!("{arch}.expert_feed_forward_length");
        let width = match md.get(&key) {
            Some(Value::Array(widths)) => {
                let widths: Vec<u64> = widths.iter().filter_map(as_u64).collect();
                match widths.first() {
                    Some(&w) if widths.iter().all(|&x| x == w) => w as usize,
                    _ => return Err(format!("`{key}` differs between layers ({widths:?}); not supported")),
                }
            }
            Some(v) => as_u64(v).ok_or(format!("non-integer `{key}`"))? as usize,
            None => int("feed_forward_length")? / used.max(1),
        };
        (experts, used, width, shared, norm)
    } else {
        (0, 0, 0, 0, false)
    };
    // A MoE file may leave the dense width out (no layer is dense there).
    let intermediate_size = match int("feed_forward_length") {
        Ok(v) => v,
        Err(_) if architecture.is_moe() => moe_width,
        Err(e) => return Err(e),
    };
    let cfg = ModelConfig {
        model_type: arch.clone(),
        // GGUF stores dims innermost-first; candle reports them as (vocab, hidden).
        vocab_size: embd.shape.dims()[0],
        hidden_size: hidden,
        intermediate_size,
        num_hidden_layers: int("block_count")?,
        num_attention_heads: num_heads,
        num_key_value_heads: int("attention.head_count_kv").unwrap_or(num_heads),
        head_dim: int("attention.key_length").ok(),
        max_position_embeddings: int("context_length")?,
        rope_theta: float("rope.freq_base").unwrap_or(10_000.0),
        rms_norm_eps: float("attention.layer_norm_rms_epsilon").ok_or(format!("missing `{arch}.attention.layer_norm_rms_epsilon`"))?,
        tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
        attention_bias: None,
        use_sliding_window: false,
        rope_scaling: gguf_rope_scaling(md, &arch)?,
        original_max_position_embeddings: None,
        partial_rotary_factor: None,
        rope_parameters: None,
        qkv_bias: None,
        num_experts,
        num_experts_per_tok: top_k,
        moe_intermediate_size: moe_width,
        shared_expert_intermediate_size: shared_width,
        norm_topk_prob,
        decoder_sparse_step: 1,
        mlp_only_layers: Vec::new(),
    };
    cfg.validate().map_err(|e| e.to_string())?;
    Ok(cfg)
}


#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::quantized::gguf_file::{Content, TensorInfo, Value, VersionedMagic};
    use candle_core::quantized::GgmlDType;
    use qwen_serve_models::Architecture;

    use super::gguf_config;

    fn content(arch: &str, extra: &[(&str, Value)]) -> Content {
        let mut metadata: HashMap<String, Value> = [
            ("general.architecture".to_string(), Value::String(arch.into())),
            (format!("{arch}.block_count"), Value::U32(2)),
            (format!("{arch}.embedding_length"), Value::U32(64)),
            (format!("{arch}.attention.head_count"), Value::U32(4)),
            (format!("{arch}.attention.head_count_kv"), Value::U32(2)),
            (format!("{arch}.context_length"), Value::U32(512)),
            (format!("{arch}.attention.layer_norm_rms_epsilon"), Value::F32(1e-6)),
        ]
        .into_iter()
        .collect();
        metadata.extend(extra.iter().map(|(k, v)| (format!("{arch}.{k}"), v.clone())));
        let embd = TensorInfo { ggml_dtype: GgmlDType::F32, shape: (512, 64).into(), offset: 0 };
        Content { magic: VersionedMagic::GgufV3, metadata, tensor_infos: [("token_embd.weight".to_string(), embd)].into(), tensor_data_offset: 0 }
    }

    /// llama.cpp's MoE metadata: every layer sparse, Qwen3-MoE renormalising its top-k and
    /// Qwen2-MoE not, Qwen2-MoE's shared expert as wide as the dense feed-forward unless given.
    #[test]
    fn moe_metadata_maps_onto_the_config() {
        let experts = [("expert_count", Value::U32(8)), ("expert_used_count", Value::U32(2)), ("expert_feed_forward_length", Value::U32(32))];
        let cfg = gguf_config(&content("qwen3moe", &experts)).unwrap();
        assert_eq!(cfg.architecture(), Architecture::Qwen3Moe);
        assert_eq!((cfg.num_experts, cfg.num_experts_per_tok, cfg.moe_intermediate_size), (8, 2, 32));
        assert_eq!((cfg.intermediate_size, cfg.shared_expert_intermediate_size, cfg.norm_topk_prob), (32, 0, true));
        assert!((0..2).all(|i| cfg.sparse_layer(i)));

        let mut qwen2 = experts.to_vec();
        qwen2.push(("feed_forward_length", Value::U32(96)));
        let cfg = gguf_config(&content("qwen2moe", &qwen2)).unwrap();
        assert_eq!(cfg.architecture(), Architecture::Qwen2Moe);
        assert_eq!((cfg.intermediate_size, cfg.shared_expert_intermediate_size, cfg.norm_topk_prob), (96, 96, false));
        assert!(cfg.attention_bias());
        qwen2.push(("expert_shared_feed_forward_length", Value::U32(48)));
        qwen2.push(("expert_weights_norm", Value::Bool(true)));
        let cfg = gguf_config(&content("qwen2moe", &qwen2)).unwrap();
        assert_eq!((cfg.shared_expert_intermediate_size, cfg.norm_topk_prob), (48, true));

        // No expert width: the dense width over the experts used (llama.cpp's fallback); a
        // shared width of 0: the dense width.
        let old = [("expert_count", Value::U32(8)), ("expert_used_count", Value::U32(2)), ("feed_forward_length", Value::U32(96)), ("expert_shared_feed_forward_length", Value::U32(0))];
        let cfg = gguf_config(&content("qwen2moe", &old)).unwrap();
        assert_eq!((cfg.moe_intermediate_size, cfg.shared_expert_intermediate_size), (48, 96));
        // Per-layer widths: one width when they agree, refused when they differ.
        let array = |w: &[u32]| Value::Array(w.iter().map(|&x| Value::U32(x)).collect());
        let mut per_layer = experts[..2].to_vec();
        per_layer.push(("expert_feed_forward_length", array(&[32, 32])));
        assert_eq!(gguf_config(&content("qwen3moe", &per_layer)).unwrap().moe_intermediate_size, 32);
        per_layer[2] = ("expert_feed_forward_length", array(&[32, 64]));
        let err = gguf_config(&content("qwen3moe", &per_layer)).unwrap_err();
        assert!(err.contains("qwen3moe.expert_feed_forward_length") && err.contains("differs"), "{err}");
        let err = gguf_config(&content("qwen3moe", &experts[..2])).unwrap_err();
        assert!(err.contains("qwen3moe.feed_forward_length"), "{err}");
        let too_many = [("expert_count", Value::U32(2)), ("expert_used_count", Value::U32(3)), ("expert_feed_forward_length", Value::U32(32))];
        let err = gguf_config(&content("qwen3moe", &too_many)).unwrap_err();
        assert!(err.contains("num_experts_per_tok"), "{err}");
    }
    /// llama.cpp's rope scaling keys become the config's `rope_scaling`: YaRN with its
    /// original context and betas, `none` as none, the old linear key as linear; keys whose
    /// meaning is not mapped are refused.
    #[test]
    fn rope_scaling_metadata_maps_onto_the_config() {
        use qwen_serve_models::{RopeScaling, Yarn};
        let qwen2 = |extra: &[(&str, Value)]| {
            let mut keys = vec![("feed_forward_length", Value::U32(96))];
            keys.extend(extra.iter().cloned());
            gguf_config(&content("qwen2", &keys))
        };
        let yarn = [
            ("rope.scaling.type", Value::String("yarn".into())),
            ("rope.scaling.factor", Value::F32(4.0)),
            ("rope.scaling.original_context_length", Value::U32(128)),
            ("rope.scaling.yarn_beta_fast", Value::F32(16.0)),
        ];
        let cfg = qwen2(&yarn).unwrap();
        let want = Yarn { factor: 4.0, original_max_position_embeddings: 128, attention_factor: 0.1 * 4f64.ln() + 1.0, beta_fast: 16.0, beta_slow: 1.0, truncate: true };
        assert_eq!(cfg.rope().unwrap(), RopeScaling::Yarn(want));
        assert_eq!((cfg.max_position_embeddings, cfg.context_length()), (512, 512));

        let none = qwen2(&[("rope.scaling.type", Value::String("none".into()))]).unwrap();
        assert_eq!((none.rope().unwrap(), none.context_length()), (RopeScaling::None, 512));
        let linear = qwen2(&[("rope.scale_linear", Value::F32(2.0))]).unwrap();
        assert_eq!((linear.rope().unwrap(), linear.context_length()), (RopeScaling::Linear { factor: 2.0 }, 1024));

        // What llama.cpp writes for "no scaling" (its model saver): linear, factor 0, ext -1.
        let unset = [("rope.scaling.type", Value::String("linear".into())), ("rope.scaling.factor", Value::F32(0.0)), ("rope.scaling.yarn_ext_factor", Value::F32(-1.0))];
        assert_eq!(qwen2(&unset).unwrap().rope().unwrap(), RopeScaling::None);
        let longrope = qwen2(&[("rope.scaling.type", Value::String("longrope".into())), ("rope.scaling.factor", Value::F32(4.0))]).unwrap_err();
        assert!(longrope.contains("`longrope` is not supported") && longrope.contains("yarn"), "{longrope}");
        let mut log_mul = yarn.to_vec();
        log_mul.push(("rope.scaling.yarn_log_multiplier", Value::F32(0.1)));
        let err = qwen2(&log_mul).unwrap_err();
        assert!(err.contains("qwen2.rope.scaling.yarn_log_multiplier"), "{err}");
    }
}
