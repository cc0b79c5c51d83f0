use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{DType, Result, Tensor};

/// The token embedding table, `(vocab, hidden)`.
pub enum Embedding {
    Dense(Tensor),
    /// Rows are dequantized on lookup, so the table keeps its quantized size in memory.
    Quantized(Arc<QTensor>),
}

impl Embedding {
    /// `ids` `(n,)` -> `(n, hidden)` in `dtype`.
    pub fn forward(&self, ids: &Tensor, dtype: DType) -> Result<Tensor> {
        match self {
            Self::Dense(w) => w.index_select(ids, 0),
            Self::Quantized(q) => q.embedding(ids)?.to_dtype(dtype),
        }
    }

    /// The same matrix as an output projection (tied embeddings).
    pub fn as_linear(&self) -> Result<super::linear::Linear> {
        Ok(match self {
            Self::Dense(w) => super::linear::Linear::dense(w.clone(), None),
            Self::Quantized(q) => super::linear::Linear::quantized(candle_core::quantized::QMatMul::from_arc(q.clone())?, None),
        })
    }
}
