//! Named access to a checkpoint's tensors, whatever file format holds them.
//!
//! Models ask for Hugging Face names through a prefix path (`weights.pp("self_attn")`); a GGUF
//! backend translates each name to llama.cpp's (`blk.N.attn_q.weight`). GGUF matrices stay
//! quantized unless the caller asked for a float dtype.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QTensor};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use qwen_serve_kernels::QuantMatrix;

use crate::layers::linear::{device_quantized, Linear};
use crate::ModelError;

/// Reads one GGUF tensor, by GGUF name, onto the model's device.
pub type GgufReader = Box<dyn Fn(&str) -> candle_core::Result<QTensor> + Send + Sync>;

enum Backend {
    Safetensors(MmapedSafetensors),
    /// Tensors keyed by their GGUF names, read from the file when the model asks for one (each
    /// is asked for once) and not kept here: a matrix repacked or dequantized at load is freed
    /// before the next is read, so loading holds at most one GGUF matrix besides the model.
    Gguf {
        names: HashSet<String>,
        read: GgufReader,
        /// MoE: a stacked `(experts, rows, cols)` tensor read once and split into one matrix
        /// per expert, each handed out once (then dropped here) as the model asks for it.
        experts: Mutex<HashMap<String, Vec<Option<QTensor>>>>,
    },
}

/// A view of a checkpoint at a name prefix.
#[derive(Clone)]
pub struct Weights {
    backend: Arc<Backend>,
    prefix: String,
    dtype: DType,
    device: Device,
    keep_quantized: bool,
    /// Safetensors on the CPU: quantize projections to this type at load (see [`Self::linear`]).
    quantize: Option<GgmlDType>,
}

impl Weights {
    /// Memory-maps one or more safetensors files; tensors are converted to `dtype` on load.
    pub fn from_safetensors<P: AsRef<Path>>(paths: &[P], dtype: DType, device: &Device) -> Result<Self, ModelError> {
        // Safety: the files are mapped read-only; as with every mmap-based loader, they must not
        // be truncated while the model is being loaded.
        let st = unsafe { MmapedSafetensors::multi(paths)? };
        Ok(Self::new(Backend::Safetensors(st), dtype, device, false))
    }

    /// GGUF tensors: `names` (GGUF names) exist and `read` reads one onto `device`. With
    /// `dequantize_to: None`, matrices stay quantized and activations are `activations` (the
    /// CPU kernels want f32; candle's GPU kernels take bf16 too); otherwise every tensor is
    /// dequantized to that dtype.
    pub fn from_gguf(
        names: impl IntoIterator<Item = String>,
        read: GgufReader,
        dequantize_to: Option<DType>,
        activations: DType,
        device: &Device,
    ) -> Self {
        let backend = Backend::Gguf { names: names.into_iter().collect(), read, experts: Mutex::default() };
        Self::new(backend, dequantize_to.unwrap_or(activations), device, dequantize_to.is_none())
    }

    fn new(backend: Backend, dtype: DType, device: &Device, keep_quantized: bool) -> Self {
        Self { backend: Arc::new(backend), prefix: String::new(), dtype, device: device.clone(), keep_quantized, quantize: None }
    }

    /// Quantize projection matrices of a safetensors checkpoint to `dtype` as they load
    /// (`Q8_0`, or `Q4K` where the input width is a multiple of 256 and `Q8_0` elsewhere), for
    /// the CPU kernels; matrices no kernel takes stay dense. `BF16` / `F16` store them in half
    /// precision instead, multiplied in f32 under the model's activations.
    pub fn quantized_to(mut self, dtype: Option<GgmlDType>) -> Self {
        self.quantize = dtype;
        self
    }

    /// The sub-view `prefix.name`.
    pub fn pp(&self, name: impl std::fmt::Display) -> Self {
        let prefix = if self.prefix.is_empty() { name.to_string() } else { format!("{}.{name}", self.prefix) };
        Self { prefix, ..self.clone() }
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() { name.to_string() } else { format!("{}.{name}", self.prefix) }
    }

    pub fn contains(&self, name: &str) -> bool {
        let path = self.path(name);
        match &*self.backend {
            Backend::Safetensors(st) => st.get(&path).is_ok(),
            Backend::Gguf { names, .. } => match gguf_expert_name(&path) {
                Some((stacked, _)) => names.contains(&stacked),
                None => gguf_tensor_name(&path).is_some_and(|n| names.contains(&n)),
            },
        }
    }

    fn qtensor(&self, path: &str) -> Result<Arc<QTensor>, ModelError> {
        let Backend::Gguf { names, read, experts } = &*self.backend else { unreachable!("gguf backend") };
        let missing = || ModelError::MissingTensor(path.to_string());
        if let Some((stacked, expert)) = gguf_expert_name(path) {
            if !names.contains(&stacked) {
                return Err(missing());
            }
            let mut experts = experts.lock().unwrap_or_else(|e| e.into_inner());
            let taken = experts.get_mut(&stacked).and_then(|parts| parts.get_mut(expert)).and_then(Option::take);
            let q = match taken {
                Some(q) => q,
                None => {
                    // The first ask reads and splits the stack, keeping the other experts for
                    // their asks; a second ask for one expert reads it again, keeping nothing.
                    let mut parts: Vec<Option<QTensor>> = split_experts(&stacked, &read(&stacked)?)?.into_iter().map(Some).collect();
                    let q = parts.get_mut(expert).and_then(Option::take).ok_or_else(missing)?;
                    experts.entry(stacked.clone()).or_insert(parts);
                    q
                }
            };
            if experts.get(&stacked).is_some_and(|parts| parts.iter().all(Option::is_none)) {
                experts.remove(&stacked);
            }
            return Ok(Arc::new(q));
        }
        let name = gguf_tensor_name(path).filter(|n| names.contains(n)).ok_or_else(missing)?;
        Ok(Arc::new(read(&name)?))
    }

    /// A GGUF stack of experts whose experts were not all taken holds more than the config's
    /// `num_experts`: the file and the config disagree (and the rest would sit in memory).
    pub fn check_all_experts_used(&self) -> Result<(), ModelError> {
        let Backend::Gguf { experts, .. } = &*self.backend else { return Ok(()) };
        let experts = experts.lock().unwrap_or_else(|e| e.into_inner());
        match experts.iter().find(|(_, parts)| parts.iter().any(Option::is_some)) {
            Some((name, parts)) => Err(ModelError::Config(format!(
                "`{name}` stacks {} experts, {} of them beyond what the config uses (expert_count)",
                parts.len(),
                parts.iter().filter(|p| p.is_some()).count()
            ))),
            None => Ok(()),
        }
    }

    /// The tensor `name`, in this view's dtype, checked against `shape`.
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor, ModelError> {
        let path = self.path(name);
        let t = match &*self.backend {
            Backend::Safetensors(st) => {
                if st.get(&path).is_err() {
                    return Err(ModelError::MissingTensor(path));
                }
                st.load(&path, &self.device)?
            }
            Backend::Gguf { .. } => self.qtensor(&path)?.dequantize(&self.device)?,
        };
        check_shape(&path, t.dims(), shape)?;
        Ok(t.reshape(shape)?.to_dtype(self.dtype)?)
    }

    /// A `(out_dim, in_dim)` projection, quantized when the source is, may stay so, and has a
    /// kernel: ours on the CPU ([`QuantMatrix`]), candle's on a GPU ([`device_quantized`]
    /// types); otherwise dequantized to a dense matrix.
    pub fn linear(&self, name: &str, in_dim: usize, out_dim: usize, bias: bool) -> Result<Linear, ModelError> {
        let weight_name = format!("{name}.weight");
        let bias = if bias { Some(self.tensor(&format!("{name}.bias"), &[out_dim])?) } else { None };
        let weight = if let (true, Backend::Gguf { .. }) = (self.keep_quantized, &*self.backend) {
            let path = self.path(&weight_name);
            let q = self.qtensor(&path)?;
            check_shape(&path, q.shape().dims(), &[out_dim, in_dim])?;
            if self.device.is_cpu() && !matches!(q.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16) {
                if let Some(w) = QuantMatrix::from_qtensor(&q)? {
                    return Ok(Linear::quantized(Arc::new(w), bias));
                }
            } else if !self.device.is_cpu() && device_quantized(q.dtype()) {
                return Ok(Linear::device_quantized(q, bias)?);
            }
            // No kernel for it: dequantized from the blocks in hand (an expert's matrix is
            // handed out once). Half-precision matrices stay so on the CPU under f32
            // activations (`half_matmul`: half the memory, rows independent of the batch).
            let dense = q.dequantize(&self.device)?;
            if self.device.is_cpu() && self.dtype == DType::F32 && q.dtype() != GgmlDType::F32 {
                // bf16 stays bf16; f16, and block types our kernels lack (Q2_K, Q3_K, Q4_1, ...),
                // become f16: half the memory of f32 (a 3-bit type still grows ~5x), rows still
                // independent of the batch (`half_matmul`).
                let half = if q.dtype() == GgmlDType::BF16 { DType::BF16 } else { DType::F16 };
                return Ok(Linear::dense(dense.to_dtype(half)?, bias));
            }
            dense.to_dtype(self.dtype)?
        } else {
            self.tensor(&weight_name, &[out_dim, in_dim])?
        };
        if let (Some(dtype @ (GgmlDType::BF16 | GgmlDType::F16)), true) = (self.quantize, self.device.is_cpu()) {
            // Stored in half precision, multiplied in f32 (`half_matmul`).
            let half = if dtype == GgmlDType::BF16 { DType::BF16 } else { DType::F16 };
            return Ok(Linear::dense(weight.to_dtype(half)?, bias));
        }
        if let (Some(dtype), true) = (self.quantize, self.device.is_cpu()) {
            let dtype = if dtype == GgmlDType::Q4K && in_dim % 256 != 0 { GgmlDType::Q8_0 } else { dtype };
            if in_dim % dtype.block_size() == 0 {
                let q = QTensor::quantize(&weight.to_dtype(DType::F32)?, dtype)?;
                if let Some(w) = QuantMatrix::from_qtensor(&q)? {
                    return Ok(Linear::quantized(Arc::new(w), bias));
                }
            }
        }
        Ok(Linear::dense(weight, bias))
    }

    /// The `(vocab, hidden)` embedding table: quantized rows are looked up without
    /// dequantizing the whole table (on a GPU for [`device_quantized`] types; others are
    /// dequantized there, at the activation dtype's size).
    pub fn embedding(&self, name: &str, vocab: usize, hidden: usize) -> Result<crate::layers::Embedding, ModelError> {
        if let (true, Backend::Gguf { .. }) = (self.keep_quantized, &*self.backend) {
            let path = self.path(&format!("{name}.weight"));
            let q = self.qtensor(&path)?;
            check_shape(&path, q.shape().dims(), &[vocab, hidden])?;
            if self.device.is_cpu() && !matches!(q.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16) {
                // Repacked for our kernels, the table serves lookups and (tied) the output
                // projection from one copy.
                if let Some(w) = QuantMatrix::from_qtensor(&q)? {
                    return Ok(crate::layers::Embedding::Repacked(Arc::new(w)));
                }
            }
            if self.device.is_cpu() || device_quantized(q.dtype()) {
                return Ok(crate::layers::Embedding::Quantized(q));
            }
        }
        Ok(crate::layers::Embedding::Dense(self.tensor(&format!("{name}.weight"), &[vocab, hidden])?))
    }
}

/// One matrix per expert of a stacked `(experts, rows, cols)` GGUF tensor (each expert's blocks
/// are one contiguous run of its bytes).
fn split_experts(name: &str, stacked: &QTensor) -> Result<Vec<QTensor>, ModelError> {
    let &[experts, rows, cols] = stacked.shape().dims() else {
        return Err(ModelError::Shape { name: name.to_string(), expected: vec![0, 0, 0], found: stacked.shape().dims().to_vec() });
    };
    let bytes = stacked.data()?;
    let per = bytes.len() / experts.max(1);
    let device = stacked.device();
    (0..experts).map(|e| Ok(qtensor_from_ggml(stacked.dtype(), &bytes[e * per..(e + 1) * per], vec![rows, cols], &device)?)).collect()
}

fn check_shape(name: &str, found: &[usize], expected: &[usize]) -> Result<(), ModelError> {
    // GGUF files drop leading unit dimensions (Qwen2-MoE's `(1, hidden)` shared-expert gate is
    // stored as `(hidden)`); the caller reshapes.
    let squeezed = expected.iter().position(|&d| d != 1).map_or(&[][..], |i| &expected[i..]);
    if found != expected && found != squeezed {
        return Err(ModelError::Shape { name: name.to_string(), expected: expected.to_vec(), found: found.to_vec() });
    }
    Ok(())
}

/// Maps a Hugging Face Qwen tensor name to its llama.cpp GGUF name.
pub fn gguf_tensor_name(hf: &str) -> Option<String> {
    let direct = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        // A classifier head (llama.cpp's rerankers); models only check for it (`decoder.rs`).
        "score.weight" => Some("cls.output.weight"),
        _ => None,
    };
    if let Some(n) = direct {
        return Some(n.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, suffix) = rest.rsplit_once('.')?;
    let gguf = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        "mlp.gate" => "ffn_gate_inp",
        "mlp.shared_expert.gate_proj" => "ffn_gate_shexp",
        "mlp.shared_expert.up_proj" => "ffn_up_shexp",
        "mlp.shared_expert.down_proj" => "ffn_down_shexp",
        "mlp.shared_expert_gate" => "ffn_gate_inp_shexp",
        _ => return None,
    };
    Some(format!("blk.{layer}.{gguf}.{suffix}"))
}

/// Maps a Hugging Face MoE expert's matrix (`model.layers.N.mlp.experts.E.gate_proj.weight`) to
/// the llama.cpp tensor stacking every expert's (`blk.N.ffn_gate_exps.weight`) and `E`.
pub fn gguf_expert_name(hf: &str) -> Option<(String, usize)> {
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once(".mlp.experts.")?;
    let layer: usize = layer.parse().ok()?;
    let (expert, rest) = rest.split_once('.')?;
    let expert: usize = expert.parse().ok()?;
    let gguf = match rest {
        "gate_proj.weight" => "ffn_gate_exps",
        "up_proj.weight" => "ffn_up_exps",
        "down_proj.weight" => "ffn_down_exps",
        _ => return None,
    };
    Some((format!("blk.{layer}.{gguf}.weight"), expert))
}

#[cfg(test)]
mod tests {
    use super::gguf_tensor_name;

    #[test]
    fn maps_hf_names_to_gguf() {
        assert_eq!(gguf_tensor_name("model.layers.3.self_attn.q_proj.bias").as_deref(), Some("blk.3.attn_q.bias"));
        assert_eq!(gguf_tensor_name("model.layers.12.mlp.down_proj.weight").as_deref(), Some("blk.12.ffn_down.weight"));
        assert_eq!(gguf_tensor_name("model.layers.0.self_attn.k_norm.weight").as_deref(), Some("blk.0.attn_k_norm.weight"));
        assert_eq!(gguf_tensor_name("lm_head.weight").as_deref(), Some("output.weight"));
        assert_eq!(gguf_tensor_name("score.weight").as_deref(), Some("cls.output.weight"));
        assert_eq!(gguf_tensor_name("model.layers.x.mlp.up_proj.weight"), None);
        assert_eq!(gguf_tensor_name("model.layers.0.mlp.experts.weight"), None);
        assert_eq!(gguf_tensor_name("model.layers.2.mlp.gate.weight").as_deref(), Some("blk.2.ffn_gate_inp.weight"));
        assert_eq!(gguf_tensor_name("model.layers.2.mlp.shared_expert_gate.weight").as_deref(), Some("blk.2.ffn_gate_inp_shexp.weight"));
        assert_eq!(gguf_tensor_name("model.layers.2.mlp.shared_expert.down_proj.weight").as_deref(), Some("blk.2.ffn_down_shexp.weight"));
    }

    /// Each expert split out of a stacked tensor of whole blocks (32- and 256-value types) holds
    /// that expert's values.
    #[test]
    fn splits_stacked_experts_into_their_own_blocks() {
        use candle_core::quantized::{GgmlDType, QTensor};
        use candle_core::{Device, Tensor};
        let x = Tensor::arange(0u32, 3 * 4 * 256, &Device::Cpu).unwrap().to_dtype(candle_core::DType::F32).unwrap();
        let x = x.affine(0.37, 1.0).unwrap().sin().unwrap().reshape((3, 4, 256)).unwrap();
        for dtype in [GgmlDType::F32, GgmlDType::Q8_0, GgmlDType::Q4K, GgmlDType::Q6K] {
            let stacked = QTensor::quantize(&x, dtype).unwrap();
            let whole = stacked.dequantize(&Device::Cpu).unwrap();
            let parts = super::split_experts("t", &stacked).unwrap();
            assert_eq!(parts.len(), 3);
            for (e, part) in parts.iter().enumerate() {
                assert_eq!((part.dtype(), part.shape().dims()), (dtype, &[4, 256][..]));
                let got = part.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let want = whole.get(e).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                assert_eq!(got, want, "{dtype:?} expert {e}");
            }
        }
        let flat = QTensor::quantize(&x.flatten_to(1).unwrap(), GgmlDType::F32).unwrap();
        assert!(super::split_experts("t", &flat).is_err(), "a matrix is not a stack of experts");
    }

    #[test]
    fn maps_expert_names_to_stacked_gguf_tensors() {
        use super::gguf_expert_name;
        assert_eq!(gguf_expert_name("model.layers.3.mlp.experts.17.up_proj.weight"), Some(("blk.3.ffn_up_exps.weight".into(), 17)));
        assert_eq!(gguf_expert_name("model.layers.0.mlp.experts.0.down_proj.weight"), Some(("blk.0.ffn_down_exps.weight".into(), 0)));
        assert_eq!(gguf_expert_name("model.layers.0.mlp.experts.x.down_proj.weight"), None);
        assert_eq!(gguf_expert_name("model.layers.0.mlp.gate_proj.weight"), None);
    }
}
