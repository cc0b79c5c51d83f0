//! Attention's inputs for one step, from a layer's q/k/v projections: each gets its bias, q and
//! k heads their RMSNorm (Qwen3) and their rotation, and k and v go into their cache slots.
//!
//! On the CPU (and wherever the fused kernel does not apply) this is the composition of the
//! separate ops, which is also the reference. On a GPU it is one launch (`cuda/qkv.cu`) in place
//! of seven and their intermediate tensors: at one token per step a layer's kernels are tiny,
//! and each launch costs the host more than the GPU.

use candle_core::{Result, Tensor};

use crate::device_metadata::DeviceMetadata;
use crate::fused::{rms_norm, rotary_embedding};
use crate::write_kv::write_kv_step;

#[cfg(feature = "cuda")]
mod cuda;
mod matmul;

#[cfg(feature = "cuda")]
pub use matmul::qkv_matmul_step_fused;
pub use matmul::{qkv_matmul_step, QkvMatmul};

/// One layer's projections for a step.
pub struct Qkv<'a> {
    /// `(num_tokens, num_heads * head_dim)`, `(num_tokens, num_kv_heads * head_dim)` twice, of
    /// the caches' dtype. Rows may lie any distance apart (column views of one stacked matmul).
    pub q: &'a Tensor,
    pub k: &'a Tensor,
    pub v: &'a Tensor,
    /// Added to q, k and v first, where present: `(width,)` each.
    pub bias: [Option<&'a Tensor>; 3],
    /// Each q and k head's RMSNorm (Qwen3): the q and k weights, `(head_dim,)`, and epsilon.
    pub head_norm: Option<(&'a Tensor, &'a Tensor, f32)>,
}

/// The rotated queries `(num_tokens, num_heads, head_dim)`; the step's rotated keys and its
/// values are written to `metadata`'s slots of `key_cache` / `value_cache`
/// (`(num_blocks, block_size, num_kv_heads, head_dim)`). `cos`, `sin`: `(max_positions,
/// head_dim / 2)` rotation tables (see [`rotary_embedding`]).
pub fn qkv_step(qkv: &Qkv, cos: &Tensor, sin: &Tensor, key_cache: &Tensor, value_cache: &Tensor, metadata: &DeviceMetadata) -> Result<Tensor> {
    let (_, _, num_kv_heads, head_dim) = key_cache.dims4()?;
    let (num_tokens, q_width) = qkv.q.dims2()?;
    let kv = [num_tokens, num_kv_heads * head_dim];
    if head_dim == 0 || !q_width.is_multiple_of(head_dim) || qkv.k.dims() != kv || qkv.v.dims() != kv {
        candle_core::bail!(
            "qkv_step: q {:?}, k {:?}, v {:?} do not fit a cache of {num_kv_heads} heads of {head_dim}",
            qkv.q.dims(),
            qkv.k.dims(),
            qkv.v.dims()
        );
    }
    #[cfg(feature = "cuda")]
    if let Some(q) = cuda::fused(qkv, cos, sin, key_cache, value_cache, metadata)? {
        return Ok(q);
    }
    composed(qkv, q_width / head_dim, head_dim, cos, sin, key_cache, value_cache, metadata)
}

/// [`qkv_step`]'s fused GPU kernel alone (for tests): `None` where it does not apply (not on a
/// GPU, a head dim or layout it is not built for, `QWEN_SERVE_CUDA_FUSED_QKV=0`), without
/// falling back to the separate ops.
#[cfg(feature = "cuda")]
pub fn qkv_step_fused(qkv: &Qkv, cos: &Tensor, sin: &Tensor, key_cache: &Tensor, value_cache: &Tensor, metadata: &DeviceMetadata) -> Result<Option<Tensor>> {
    cuda::fused(qkv, cos, sin, key_cache, value_cache, metadata)
}

/// The separate ops, in the order the fused kernel follows.
#[allow(clippy::too_many_arguments)]
fn composed(
    qkv: &Qkv,
    num_heads: usize,
    head_dim: usize,
    cos: &Tensor,
    sin: &Tensor,
    key_cache: &Tensor,
    value_cache: &Tensor,
    metadata: &DeviceMetadata,
) -> Result<Tensor> {
    let num_tokens = qkv.q.dim(0)?;
    let heads = |x: &Tensor, bias: Option<&Tensor>| -> Result<Tensor> {
        let x = match bias {
            Some(b) => x.broadcast_add(b)?,
            None => x.clone(),
        };
        x.reshape((num_tokens, x.dim(1)? / head_dim, head_dim))
    };
    let [bq, bk, bv] = qkv.bias;
    let (q, k, v) = (heads(qkv.q, bq)?, heads(qkv.k, bk)?, heads(qkv.v, bv)?);
    debug_assert_eq!(q.dim(1)?, num_heads);
    let (q, k) = match qkv.head_norm {
        Some((wq, wk, eps)) => (rms_norm(&q, wq, eps)?, rms_norm(&k, wk, eps)?),
        None => (q, k),
    };
    let q = rotary_embedding(&q, cos, sin, metadata.positions())?;
    let k = rotary_embedding(&k, cos, sin, metadata.positions())?;
    // A cache in another dtype than the activations (`--kv-cache-dtype`) stores them rounded.
    let (k, v) = match key_cache.dtype() {
        dtype if dtype != k.dtype() => (k.to_dtype(dtype)?, v.to_dtype(dtype)?),
        _ => (k, v),
    };
    write_kv_step(key_cache, value_cache, &k, &v, metadata)?;
    Ok(q)
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};

    use super::{qkv_step, Qkv};
    use crate::{rms_norm, rotary_embedding, AttentionMetadata, DeviceMetadata};

    /// `(max_positions, head_dim / 2)` cos and sin of `p * 10000^(-2i / head_dim)`.
    fn tables(max_positions: usize, head_dim: usize, dev: &Device) -> (Tensor, Tensor) {
        let half = head_dim / 2;
        let angles: Vec<f32> = (0..max_positions * half).map(|k| (k / half) as f32 / 1e4f32.powf(2.0 * (k % half) as f32 / head_dim as f32)).collect();
        let angles = Tensor::from_vec(angles, (max_positions, half), dev).unwrap();
        (angles.cos().unwrap(), angles.sin().unwrap())
    }

    /// The op's contract on the CPU, from a stacked projection's column views: q comes back
    /// biased, normalised and rotated; k (rotated) and v land in the step's slots, and no
    /// other slot changes.
    #[test]
    fn biases_norms_rotates_and_writes_the_slots() {
        let dev = Device::Cpu;
        let (heads, kv_heads, d, tokens) = (4, 2, 64, 3);
        let (q_w, kv_w) = (heads * d, kv_heads * d);
        let stacked = Tensor::randn(0f32, 1., (tokens, q_w + 2 * kv_w), &dev).unwrap();
        let (q, k, v) = (stacked.narrow(1, 0, q_w).unwrap(), stacked.narrow(1, q_w, kv_w).unwrap(), stacked.narrow(1, q_w + kv_w, kv_w).unwrap());
        let bias: Vec<Tensor> = [q_w, kv_w, kv_w].iter().map(|&w| Tensor::randn(0f32, 1., w, &dev).unwrap()).collect();
        let (wq, wk) = (Tensor::randn(1f32, 0.1, d, &dev).unwrap(), Tensor::randn(1f32, 0.1, d, &dev).unwrap());
        let (cos, sin) = tables(64, d, &dev);
        // Three tokens of one sequence after 5 cached ones, blocks of 4: slots 5, 6, 7 of
        // blocks [2, 0].
        let meta = DeviceMetadata::new(AttentionMetadata::single(&[2, 0], 4, 8, 3), &dev).unwrap();
        let cache = || Tensor::zeros((3, 4, kv_heads, d), DType::F32, &dev).unwrap();
        for (with_bias, with_norm) in [(false, false), (true, false), (false, true), (true, true)] {
            let (kc, vc) = (cache(), cache());
            let qkv = Qkv {
                q: &q,
                k: &k,
                v: &v,
                bias: if with_bias { [Some(&bias[0]), Some(&bias[1]), Some(&bias[2])] } else { [None; 3] },
                head_norm: with_norm.then_some((&wq, &wk, 1e-6)),
            };
            let got = qkv_step(&qkv, &cos, &sin, &kc, &vc, &meta).unwrap();

            let expect = |x: &Tensor, b: &Tensor, w: Option<&Tensor>, rotate: bool| {
                let x = if with_bias { x.broadcast_add(b).unwrap() } else { x.contiguous().unwrap() };
                let x = x.reshape((tokens, (), d)).unwrap();
                let x = match w {
                    Some(w) if with_norm => rms_norm(&x, w, 1e-6).unwrap(),
                    _ => x,
                };
                if rotate { rotary_embedding(&x, &cos, &sin, meta.positions()).unwrap() } else { x }
            };
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(flat(&got), flat(&expect(&q, &bias[0], Some(&wq), true)), "q, bias {with_bias} norm {with_norm}");
            // Position p sits in slot table[p / 4] * 4 + p % 4: positions 5, 6, 7 in slots 1, 2, 3.
            let slots = |c: &Tensor| c.reshape((12, kv_heads * d)).unwrap();
            let (kc, vc) = (slots(&kc), slots(&vc));
            let k_want = expect(&k, &bias[1], Some(&wk), true).reshape((tokens, kv_w)).unwrap();
            let v_want = expect(&v, &bias[2], None, false).reshape((tokens, kv_w)).unwrap();
            assert_eq!(flat(&kc.narrow(0, 1, 3).unwrap()), flat(&k_want), "k");
            assert_eq!(flat(&vc.narrow(0, 1, 3).unwrap()), flat(&v_want), "v");
            let untouched = Tensor::cat(&[kc.narrow(0, 0, 1).unwrap(), kc.narrow(0, 4, 8).unwrap(), vc.narrow(0, 0, 1).unwrap(), vc.narrow(0, 4, 8).unwrap()], 0).unwrap();
            assert!(flat(&untouched).iter().all(|&x| x == 0.0), "another slot was written");
        }
    }

    #[test]
    fn mismatched_shapes_are_an_error() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((2, 128), DType::F32, &dev).unwrap();
        let bad = Tensor::zeros((2, 64), DType::F32, &dev).unwrap();
        let (cos, sin) = tables(16, 64, &dev);
        let meta = DeviceMetadata::new(AttentionMetadata::single(&[0], 4, 2, 2), &dev).unwrap();
        let cache = Tensor::zeros((1, 4, 2, 64), DType::F32, &dev).unwrap();
        let qkv = Qkv { q: &x, k: &x, v: &bad, bias: [None; 3], head_norm: None };
        let e = qkv_step(&qkv, &cos, &sin, &cache, &cache, &meta).unwrap_err().to_string();
        assert!(e.contains("do not fit"), "{e}");
    }
}
