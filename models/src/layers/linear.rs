use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Module, Result, Tensor};
use qwen_serve_kernels::QuantMatrix;

/// `y = x W^T + b` with `W` `(out, in)`, dense or quantized.
///
/// On the CPU both variants compute each output row from its input row alone (the quantized
/// kernels guarantee it bit for bit), so a sequence's results do not depend on what it is
/// batched with. On a GPU that is not guaranteed: cuBLAS and candle's quantized kernels pick
/// their algorithm by batch size (for quantized matrices, a matrix-vector kernel up to 8 rows,
/// a tiled one beyond).
pub struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
}

enum Weight {
    Dense(Tensor),
    /// Our CPU kernels (f32 activations); shared with the embedding when tied.
    Quantized(Arc<QuantMatrix>),
    /// candle's quantized matmul on a GPU, over the GGUF blocks as loaded onto the device.
    Device(QMatMul),
}

/// GGUF block types candle's CUDA backend multiplies (and looks embedding rows up in) without
/// dequantizing: its MMVQ / MMQ kernels and `get_rows` cover exactly these.
pub fn device_quantized(dtype: GgmlDType) -> bool {
    use GgmlDType::*;
    matches!(dtype, Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q2K | Q3K | Q4K | Q5K | Q6K)
}

impl Linear {
    pub fn dense(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight: Weight::Dense(weight), bias }
    }

    pub fn quantized(weight: Arc<QuantMatrix>, bias: Option<Tensor>) -> Self {
        Self { weight: Weight::Quantized(weight), bias }
    }

    /// A quantized `(out, in)` matrix on a GPU, multiplied by candle's kernels; its blocks stay
    /// as they are, so the matrix keeps its GGUF size. Only [`device_quantized`] types: for
    /// those (whole blocks per row, as GGUF guarantees) candle's MMVQ / MMQ kernels take f32,
    /// f16 or bf16 activations and return the same dtype; its other paths need f32 and are
    /// not used here.
    pub fn device_quantized(weight: Arc<QTensor>, bias: Option<Tensor>) -> Result<Self> {
        if !device_quantized(weight.dtype()) || weight.device().is_cpu() {
            candle_core::bail!("no GPU quantized matmul for {:?} on {:?}", weight.dtype(), weight.device().location());
        }
        Ok(Self { weight: Weight::Device(QMatMul::QTensor(weight)), bias })
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        match &self.weight {
            Weight::Dense(w) => w.dim(0).unwrap_or(0),
            Weight::Quantized(q) => q.out_features(),
            Weight::Device(QMatMul::QTensor(q)) => q.shape().dims().first().copied().unwrap_or(0),
            Weight::Device(QMatMul::Tensor(w) | QMatMul::TensorF16(w)) => w.dim(0).unwrap_or(0),
        }
    }

    /// The weight when it is a dense matrix.
    pub fn dense_weight(&self) -> Option<&Tensor> {
        match &self.weight {
            Weight::Dense(w) => Some(w),
            _ => None,
        }
    }

    fn quant_matrix(&self) -> Option<&QuantMatrix> {
        match &self.weight {
            Weight::Quantized(q) => Some(q),
            _ => None,
        }
    }

    /// `x` `(tokens, in)` -> `(tokens, out)` in x's dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.forward_unbiased(x)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    /// [`Self::forward`] without the bias.
    fn forward_unbiased(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match &self.weight {
            // candle's CPU matmul in half precision is generic code; ours widens to f32 (and
            // takes f32 activations too: half-precision weights under f32 activations).
            Weight::Dense(w)
                if w.device().is_cpu() && matches!(w.dtype(), DType::BF16 | DType::F16) && (x.dtype() == w.dtype() || x.dtype() == DType::F32) =>
            {
                qwen_serve_kernels::half_matmul(x, w)?
            }
            // A decode step of a few sequences on a GPU, with `QWEN_SERVE_CUDA_SMALL_MATMUL` set:
            // our kernel, which reads the weight once (see kernels/src/small_matmul.rs).
            Weight::Dense(w) if qwen_serve_kernels::small_matmul_applies(x, w) => qwen_serve_kernels::small_matmul(x, w)?,
            Weight::Dense(w) => x.matmul(&w.t()?)?,
            // Quantized kernels take f32 activations.
            Weight::Quantized(q) if x.dtype() != DType::F32 => q.matmul(&x.to_dtype(DType::F32)?)?.to_dtype(x.dtype())?,
            Weight::Quantized(q) => q.matmul(x)?,
            Weight::Device(q) => q.forward(&x.contiguous()?)?,
        })
    }
}

/// Projections of one input (q/k/v, gate/up). Neighbouring parts that are our quantized
/// kernels' matrices of one type run stacked as one matmul (one activation quantization and
/// one parallel section instead of one each; each output bitwise the same), and so do dense
/// matrices of one dtype (on a GPU, one launch instead of several); others one by one. The
/// outputs are column views of the stacked result.
pub struct Projections {
    /// Each group's (possibly stacked) projection and the widths of its parts.
    groups: Vec<(Linear, Vec<usize>)>,
    /// Each part's bias (a view of its group's stacked one), for [`Self::forward_unbiased`].
    biases: Vec<Option<Tensor>>,
}

impl Projections {
    pub fn new(parts: Vec<Linear>) -> Result<Self> {
        let mut groups: Vec<Vec<Linear>> = Vec::new();
        for part in parts {
            match groups.last_mut() {
                Some(group) if stacks(&group[0], &part) => group.push(part),
                _ => groups.push(vec![part]),
            }
        }
        let groups = groups
            .into_iter()
            .map(|group| {
                let widths: Vec<usize> = group.iter().map(Linear::out_features).collect();
                if group.len() == 1 {
                    return Ok((group.into_iter().next().expect("one part"), widths));
                }
                let biases: Option<Vec<Tensor>> = group.iter().map(|p| p.bias.clone()).collect();
                let bias = biases.map(|b| Tensor::cat(&b, 0)).transpose()?;
                let dense: Vec<&Tensor> = group.iter().filter_map(|p| p.dense_weight()).collect();
                if dense.len() == group.len() {
                    return Ok((Linear::dense(Tensor::cat(&dense, 0)?, bias), widths));
                }
                let matrices: Vec<&QuantMatrix> = group.iter().filter_map(|p| p.quant_matrix()).collect();
                let q = QuantMatrix::concat(&matrices).expect("checked by stacks()");
                Ok((Linear::quantized(Arc::new(q), bias), widths))
            })
            .collect::<Result<Vec<(Linear, Vec<usize>)>>>()?;
        let mut biases = Vec::new();
        for (linear, widths) in &groups {
            let mut at = 0;
            for &w in widths {
                biases.push(linear.bias.as_ref().map(|b| b.narrow(0, at, w)).transpose()?);
                at += w;
            }
        }
        Ok(Self { groups, biases })
    }

    /// The one dense matrix all parts are stacked in (rows in part order), their stacked bias
    /// and the parts' widths, when they are.
    pub fn stacked_dense(&self) -> Option<(&Tensor, Option<&Tensor>, &[usize])> {
        match self.groups.as_slice() {
            [(linear, widths)] => linear.dense_weight().map(|w| (w, linear.bias.as_ref(), widths.as_slice())),
            _ => None,
        }
    }

    /// How many matmuls a forward runs.
    pub fn num_matmuls(&self) -> usize {
        self.groups.len()
    }

    /// Each part's `(tokens, out)` output, in order: stacked parts are column views.
    pub fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        self.outputs(x, Linear::forward)
    }

    /// [`Self::forward`] without the biases, which [`Self::biases`] gives, to be added by a
    /// fused consumer.
    pub fn forward_unbiased(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        self.outputs(x, Linear::forward_unbiased)
    }

    /// Each part's bias, in order.
    pub fn biases(&self) -> &[Option<Tensor>] {
        &self.biases
    }

    fn outputs(&self, x: &Tensor, forward: impl Fn(&Linear, &Tensor) -> Result<Tensor>) -> Result<Vec<Tensor>> {
        let mut out = Vec::new();
        for (linear, widths) in &self.groups {
            let y = forward(linear, x)?;
            if widths.len() == 1 {
                out.push(y);
                continue;
            }
            // Views: a consumer that needs contiguous rows copies (a reshape does), one that
            // takes strided rows (silu_mul) reads them in place.
            let mut at = 0;
            for &w in widths {
                out.push(y.narrow(1, at, w)?);
                at += w;
            }
        }
        Ok(out)
    }
}

/// Whether `b` can be stacked under `a`: both our quantized matrices of one type and width, or
/// both dense of one dtype and input width, on one device; both with a bias or neither.
fn stacks(a: &Linear, b: &Linear) -> bool {
    let same_shape = |wa: &Tensor, wb: &Tensor| {
        wa.dtype() == wb.dtype() && wa.device().same_device(wb.device()) && wa.rank() == 2 && wa.dims()[1..] == wb.dims()[1..]
    };
    a.bias.is_some() == b.bias.is_some()
        && match (&a.weight, &b.weight) {
            (Weight::Quantized(qa), Weight::Quantized(qb)) => qa.stacks_with(qb),
            (Weight::Dense(wa), Weight::Dense(wb)) => same_shape(wa, wb),
            _ => false,
        }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};
    use qwen_serve_kernels::QuantMatrix;

    use super::{Linear, Projections};

    /// Deterministic values (the same matrix each call for the same seed).
    fn values(len: usize, seed: f64) -> Tensor {
        Tensor::arange(0u32, len as u32, &Device::Cpu).unwrap().to_dtype(candle_core::DType::F32).unwrap().affine(0.37 * seed, seed).unwrap().sin().unwrap()
    }

    fn quantized(n: usize, dtype: GgmlDType, bias: bool, seed: f64) -> Linear {
        let w = values(n * 256, seed).reshape((n, 256)).unwrap();
        let q = QuantMatrix::from_qtensor(&QTensor::quantize(&w, dtype).unwrap()).unwrap().unwrap();
        Linear::quantized(Arc::new(q), bias.then(|| values(n, seed + 0.5)))
    }

    /// Stacked projections give each part's own output bitwise; a part of another type (or
    /// without a bias among biased ones) starts a group of its own.
    #[test]
    fn stacked_projections_match_separate_ones() {
        let x = Tensor::randn(0f32, 1.0, (5, 256), &Device::Cpu).unwrap();
        let cases = [
            (vec![(32, GgmlDType::Q5_0, true), (16, GgmlDType::Q5_0, true), (16, GgmlDType::Q5_0, true)], 1),
            (vec![(32, GgmlDType::Q5_0, true), (16, GgmlDType::Q5_0, true), (16, GgmlDType::Q8_0, true)], 2),
            (vec![(24, GgmlDType::Q4K, false), (24, GgmlDType::Q4K, false)], 1),
            (vec![(24, GgmlDType::Q8_0, false), (24, GgmlDType::Q8_0, true)], 2),
        ];
        for (parts, matmuls) in cases {
            let make = || parts.iter().enumerate().map(|(i, &(n, t, b))| quantized(n, t, b, 1.0 + i as f64)).collect::<Vec<_>>();
            let alone: Vec<Vec<Vec<f32>>> = make().iter().map(|l| l.forward(&x).unwrap().to_vec2().unwrap()).collect();
            let p = Projections::new(make()).unwrap();
            assert_eq!(p.num_matmuls(), matmuls, "{parts:?}");
            let got: Vec<Vec<Vec<f32>>> = p.forward(&x).unwrap().iter().map(|t| t.to_vec2().unwrap()).collect();
            assert_eq!(got, alone, "{parts:?}");
        }
    }

    /// Dense matrices of one dtype stack too (one matmul: on a GPU one launch instead of three);
    /// each part's output matches its own matmul up to the summation order.
    #[test]
    fn stacked_dense_projections_match_separate_ones() {
        let x = Tensor::randn(0f32, 1.0, (5, 64), &Device::Cpu).unwrap();
        let dense = |n: usize, bias: bool, seed: f64| {
            Linear::dense(values(n * 64, seed).reshape((n, 64)).unwrap(), bias.then(|| values(n, seed + 0.5)))
        };
        let make = || vec![dense(32, true, 1.0), dense(16, true, 2.0), dense(16, true, 3.0)];
        let alone: Vec<Tensor> = make().iter().map(|l| l.forward(&x).unwrap()).collect();
        let p = Projections::new(make()).unwrap();
        assert_eq!(p.num_matmuls(), 1);
        for (got, want) in p.forward(&x).unwrap().iter().zip(&alone) {
            let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-5, "{diff}");
        }
        let mixed = Projections::new(vec![dense(8, true, 1.0), dense(8, false, 2.0)]).unwrap();
        assert_eq!(mixed.num_matmuls(), 2, "a part without a bias among biased ones stands alone");
        // Unbiased outputs plus each part's own bias are the biased outputs.
        for p in [&p, &mixed] {
            let biased = p.forward(&x).unwrap();
            for ((y, b), want) in p.forward_unbiased(&x).unwrap().iter().zip(p.biases()).zip(&biased) {
                let y = match b {
                    Some(b) => y.broadcast_add(b).unwrap(),
                    None => y.clone(),
                };
                assert_eq!(y.to_vec2::<f32>().unwrap(), want.to_vec2::<f32>().unwrap());
            }
        }
    }
}
