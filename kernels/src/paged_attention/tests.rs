//! The paged kernel against a naive causal attention over contiguous K/V.

use candle_core::{DType, Device, Tensor};

use super::{Dims, PagedAttention};
use crate::elem::Elem;
use crate::fused::simd::Simd;
use crate::{paged_attention, write_kv, AttentionMetadata, DeviceMetadata};

/// Plain causal attention for one sequence in f64: q `(q_len, heads, d)` at the last `q_len`
/// positions of k/v `(seq_len, kv_heads, d)`.
fn naive(q: &[f32], k: &[f32], v: &[f32], q_len: usize, seq_len: usize, heads: usize, kv_heads: usize, d: usize, scale: f64) -> Vec<f32> {
    let mut out = vec![0f32; q_len * heads * d];
    for i in 0..q_len {
        let pos = seq_len - q_len + i;
        for h in 0..heads {
            let kvh = h / (heads / kv_heads);
            let qv = &q[(i * heads + h) * d..][..d];
            let scores: Vec<f64> = (0..=pos)
                .map(|j| qv.iter().zip(&k[(j * kv_heads + kvh) * d..][..d]).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() * scale)
                .collect();
            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let sum: f64 = exps.iter().sum();
            for c in 0..d {
                let o: f64 = (0..=pos).map(|j| exps[j] / sum * v[(j * kv_heads + kvh) * d + c] as f64).sum();
                out[(i * heads + h) * d + c] = o as f32;
            }
        }
    }
    out
}

struct Case {
    /// (tokens already cached, new tokens) per sequence.
    seqs: Vec<(usize, usize)>,
    heads: usize,
    kv_heads: usize,
    d: usize,
    block_size: usize,
}

/// Fills the cache through `write_kv` in two steps (cached prefix, then the new tokens), runs
/// the kernel over the new tokens and returns the largest difference from `naive`.
fn max_error(case: &Case, dtype: DType) -> f32 {
    let dev = Device::Cpu;
    let Case { seqs, heads, kv_heads, d, block_size } = case;
    let (heads, kv_heads, d, bs) = (*heads, *kv_heads, *d, *block_size);
    let blocks_per_seq: Vec<usize> = seqs.iter().map(|(c, n)| (c + n).div_ceil(bs)).collect();
    let max_blocks = *blocks_per_seq.iter().max().unwrap();
    let num_blocks = blocks_per_seq.iter().sum::<usize>() + 3;
    // Hand out blocks in a scrambled order so the table, not contiguity, decides placement.
    // (1_000_003 is prime, so i -> i * p mod n is a permutation for any n below it.)
    let mut free: Vec<u32> = (0..num_blocks as u64).map(|i| ((i * 1_000_003 + 3) % num_blocks as u64) as u32).collect();
    let mut tables = vec![0u32; seqs.len() * max_blocks];
    for (s, n) in blocks_per_seq.iter().enumerate() {
        for b in 0..*n {
            tables[s * max_blocks + b] = free.pop().unwrap();
        }
    }
    let key_cache = Tensor::zeros((num_blocks, bs, kv_heads, d), dtype, &dev).unwrap();
    let value_cache = key_cache.zeros_like().unwrap();
    let mut all_k = vec![];
    let mut all_v = vec![];
    for (s, (cached, new)) in seqs.iter().enumerate() {
        let len = cached + new;
        let k = Tensor::randn(0f32, 1., (len, kv_heads, d), &dev).unwrap().to_dtype(dtype).unwrap();
        let v = Tensor::randn(0f32, 1., (len, kv_heads, d), &dev).unwrap().to_dtype(dtype).unwrap();
        let table = &tables[s * max_blocks..(s + 1) * max_blocks];
        for (start, end) in [(0, *cached), (*cached, len)] {
            let slots = AttentionMetadata::single(table, bs, end, end - start).slot_mapping;
            write_kv(&key_cache, &value_cache, &k.narrow(0, start, end - start).unwrap(), &v.narrow(0, start, end - start).unwrap(), &slots).unwrap();
        }
        all_k.push(k.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap());
        all_v.push(v.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }
    let mut meta = AttentionMetadata { max_blocks_per_seq: max_blocks, block_tables: tables.clone(), query_start_loc: vec![0], ..Default::default() };
    for (s, (cached, new)) in seqs.iter().enumerate() {
        let single = AttentionMetadata::single(&tables[s * max_blocks..(s + 1) * max_blocks], bs, cached + new, *new);
        meta.slot_mapping.extend(single.slot_mapping);
        meta.seq_lens.push((cached + new) as u32);
        meta.query_start_loc.push(meta.query_start_loc.last().unwrap() + *new as u32);
    }
    let num_tokens: usize = seqs.iter().map(|(_, n)| n).sum();
    let q = Tensor::randn(0f32, 1., (num_tokens, heads, d), &dev).unwrap().to_dtype(dtype).unwrap();
    let scale = 1.0 / (d as f32).sqrt();
    let out = paged_attention(&q, &key_cache, &value_cache, &meta, scale).unwrap();
    let op_meta = DeviceMetadata::new(meta.clone(), &dev).unwrap();
    let op = PagedAttention {
        metadata: &op_meta,
        dims: Dims { num_heads: heads, num_kv_heads: kv_heads, head_dim: d, block_size: bs },
        scale,
        simd: Simd::Scalar,
    };
    match dtype {
        DType::F32 => levels_agree::<f32>(&op, &q, &key_cache, &value_cache),
        DType::BF16 => levels_agree::<half::bf16>(&op, &q, &key_cache, &value_cache),
        _ => levels_agree::<half::f16>(&op, &q, &key_cache, &value_cache),
    }
    assert_eq!(out.dims(), &[num_tokens, heads, d]);
    assert_eq!(out.dtype(), dtype);
    let out = out.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let qf = q.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let mut worst = 0f32;
    let mut row = 0;
    for (s, (cached, new)) in seqs.iter().enumerate() {
        let expect = naive(&qf[row * heads * d..(row + new) * heads * d], &all_k[s], &all_v[s], *new, cached + new, heads, kv_heads, d, scale as f64);
        let got = &out[row * heads * d..(row + new) * heads * d];
        worst = got.iter().zip(&expect).map(|(a, b)| (a - b).abs()).fold(worst, f32::max);
        row += new;
    }
    worst
}

/// The CPU kernel gives the same bits with every instruction set this CPU has.
fn levels_agree<T: Elem + candle_core::WithDType>(op: &PagedAttention, q: &Tensor, k: &Tensor, v: &Tensor) {
    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<T>().unwrap();
    let (q, k, v) = (flat(q), flat(k), flat(v));
    let bits = |out: Vec<T>| out.into_iter().map(|x| x.to_f32().to_bits()).collect::<Vec<_>>();
    let reference = bits(op.run_with(Simd::Scalar, &q, &k, &v));
    for simd in Simd::available() {
        assert_eq!(bits(op.run_with(simd, &q, &k, &v)), reference, "{simd:?}");
    }
}

fn mixed_batch() -> Case {
    // A fresh prefill, a chunk after a cached prefix that ends mid-block, and two decodes.
    Case { seqs: vec![(0, 37), (21, 12), (50, 1), (0, 1)], heads: 14, kv_heads: 2, d: 64, block_size: 16 }
}

#[test]
fn matches_naive_attention_f32() {
    let err = max_error(&mixed_batch(), DType::F32);
    assert!(err < 1e-5, "max error {err}");
}

#[test]
fn matches_naive_attention_head_dim_128_small_blocks() {
    let case = Case { seqs: vec![(5, 3), (0, 9), (130, 1)], heads: 8, kv_heads: 8, d: 128, block_size: 4 };
    let err = max_error(&case, DType::F32);
    assert!(err < 1e-5, "max error {err}");
}

#[test]
fn matches_naive_attention_odd_head_dim_and_long_context() {
    // 40 = two full 16-lane chunks and a remainder; 300 keys = chunks and a remainder in the
    // softmax; a group of 3 query heads per KV head.
    let case = Case { seqs: vec![(299, 1), (250, 7)], heads: 6, kv_heads: 2, d: 40, block_size: 16 };
    let err = max_error(&case, DType::F32);
    assert!(err < 1e-5, "max error {err}");
}

#[test]
fn matches_naive_attention_with_more_than_eight_heads_per_kv_head() {
    // A group of 10: tiles of 6 tokens (60 rows: score passes of 12 rows with AVX-512, of 6
    // with AVX2; value passes of 6 and 3), the short last tile and the decode leave remainders.
    let case = Case { seqs: vec![(40, 1), (3, 20)], heads: 20, kv_heads: 2, d: 128, block_size: 16 };
    let err = max_error(&case, DType::F32);
    assert!(err < 1e-5, "max error {err}");
}

#[test]
fn matches_naive_attention_bf16_and_f16() {
    // Inputs are rounded to 8 (bf16) / 11 (f16) mantissa bits before both computations; the
    // remaining error is the rounding of the output and of the accumulation order.
    let bf16 = max_error(&mixed_batch(), DType::BF16);
    assert!(bf16 < 2e-2, "bf16 max error {bf16}");
    let f16 = max_error(&mixed_batch(), DType::F16);
    assert!(f16 < 2e-3, "f16 max error {f16}");
}

#[test]
fn attention_tiles_match_the_reference_bits() {
    // Tiles of consecutive tokens (AVX-512, AVX2) against the scalar kernel's bits
    // (`levels_agree`): chunks after cached prefixes that cross the value pass's 128-key
    // chunks, fresh prompts, tiles cut short at a sequence's end, decodes past a 128-key
    // chunk; groups of 7 at d 64
    // (the 0.5B's shape: 9-token tiles of 63 rows) and at d 128 (the 7B's), and a group of 72
    // (one token a tile, more rows than a tile aims for), in f32 and bf16.
    let small = Case { seqs: vec![(300, 45), (0, 70), (5, 1), (200, 1)], heads: 14, kv_heads: 2, d: 64, block_size: 16 };
    let large = Case { seqs: vec![(200, 33), (129, 6), (0, 20)], heads: 28, kv_heads: 4, d: 128, block_size: 16 };
    let wide = Case { seqs: vec![(10, 3), (140, 1)], heads: 72, kv_heads: 1, d: 64, block_size: 16 };
    for case in [&small, &large, &wide] {
        let err = max_error(case, DType::F32);
        assert!(err < 1e-5, "max error {err}");
        let err = max_error(case, DType::BF16);
        assert!(err < 2e-2, "bf16 max error {err}");
    }
}

#[test]
fn rejects_slots_outside_the_cache() {
    let dev = Device::Cpu;
    let cache = Tensor::zeros((2, 4, 1, 8), DType::F32, &dev).unwrap();
    let k = Tensor::zeros((1, 1, 8), DType::F32, &dev).unwrap();
    assert!(write_kv(&cache, &cache.zeros_like().unwrap(), &k, &k, &[8]).is_err());
    let meta = AttentionMetadata { query_start_loc: vec![0, 1], seq_lens: vec![9], block_tables: vec![0, 1], max_blocks_per_seq: 2, slot_mapping: vec![0] };
    let q = Tensor::zeros((1, 1, 8), DType::F32, &dev).unwrap();
    let err = paged_attention(&q, &cache, &cache, &meta, 1.0).unwrap_err();
    assert!(err.to_string().contains("needs 3 blocks"), "{err}");
}
