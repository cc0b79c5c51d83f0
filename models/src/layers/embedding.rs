use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{DType, Result, Tensor};
use qwen_serve_kernels::QuantMatrix;

use super::linear::Linear;

/// The token embedding table, `(vocab, hidden)`.
pub enum Embedding {
    Dense(Tensor),
    /// Rows are dequantized on lookup, so the table keeps its quantized size in memory. On a
    /// GPU only a [`device_quantized`](super::linear::device_quantized) type (the weights
    /// loader dequantizes the others).
    Quantized(Arc<QTensor>),
    /// CPU: repacked for our kernels; rows are dequantized on lookup (bitwise as candle
    /// dequantizes them), and a tied output projection multiplies the same copy.
    Repacked(Arc<QuantMatrix>),
}

impl Embedding {
    /// `ids` `(n,)` -> `(n, hidden)` in `dtype`.
    pub fn forward(&self, ids: &Tensor, dtype: DType) -> Result<Tensor> {
        match self {
            Self::Dense(w) => w.index_select(ids, 0),
            Self::Quantized(q) => q.embedding(ids)?.to_dtype(dtype),
            Self::Repacked(q) => q.lookup_rows(&ids.to_vec1::<u32>()?)?.to_dtype(dtype),
        }
    }

    /// The same matrix as an output projection (tied embeddings). A repacked table is shared
    /// (no copy); a quantized table without our kernels' layout is repacked into a
    /// [`QuantMatrix`] (a second copy), or dequantized to f32 when its type has no kernel; on
    /// a GPU candle's quantized matmul reads the same blocks (no copy).
    pub fn as_linear(&self) -> Result<Linear> {
        Ok(match self {
            Self::Dense(w) => Linear::dense(w.clone(), None),
            Self::Quantized(q) if !q.device().is_cpu() => Linear::device_quantized(q.clone(), None)?,
            Self::Repacked(q) => Linear::quantized(q.clone(), None),
            Self::Quantized(q) => match QuantMatrix::from_qtensor(q)? {
                Some(w) => Linear::quantized(Arc::new(w), None),
                None => Linear::dense(q.dequantize(&q.device())?.to_dtype(DType::F32)?, None),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{DType, Device, Tensor};

    use super::Embedding;

    /// Tied embeddings: the quantized table used as the output projection gives the logits of
    /// the dequantized table (up to the kernels' 8-bit activations), for a kernel type (Q8_0)
    /// and a dequantized fallback type (Q4_1).
    #[test]
    fn quantized_table_as_output_projection() {
        let dev = Device::Cpu;
        let table = Tensor::randn(0f32, 1.0, (10, 256), &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (3, 256), &dev).unwrap();
        for dtype in [GgmlDType::Q8_0, GgmlDType::Q4_1] {
            let q = Arc::new(QTensor::quantize(&table, dtype).unwrap());
            let dense = q.dequantize(&dev).unwrap();
            let expected = x.matmul(&dense.t().unwrap()).unwrap();
            let got = Embedding::Quantized(q.clone()).as_linear().unwrap().forward(&x).unwrap();
            assert_eq!((got.dims(), got.dtype()), (expected.dims(), DType::F32));
            let err: f32 = (&got - &expected).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap();
            let scale: f32 = expected.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
            assert!(err <= 0.02 * scale, "{dtype:?}: max error {err} vs max |logit| {scale}");
            // Repacked (kernel types): the same projection from the shared copy, and lookups
            // that are exactly candle's dequantized rows.
            if let Some(w) = qwen_serve_kernels::QuantMatrix::from_qtensor(&q).unwrap() {
                let shared = Embedding::Repacked(Arc::new(w));
                let y = shared.as_linear().unwrap().forward(&x).unwrap();
                assert_eq!(y.to_vec2::<f32>().unwrap(), got.to_vec2::<f32>().unwrap());
                let ids = Tensor::new(&[3u32, 0, 9], &dev).unwrap();
                let rows = shared.forward(&ids, DType::F32).unwrap();
                assert_eq!(rows.to_vec2::<f32>().unwrap(), dense.index_select(&ids, 0).unwrap().to_vec2::<f32>().unwrap());
            }
        }
    }
}
