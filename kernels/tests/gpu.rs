//! Every CUDA op against its CPU implementation (the reference) on identical random inputs.
//!
//! Needs an NVIDIA GPU: built only with `--features cuda`, run by `scripts/gpu-check.sh` on
//! the GPU machine. All tests use GPU 0.
#![cfg(feature = "cuda")]

use candle_core::{DType, Device, Tensor};
use qwen_serve_kernels::{
    add_rms_norm, argmax_rows, sample_whole_rows, top_k_candidates, unpack_candidates, paged_attention, paged_attention_step, qkv_matmul_step, qkv_matmul_step_fused, qkv_step, qkv_step_fused, rms_norm, rotary_embedding, silu_mul,
    small_matmul_fused, write_kv, write_kv_step, AttentionMetadata, DeviceMetadata, MatmulFusion, Qkv, QkvMatmul,
};

const DTYPES: [DType; 3] = [DType::F32, DType::BF16, DType::F16];

/// One device for all tests: every `Device::new_cuda` is a distinct device to candle, and ops
/// refuse tensors from two of them.
fn gpu() -> Device {
    static GPU: std::sync::OnceLock<Device> = std::sync::OnceLock::new();
    GPU.get_or_init(|| Device::new_cuda(0).expect("a CUDA device")).clone()
}

/// Largest `|a - b| / max(|b|, 1)` (b is the CPU reference); NaN counts as infinite.
fn max_rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    let a = a.to_device(&Device::Cpu).unwrap().to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.to_device(&Device::Cpu).unwrap().to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(a.len(), b.len());
    a.iter().zip(&b).map(|(x, y)| {
        let d = (x - y).abs() / y.abs().max(1.0);
        if d.is_nan() { f32::INFINITY } else { d }
    }).fold(0f32, f32::max)
}

/// Both sides compute in f32 from the same rounded inputs; what differs is summation order and
/// the final rounding, about one unit in the last place of the output type.
fn tolerance(dtype: DType) -> f32 {
    match dtype {
        DType::F32 => 1e-4,
        DType::BF16 => 1.6e-2,
        _ => 2e-3,
    }
}

fn randn(shape: &[usize], dtype: DType) -> Tensor {
    Tensor::randn(0f32, 1., shape, &Device::Cpu).unwrap().to_dtype(dtype).unwrap()
}

struct Case {
    /// (tokens already cached, new tokens) per sequence.
    seqs: Vec<(usize, usize)>,
    heads: usize,
    kv_heads: usize,
    d: usize,
    block_size: usize,
}

/// Runs write_kv (cached prefix, then the step's tokens) and paged attention for `case` on the
/// CPU and on the GPU from the same inputs; returns (worst output difference, caches equal).
fn attention_difference(case: &Case, dtype: DType) -> (f32, bool) {
    let Case { seqs, heads, kv_heads, d, block_size: bs } = case;
    let (heads, kv_heads, d, bs) = (*heads, *kv_heads, *d, *bs);
    let blocks: Vec<usize> = seqs.iter().map(|(c, n)| (c + n).div_ceil(bs)).collect();
    let max_blocks = *blocks.iter().max().unwrap();
    let num_blocks = blocks.iter().sum::<usize>() + 2;
    // Blocks handed out back to front, so tables are not the identity.
    let mut free: Vec<u32> = (0..num_blocks as u32).collect();
    let mut tables = vec![0u32; seqs.len() * max_blocks];
    for (s, n) in blocks.iter().enumerate() {
        for b in 0..*n {
            tables[s * max_blocks + b] = free.pop().unwrap();
        }
    }
    let table = |s: usize| &tables[s * max_blocks..(s + 1) * max_blocks];
    let prefix_slots: Vec<u32> = seqs
        .iter()
        .enumerate()
        .flat_map(|(s, (c, _))| AttentionMetadata::single(table(s), bs, *c, *c).slot_mapping)
        .collect();
    let mut meta = AttentionMetadata { max_blocks_per_seq: max_blocks, block_tables: tables.clone(), query_start_loc: vec![0], ..Default::default() };
    for (s, (c, n)) in seqs.iter().enumerate() {
        meta.slot_mapping.extend(AttentionMetadata::single(table(s), bs, c + n, *n).slot_mapping);
        meta.seq_lens.push((c + n) as u32);
        meta.query_start_loc.push(meta.query_start_loc.last().unwrap() + *n as u32);
    }
    let num_tokens = meta.num_tokens();
    let (k_prefix, v_prefix) = (randn(&[prefix_slots.len(), kv_heads, d], dtype), randn(&[prefix_slots.len(), kv_heads, d], dtype));
    let (k_new, v_new) = (randn(&[num_tokens, kv_heads, d], dtype), randn(&[num_tokens, kv_heads, d], dtype));
    let q = randn(&[num_tokens, heads, d], dtype);
    let scale = 1.0 / (d as f32).sqrt();

    let run = |dev: &Device| {
        let t = |x: &Tensor| x.to_device(dev).unwrap();
        let key_cache = Tensor::zeros((num_blocks, bs, kv_heads, d), dtype, dev).unwrap();
        let value_cache = key_cache.zeros_like().unwrap();
        write_kv(&key_cache, &value_cache, &t(&k_prefix), &t(&v_prefix), &prefix_slots).unwrap();
        let step = DeviceMetadata::new(meta.clone(), dev).unwrap();
        write_kv_step(&key_cache, &value_cache, &t(&k_new), &t(&v_new), &step).unwrap();
        // Twice with one DeviceMetadata, as two layers would: the second reuses the tiles and the
        // split counters, which the first must leave at zero.
        let first = paged_attention_step(&t(&q), &key_cache, &value_cache, &step, scale).unwrap();
        let second = paged_attention_step(&t(&q), &key_cache, &value_cache, &step, scale).unwrap();
        assert_eq!(max_rel_diff(&first, &second), 0.0, "two layers' calls differ");
        (first, key_cache, value_cache)
    };
    let (cpu_out, cpu_k, cpu_v) = run(&Device::Cpu);
    let (gpu_out, gpu_k, gpu_v) = run(&gpu());
    assert_eq!((gpu_out.dims(), gpu_out.dtype()), (cpu_out.dims(), dtype));
    // The host-metadata entry point agrees with the step one.
    let plain = paged_attention(&q.to_device(&gpu()).unwrap(), &gpu_k, &gpu_v, &meta, scale).unwrap();
    assert_eq!(max_rel_diff(&plain, &gpu_out), 0.0);
    let caches_equal = max_rel_diff(&gpu_k, &cpu_k) == 0.0 && max_rel_diff(&gpu_v, &cpu_v) == 0.0;
    (max_rel_diff(&gpu_out, &cpu_out), caches_equal)
}

fn check_attention(case: Case) {
    for dtype in DTYPES {
        let (err, caches_equal) = attention_difference(&case, dtype);
        assert!(caches_equal, "{dtype:?}: write_kv caches differ");
        assert!(err < tolerance(dtype), "{dtype:?} seqs {:?} d {}: max difference {err}", case.seqs, case.d);
    }
}

#[test]
fn attention_mixed_batch_head_dim_64() {
    // Qwen2.5-0.5B's heads: a prefill, a chunk after a prefix ending mid-block, two decodes.
    check_attention(Case { seqs: vec![(0, 37), (21, 12), (50, 1), (0, 1)], heads: 14, kv_heads: 2, d: 64, block_size: 16 });
}

#[test]
fn attention_mixed_batch_head_dim_128() {
    // Qwen2.5-7B's heads (group of 7), small blocks, a longer prefill over many tiles.
    check_attention(Case { seqs: vec![(5, 3), (0, 300), (130, 1)], heads: 28, kv_heads: 4, d: 128, block_size: 4 });
}

#[test]
fn attention_without_grouping() {
    check_attention(Case { seqs: vec![(0, 20), (7, 1)], heads: 8, kv_heads: 8, d: 128, block_size: 16 });
}

#[test]
fn attention_long_decodes_split_the_keys() {
    // Few sequences with thousands of keys: the kernel splits each key range across blocks
    // and merges the splits (flash-decoding), including a split count that does not divide.
    check_attention(Case { seqs: vec![(5000, 1), (3001, 1), (40, 1)], heads: 14, kv_heads: 2, d: 64, block_size: 16 });
    check_attention(Case { seqs: vec![(12_345, 1)], heads: 28, kv_heads: 4, d: 128, block_size: 16 });
}

/// A decode step through metadata made for a CUDA graph (launch shaped for 8192-key
/// sequences, the step's values copied in) gives exactly the bits of the step's own launch:
/// replaying decode steps as graphs changes nothing but speed.
#[test]
fn attention_in_a_graph_shaped_launch_gives_the_eager_bits() {
    let (heads, kv_heads, d, bs) = (14, 2, 64, 16);
    // Also: keys within one chunk (eagerly unsplit), and sequences past the 64-split cap (2,048
    // keys at 32 a split), where both launches lengthen the splits.
    for lens in [vec![301usize, 91], vec![41], vec![1000, 5, 130, 700], vec![20], vec![3000, 2100]] {
        for dtype in DTYPES {
            let num_blocks: usize = lens.iter().map(|l| l.div_ceil(bs)).sum::<usize>() + 1;
            let max_blocks = lens.iter().map(|l| l.div_ceil(bs)).max().unwrap();
            let mut meta = AttentionMetadata { max_blocks_per_seq: max_blocks, query_start_loc: vec![0], ..Default::default() };
            let mut next = 1u32;
            for (s, &len) in lens.iter().enumerate() {
                let table: Vec<u32> = (0..max_blocks).map(|b| if b < len.div_ceil(bs) { next + b as u32 } else { 0 }).collect();
                next += len.div_ceil(bs) as u32;
                meta.slot_mapping.extend(AttentionMetadata::single(&table, bs, len, 1).slot_mapping);
                meta.block_tables.extend(table);
                meta.seq_lens.push(len as u32);
                meta.query_start_loc.push(s as u32 + 1);
            }
            let dev = gpu();
            let key_cache = randn(&[num_blocks, bs, kv_heads, d], dtype).to_device(&dev).unwrap();
            let value_cache = randn(&[num_blocks, bs, kv_heads, d], dtype).to_device(&dev).unwrap();
            let q = randn(&[lens.len(), heads, d], dtype).to_device(&dev).unwrap();
            let eager = DeviceMetadata::new(meta.clone(), &dev).unwrap();
            let graph = DeviceMetadata::for_graph(lens.len(), 8192 / bs, bs, heads / kv_heads, &dev).unwrap();
            graph.refill(&meta, bs).unwrap();
            let want = paged_attention_step(&q, &key_cache, &value_cache, &eager, 0.125).unwrap();
            let got = paged_attention_step(&q, &key_cache, &value_cache, &graph, 0.125).unwrap();
            let (want, got) = (want.to_dtype(DType::F32).unwrap(), got.to_dtype(DType::F32).unwrap());
            let same = want.flatten_all().unwrap().to_vec1::<f32>().unwrap() == got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(same, "{dtype:?} lengths {lens:?}: differ by {}", max_rel_diff(&got, &want));
        }
    }
}

#[test]
fn argmax_rows_matches_the_cpu() {
    for (rows, vocab) in [(1, 151_936), (3, 300), (256, 152_064), (2, 5000), (4, 1)] {
        let mut x = Tensor::randn(0f32, 1., (rows, vocab), &Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
        for (r, row) in x.iter_mut().enumerate() {
            // Ties between slices, as logits rounded from bf16 often are; NaN and infinities.
            let top = row.iter().copied().fold(f32::MIN, f32::max);
            if vocab > 1 {
                row[vocab - 1 - r % (vocab / 2).max(1)] = top + 1.0;
                row[vocab / 2 - r % (vocab / 4).max(1)] = top + 1.0;
            }
            match r % 4 {
                1 => row[0] = f32::NAN,
                2 => row[vocab / 3] = f32::NAN,
                3 => row.iter_mut().for_each(|v| *v = f32::NEG_INFINITY),
                _ => {}
            }
        }
        let flat: Vec<f32> = x.into_iter().flatten().collect();
        let f32_rows = Tensor::from_vec(flat, (rows, vocab), &Device::Cpu).unwrap();
        // Half-precision rows (the GPU's head output) against the CPU on the same rounded values.
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let cpu = f32_rows.to_dtype(dtype).unwrap();
            let want = argmax_rows(&cpu).unwrap().to_vec1::<u32>().unwrap();
            let got = argmax_rows(&cpu.to_device(&gpu()).unwrap()).unwrap().to_vec1::<u32>().unwrap();
            assert_eq!(got, want, "{dtype:?} rows {rows}, vocab {vocab}");
        }
    }
}

/// The best candidates of each row (radix select on the GPU) are the CPU's set, in f32, bf16
/// and f16, at Qwen's vocabulary: ks from 1 to past the finite values, a row left out (k = 0),
/// ties, NaN and -inf, and a count above the output's capacity.
#[test]
fn top_k_candidates_match_the_cpu() {
    let (rows, vocab, cap) = (9, 152_064, 2048);
    let mut x = Tensor::randn(0f32, 2., (rows, vocab), &Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
    for (r, row) in x.iter_mut().enumerate() {
        for (i, v) in row.iter_mut().enumerate() {
            if r % 3 == 1 {
                *v = (*v * 4.0).round() / 4.0 + 0.0; // few distinct values: ties at the cut
            }
            if i % 1009 == 3 {
                *v = f32::NAN;
            } else if i % 1013 == 5 {
                *v = f32::NEG_INFINITY;
            }
        }
    }
    x[8].iter_mut().skip(10).for_each(|v| *v = f32::NEG_INFINITY); // 10 finite values at most
    let ks = [1u32, 20, 50, 1000, 0, 2047, 64, 5000, 40];
    let flat: Vec<f32> = x.into_iter().flatten().collect();
    let f32_rows = Tensor::from_vec(flat, (rows, vocab), &Device::Cpu).unwrap();
    let ks_cpu = Tensor::new(&ks, &Device::Cpu).unwrap();
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        let cpu = f32_rows.to_dtype(dtype).unwrap();
        let want = top_k_candidates(&cpu, &ks_cpu, cap).unwrap().to_vec2::<u32>().unwrap();
        let got = top_k_candidates(&cpu.to_device(&gpu()).unwrap(), &ks_cpu.to_device(&gpu()).unwrap(), cap).unwrap().to_vec2::<u32>().unwrap();
        for r in 0..rows {
            assert_eq!(got[r][0], want[r][0], "{dtype:?} row {r} (k {}): counts", ks[r]);
            assert_eq!(unpack_candidates(&got[r]), unpack_candidates(&want[r]), "{dtype:?} row {r} (k {})", ks[r]);
        }
        assert!(want[7][0] as usize > cap && unpack_candidates(&want[7]).is_none(), "k 5000 overflows");
        assert_eq!(want[4][0], 0);
        assert!(want[8][0] <= 10);
    }
}

/// Whole-vocabulary draws on the GPU against the CPU's (the sampler's own arithmetic) at
/// Qwen's vocabulary, in f32, bf16 and f16: the same tokens but where `expf`'s last bits move a
/// boundary, and every token at its draw's place in the distribution (its cumulative mass
/// brackets u); rows with +inf or nothing finite get the argmax, rows with temperature 0 are
/// left out.
#[test]
fn whole_vocabulary_draws_match_the_cpu() {
    let (rows, vocab) = (64, 152_064);
    let mut x = Tensor::randn(0f32, 3., (rows, vocab), &Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
    x[5][77] = f32::INFINITY;
    x[6].iter_mut().for_each(|v| *v = f32::NEG_INFINITY);
    x[7][0] = f32::NAN;
    let temps: Vec<f32> = (0..rows).map(|r| if r == 9 { 0.0 } else { 0.3 + (r % 7) as f32 * 0.2 }).collect();
    let params: Vec<f32> = temps.iter().enumerate().flat_map(|(r, &t)| [t, if r % 3 == 0 { 0.02 } else { 0.0 }]).collect();
    let us: Vec<f64> = (0..rows).map(|r| ((r as f64 * 0.618_033_988_7) % 1.0).min(0.999_999)).collect();
    let flat: Vec<f32> = x.into_iter().flatten().collect();
    let f32_rows = Tensor::from_vec(flat, (rows, vocab), &Device::Cpu).unwrap();
    let params = Tensor::from_vec(params, (rows, 2), &Device::Cpu).unwrap();
    let us_t = Tensor::new(us.as_slice(), &Device::Cpu).unwrap();
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        let cpu = f32_rows.to_dtype(dtype).unwrap();
        let values = cpu.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap();
        let want = sample_whole_rows(&cpu, &params, &us_t).unwrap().to_vec1::<u32>().unwrap();
        let got = sample_whole_rows(&cpu.to_device(&gpu()).unwrap(), &params.to_device(&gpu()).unwrap(), &us_t.to_device(&gpu()).unwrap())
            .unwrap()
            .to_vec1::<u32>()
            .unwrap();
        let same = got.iter().zip(&want).filter(|(a, b)| a == b).count();
        assert!(same + 2 >= rows, "{dtype:?}: {same} of {rows} the same");
        for r in [5, 6, 7, 9] {
            assert_eq!(got[r], want[r], "{dtype:?} row {r}");
        }
        for r in (0..rows).filter(|&r| ![5, 6, 9].contains(&r)) {
            let row: Vec<f64> = values[r].iter().map(|&v| v as f64).collect();
            let max = row.iter().copied().filter(|v| !v.is_nan()).fold(f64::MIN, f64::max);
            let min_p = if r % 3 == 0 { 0.02 } else { 0.0 };
            let w: Vec<f64> = row.iter().map(|&l| ((l - max) / temps[r] as f64).exp()).map(|w| if w >= min_p && w > 0.0 { w } else { 0.0 }).collect();
            let total: f64 = w.iter().sum();
            let before: f64 = w[..got[r] as usize].iter().sum::<f64>() / total;
            let after = before + w[got[r] as usize] / total;
            assert!(before - 1e-5 <= us[r] && us[r] <= after + 1e-5, "{dtype:?} row {r}: u {} outside [{before}, {after}]", us[r]);
        }
    }
}

/// The few-rows matmul against its CPU loop (exact sums in f64), at 1 to 8 rows and the shapes
/// of Qwen2.5-0.5B's and -7B's projections (odd output counts too); and each row's output is
/// the same bits whatever number of rows come with it. An output may differ from the exact sum
/// by its dtype's rounding (`tolerance`, relative) plus f32 accumulation: 1e-6 of
/// `sum |x_j w_j|` (about 16 units of f32 rounding; a wrong or missing term costs ~1 over
/// `k` terms of ~1).
#[test]
fn small_matmul_matches_the_cpu() {
    for (n, k) in [(1152, 896), (37, 64), (4864 * 2, 896), (3584, 18944), (5, 3584)] {
        for dtype in DTYPES {
            let w = randn(&[n, k], dtype);
            let x = randn(&[8, k], dtype);
            check_small_matmul(&x, &w, None, dtype, &format!("{dtype:?} ({n}, {k})"));
        }
    }
}

/// Each fusion of the few-rows matmul (the norm before it, SiLU-and-mul of gate over up, the
/// residual add after it, f32 logits) against its CPU loop, at the 0.5B's shapes (q/k/v, gate/up,
/// down) and odd ones, as [`small_matmul_matches_the_cpu`]. The bound adds each rounding the
/// kernel makes: gate and up are rounded before SiLU, the product before the residual add.
#[test]
fn small_matmul_fusions_match_the_cpu() {
    for (n, k) in [(1152, 896), (37, 64), (4864, 896), (896, 4864), (5, 3584)] {
        for dtype in DTYPES {
            let w = randn(&[2 * n, k], dtype);
            // x ~ N(0, 16): 1 / rms is 1/4, so a norm left out shows in every dtype.
            let x = (randn(&[8, k], DType::F32) * 4.0).unwrap().to_dtype(dtype).unwrap();
            let g = randn(&[k], DType::F32).affine(0.2, 1.0).unwrap().to_dtype(dtype).unwrap();
            let r = randn(&[8, n], dtype);
            let half = w.narrow(0, 0, n).unwrap();
            let what = |f: &str| format!("{f} {dtype:?} ({n}, {k})");
            check_small_matmul(&x, &half, Some(MatmulFusion::Norm { weight: &g, eps: 1e-6 }), dtype, &what("norm"));
            check_small_matmul(&x, &half, Some(MatmulFusion::NormF32 { weight: &g, eps: 1e-6 }), dtype, &what("norm_f32"));
            check_small_matmul(&x, &w, Some(MatmulFusion::GateUp { weight: &g, eps: 1e-6 }), dtype, &what("gate_up"));
            check_small_matmul(&x, &half, Some(MatmulFusion::Residual(&r)), dtype, &what("residual"));
        }
    }
    // The 7B's down projection with its residual add: x (8 rows of 18,944) is larger than L1.
    for dtype in DTYPES {
        let (w, x, r) = (randn(&[3584, 18944], dtype), randn(&[8, 18944], dtype), randn(&[8, 3584], dtype));
        check_small_matmul(&x, &w, Some(MatmulFusion::Residual(&r)), dtype, &format!("residual {dtype:?} (3584, 18944)"));
    }
}

/// `small_matmul_fused(x[..m], w, fusion)` on the GPU against the CPU's, m = 1..8 (`None`: plain).
fn check_small_matmul(x: &Tensor, w: &Tensor, fusion: Option<MatmulFusion>, dtype: DType, what: &str) {
    let on = |t: &Tensor| t.to_device(&gpu()).unwrap();
    let rows = |t: &Tensor| t.to_device(&Device::Cpu).unwrap().to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap();
    let abs = |t: &Tensor| t.to_dtype(DType::F32).unwrap().abs().unwrap();
    let (xg, wg) = (on(x), on(w));
    // The fusion's operand moved to the GPU, and the same fusion of absolute values (the
    // magnitude of each sum's terms).
    let (aux_g, aux_abs) = match fusion {
        Some(MatmulFusion::Norm { weight, .. } | MatmulFusion::NormF32 { weight, .. } | MatmulFusion::GateUp { weight, .. }) => (Some(on(weight)), Some(abs(weight))),
        Some(MatmulFusion::Residual(r)) => (Some(on(r)), None),
        _ => (None, None),
    };
    /// `f` with its operand replaced by `aux`.
    fn with<'a>(f: Option<MatmulFusion>, aux: Option<&'a Tensor>) -> Option<MatmulFusion<'a>> {
        Some(match (f?, aux) {
            (MatmulFusion::Norm { eps, .. }, Some(a)) => MatmulFusion::Norm { weight: a, eps },
            (MatmulFusion::NormF32 { eps, .. }, Some(a)) => MatmulFusion::NormF32 { weight: a, eps },
            (MatmulFusion::GateUp { eps, .. }, Some(a)) => MatmulFusion::GateUp { weight: a, eps },
            (MatmulFusion::Residual(_), Some(a)) => MatmulFusion::Residual(a),
            (MatmulFusion::None, _) => MatmulFusion::None,
            (f, None) => panic!("{f:?} without its operand"),
        })
    }
    let run = |x: &Tensor, w: &Tensor, f: Option<MatmulFusion>| small_matmul_fused(x, w, f.unwrap_or(MatmulFusion::None)).unwrap();
    let gpu_fusion = with(fusion, aux_g.as_ref());
    let residual = matches!(fusion, Some(MatmulFusion::Residual(_)));
    // The CPU loop's rows do not depend on each other either.
    let want8 = rows(&run(x, w, fusion));
    // Each output's sum of |terms| (the norm of |x| by |g| where there is a norm), and for
    // gate/up the two halves' normed products themselves; for the residual add the product.
    let (ax, aw) = (abs(x), abs(w));
    let normed = |x: &Tensor, w: &Tensor, g: Option<&Tensor>| match (fusion, g) {
        (Some(MatmulFusion::GateUp { eps, .. } | MatmulFusion::Norm { eps, .. } | MatmulFusion::NormF32 { eps, .. }), Some(g)) => {
            rows(&run(x, w, Some(MatmulFusion::Norm { weight: g, eps })))
        }
        _ => rows(&run(x, w, None)),
    };
    let gate_up = match fusion {
        Some(MatmulFusion::GateUp { weight, .. }) => {
            let n = w.dim(0).unwrap() / 2;
            let (wg, wu) = (w.narrow(0, 0, n).unwrap(), w.narrow(0, n, n).unwrap());
            let (ag, au) = (aw.narrow(0, 0, n).unwrap(), aw.narrow(0, n, n).unwrap());
            let g = aux_abs.as_ref();
            Some((normed(x, &wg, Some(weight)), normed(x, &wu, Some(weight)), normed(&ax, &ag, g), normed(&ax, &au, g)))
        }
        _ => None,
    };
    let magnitude = normed(&ax, &aw, aux_abs.as_ref());
    let product = residual.then(|| rows(&run(x, w, None)));
    let tol = if matches!(fusion, Some(MatmulFusion::NormF32 { .. })) { tolerance(DType::F32) } else { tolerance(dtype) };
    // Row 0 alone (with row 0 of the residual).
    let r0 = if residual { aux_g.as_ref().map(|r| r.narrow(0, 0, 1).unwrap()) } else { None };
    let one = run(&xg.narrow(0, 0, 1).unwrap(), &wg, r0.as_ref().map(MatmulFusion::Residual).or(gpu_fusion));
    for m in [1, 2, 3, 5, 8] {
        let r_m = if residual { aux_g.as_ref().map(|r| r.narrow(0, 0, m).unwrap()) } else { None };
        let got = run(&xg.narrow(0, 0, m).unwrap(), &wg, r_m.as_ref().map(MatmulFusion::Residual).or(gpu_fusion));
        let mut worst = 0f32;
        for (i, row) in rows(&got).iter().enumerate() {
            for (j, &out) in row.iter().enumerate() {
                let want = want8[i][j];
                let allowed = match (&gate_up, &product) {
                    // Gate and up each rounded to the dtype (from sums off by f32 accumulation),
                    // then silu(g) * u: |silu'| < 1.1, |silu(g)| <= max(|g|, 0.28).
                    (Some((g, u, mag_g, mag_u)), _) => {
                        let (g, u) = (g[i][j], u[i][j]);
                        let (dg, du) = (tol * g.abs() + 1e-6 * mag_g[i][j], tol * u.abs() + 1e-6 * mag_u[i][j]);
                        tol * want.abs() + 1.1 * dg * u.abs() + g.abs().max(0.28) * du + dg * du
                    }
                    // The product rounded before the add.
                    (_, Some(p)) => tol * (want.abs() + p[i][j].abs()) + 1e-6 * magnitude[i][j],
                    _ => tol * want.abs() + 1e-6 * magnitude[i][j],
                };
                let ratio = (out - want).abs() / allowed;
                worst = if ratio.is_nan() { f32::INFINITY } else { worst.max(ratio) };
            }
        }
        assert!(worst <= 1.0, "{what}, {m} rows: an error {worst} times the allowed");
        assert_eq!(max_rel_diff(&got.narrow(0, 0, 1).unwrap(), &one), 0.0, "{what}: row 0 with {m} rows");
    }
}

/// The q/k/v projection with its norm, biases, rotation and cache writes in one launch
/// (`cuda/qkv_matmul.cu`) against the CPU's composition of the same ops, at the 0.5B's and 7B's
/// attention shapes, 1, 3 and 8 tokens of different sequences, with and without biases. Weights
/// are scaled by 1/sqrt(hidden) so projections are ~1 and f32 accumulation stays far below the
/// dtype's rounding.
#[test]
fn qkv_matmul_matches_the_cpu() {
    for dtype in DTYPES {
        for (heads, kv_heads, d, hidden) in [(14, 2, 64, 896), (28, 4, 128, 3584)] {
            let rows = (heads + 2 * kv_heads) * d;
            let w = (randn(&[rows, hidden], DType::F32) / (hidden as f64).sqrt()).unwrap().to_dtype(dtype).unwrap();
            let bias = randn(&[rows], dtype);
            let g = randn(&[hidden], DType::F32).affine(0.2, 1.0).unwrap().to_dtype(dtype).unwrap();
            let angles: Vec<f32> = (0..4096 * d / 2).map(|k| (k / (d / 2)) as f32 / 1e6f32.powf(2.0 * (k % (d / 2)) as f32 / d as f32)).collect();
            let angles = Tensor::from_vec(angles, (4096, d / 2), &Device::Cpu).unwrap();
            let (cos, sin) = (angles.cos().unwrap().to_dtype(dtype).unwrap(), angles.sin().unwrap().to_dtype(dtype).unwrap());
            for m in [1usize, 3, 8] {
                let x = randn(&[m, hidden], dtype);
                // Sequence s decodes its token at position 7 s + 5 (up to 54), in blocks 4 s..4 s + 4
                // (blocks of 16).
                let mut meta = AttentionMetadata { max_blocks_per_seq: 4, query_start_loc: vec![0], ..Default::default() };
                for s in 0..m {
                    let len = 7 * s + 6;
                    let table: Vec<u32> = (4 * s as u32..4 * s as u32 + 4).collect();
                    meta.slot_mapping.extend(AttentionMetadata::single(&table, 16, len, 1).slot_mapping);
                    meta.block_tables.extend(table);
                    meta.seq_lens.push(len as u32);
                    meta.query_start_loc.push(s as u32 + 1);
                }
                for with_bias in [false, true] {
                    let run = |dev: &Device| {
                        let t = |x: &Tensor| x.to_device(dev).unwrap();
                        let (x, w, g, bias) = (t(&x), t(&w), t(&g), t(&bias));
                        let key_cache = Tensor::zeros((4 * m, 16, kv_heads, d), dtype, dev).unwrap();
                        let value_cache = key_cache.zeros_like().unwrap();
                        let step = DeviceMetadata::new(meta.clone(), dev).unwrap();
                        let p = QkvMatmul { x: &x, weight: &w, bias: with_bias.then_some(&bias), norm: (&g, 1e-6), num_heads: heads, head_norm: None };
                        let q = if dev.is_cpu() {
                            qkv_matmul_step(&p, &t(&cos), &t(&sin), &key_cache, &value_cache, &step).unwrap()
                        } else {
                            qkv_matmul_step_fused(&p, &t(&cos), &t(&sin), &key_cache, &value_cache, &step).unwrap().expect("the one-launch kernel applies")
                        };
                        (q, key_cache, value_cache)
                    };
                    let (cpu_q, cpu_k, cpu_v) = run(&Device::Cpu);
                    let (gpu_q, gpu_k, gpu_v) = run(&gpu());
                    let what = format!("{dtype:?} d {d} hidden {hidden} tokens {m} bias {with_bias}");
                    assert_eq!((gpu_q.dims(), gpu_q.dtype()), (cpu_q.dims(), dtype), "{what}");
                    for (name, got, want) in [("q", &gpu_q, &cpu_q), ("k cache", &gpu_k, &cpu_k), ("v cache", &gpu_v, &cpu_v)] {
                        let err = max_rel_diff(got, want);
                        assert!(err < tolerance(dtype), "{what}: {name} difference {err}");
                    }
                }
            }
        }
    }
}

#[test]
fn attention_long_prefill_chunk_after_a_long_prefix() {
    check_attention(Case { seqs: vec![(2000, 64)], heads: 16, kv_heads: 8, d: 128, block_size: 16 });
}

#[test]
fn rms_norm_and_add_rms_norm() {
    for dtype in DTYPES {
        // Qwen hidden sizes (0.5B, 7B, 14B), the per-head q/k norm of Qwen3, and a row past
        // the 8 elements a thread keeps in registers at 1024 threads.
        for hidden in [896, 3584, 5120, 128, 9000] {
            let (x, r) = (randn(&[7, hidden], dtype), randn(&[7, hidden], dtype));
            let w = (randn(&[hidden], DType::F32).affine(0.2, 1.0).unwrap()).to_dtype(dtype).unwrap();
            let g = |t: &Tensor| t.to_device(&gpu()).unwrap();
            let err = max_rel_diff(&rms_norm(&g(&x), &g(&w), 1e-6).unwrap(), &rms_norm(&x, &w, 1e-6).unwrap());
            assert!(err < tolerance(dtype), "{dtype:?} {hidden}: rms_norm difference {err}");
            let (gpu_normed, gpu_sum) = add_rms_norm(&g(&x), &g(&r), &g(&w), 1e-6).unwrap();
            let (cpu_normed, cpu_sum) = add_rms_norm(&x, &r, &w, 1e-6).unwrap();
            assert_eq!(max_rel_diff(&gpu_sum, &cpu_sum), 0.0, "{dtype:?} {hidden}: residual sums differ");
            let err = max_rel_diff(&gpu_normed, &cpu_normed);
            assert!(err < tolerance(dtype), "{dtype:?} {hidden}: add_rms_norm difference {err}");
        }
    }
}

#[test]
fn rotary_embedding_matches() {
    for dtype in DTYPES {
        for (heads, head_dim) in [(14, 64), (28, 128)] {
            let max_positions = 32_768;
            let half = head_dim / 2;
            let angles: Vec<f32> = (0..max_positions * half)
                .map(|k| (k / half) as f32 / 1e6f32.powf(2.0 * (k % half) as f32 / head_dim as f32))
                .collect();
            let angles = Tensor::from_vec(angles, (max_positions, half), &Device::Cpu).unwrap();
            let (cos, sin) = (angles.cos().unwrap().to_dtype(dtype).unwrap(), angles.sin().unwrap().to_dtype(dtype).unwrap());
            let positions = Tensor::new(&[0u32, 1, 2, 3, 17, 1000, 32_767, 5], &Device::Cpu).unwrap();
            let x = randn(&[8, heads, head_dim], dtype);
            let g = |t: &Tensor| t.to_device(&gpu()).unwrap();
            let got = rotary_embedding(&g(&x), &g(&cos), &g(&sin), &g(&positions)).unwrap();
            let err = max_rel_diff(&got, &rotary_embedding(&x, &cos, &sin, &positions).unwrap());
            assert!(err < tolerance(dtype), "{dtype:?} {head_dim}: rope difference {err}");
        }
    }
}

#[test]
fn rotary_embedding_from_step_positions() {
    let meta = AttentionMetadata::single(&[0, 1], 16, 20, 4);
    let step = DeviceMetadata::new(meta.clone(), &gpu()).unwrap();
    let cpu_positions = Tensor::new(meta.positions().as_slice(), &Device::Cpu).unwrap();
    let (cos, sin) = (randn(&[64, 32], DType::F32), randn(&[64, 32], DType::F32));
    let x = randn(&[4, 2, 64], DType::F32);
    let g = |t: &Tensor| t.to_device(&gpu()).unwrap();
    let got = rotary_embedding(&g(&x), &g(&cos), &g(&sin), step.positions()).unwrap();
    assert!(max_rel_diff(&got, &rotary_embedding(&x, &cos, &sin, &cpu_positions).unwrap()) < 1e-5);
}

#[test]
fn silu_mul_on_fused_and_separate_projections() {
    for dtype in DTYPES {
        let gate_up = randn(&[9, 2 * 4864], dtype);
        let g = |t: &Tensor| t.to_device(&gpu()).unwrap();
        let gpu_gate_up = g(&gate_up);
        let cpu = silu_mul(&gate_up.narrow(1, 0, 4864).unwrap(), &gate_up.narrow(1, 4864, 4864).unwrap()).unwrap();
        let strided = silu_mul(&gpu_gate_up.narrow(1, 0, 4864).unwrap(), &gpu_gate_up.narrow(1, 4864, 4864).unwrap()).unwrap();
        let separate = silu_mul(
            &gpu_gate_up.narrow(1, 0, 4864).unwrap().contiguous().unwrap(),
            &gpu_gate_up.narrow(1, 4864, 4864).unwrap().contiguous().unwrap(),
        )
        .unwrap();
        for got in [strided, separate] {
            let err = max_rel_diff(&got, &cpu);
            assert!(err < tolerance(dtype), "{dtype:?}: silu_mul difference {err}");
        }
    }
}

/// The fused q/k/v kernel against the CPU's composition of the separate ops, from a stacked
/// projection's column views (Qwen2: biases) and from separate ones (Qwen3: per-head norms);
/// three sequences mid-block, a token with all, decode included.
#[test]
fn qkv_step_matches_the_separate_ops() {
    for dtype in DTYPES {
        for (heads, kv_heads, d) in [(14, 2, 64), (28, 4, 128)] {
            let (q_w, kv_w) = (heads * d, kv_heads * d);
            let num_tokens = 7;
            let stacked = randn(&[num_tokens, q_w + 2 * kv_w], dtype);
            let bias = [q_w, kv_w, kv_w].map(|w| randn(&[w], dtype));
            let norms = [d, d].map(|n| randn(&[n], DType::F32).affine(0.1, 1.0).unwrap().to_dtype(dtype).unwrap());
            let angles: Vec<f32> = (0..4096 * d / 2).map(|k| (k / (d / 2)) as f32 / 1e6f32.powf(2.0 * (k % (d / 2)) as f32 / d as f32)).collect();
            let angles = Tensor::from_vec(angles, (4096, d / 2), &Device::Cpu).unwrap();
            let (cos, sin) = (angles.cos().unwrap().to_dtype(dtype).unwrap(), angles.sin().unwrap().to_dtype(dtype).unwrap());
            // Sequences of 4, 2 and 1 new tokens after 9, 0 and 30 cached ones; blocks of 16.
            let mut meta = AttentionMetadata { max_blocks_per_seq: 3, query_start_loc: vec![0], ..Default::default() };
            for (s, (cached, new)) in [(9usize, 4usize), (0, 2), (30, 1)].into_iter().enumerate() {
                let table = [3 * s as u32 + 2, 3 * s as u32, 3 * s as u32 + 1];
                meta.block_tables.extend(table);
                meta.slot_mapping.extend(AttentionMetadata::single(&table, 16, cached + new, new).slot_mapping);
                meta.seq_lens.push((cached + new) as u32);
                meta.query_start_loc.push(meta.query_start_loc.last().unwrap() + new as u32);
            }
            for (with_bias, with_norm, split) in [(true, false, true), (false, true, false), (true, true, true)] {
                let run = |dev: &Device, fused: bool| {
                    let t = |x: &Tensor| x.to_device(dev).unwrap();
                    let stacked = t(&stacked);
                    let parts = [(0, q_w), (q_w, kv_w), (q_w + kv_w, kv_w)].map(|(at, w)| {
                        let view = stacked.narrow(1, at, w).unwrap();
                        if split { view } else { view.contiguous().unwrap() }
                    });
                    let bias = bias.each_ref().map(t);
                    let norms = norms.each_ref().map(t);
                    let qkv = Qkv {
                        q: &parts[0],
                        k: &parts[1],
                        v: &parts[2],
                        bias: if with_bias { [Some(&bias[0]), Some(&bias[1]), Some(&bias[2])] } else { [None; 3] },
                        head_norm: with_norm.then_some((&norms[0], &norms[1], 1e-6)),
                    };
                    let key_cache = Tensor::zeros((9, 16, kv_heads, d), dtype, dev).unwrap();
                    let value_cache = key_cache.zeros_like().unwrap();
                    let step = DeviceMetadata::new(meta.clone(), dev).unwrap();
                    let q = if fused {
                        qkv_step_fused(&qkv, &t(&cos), &t(&sin), &key_cache, &value_cache, &step).unwrap().expect("the fused kernel applies")
                    } else {
                        qkv_step(&qkv, &t(&cos), &t(&sin), &key_cache, &value_cache, &step).unwrap()
                    };
                    (q, key_cache, value_cache)
                };
                let (cpu_q, cpu_k, cpu_v) = run(&Device::Cpu, false);
                let (gpu_q, gpu_k, gpu_v) = run(&gpu(), true);
                let what = format!("{dtype:?} d {d} bias {with_bias} norm {with_norm} views {split}");
                assert_eq!((gpu_q.dims(), gpu_q.dtype()), (cpu_q.dims(), dtype), "{what}");
                for (name, got, want) in [("q", &gpu_q, &cpu_q), ("k cache", &gpu_k, &cpu_k), ("v cache", &gpu_v, &cpu_v)] {
                    let err = max_rel_diff(got, want);
                    assert!(err < tolerance(dtype), "{what}: {name} difference {err}");
                }
                // v is only biased: the same rounding on both sides.
                assert_eq!(max_rel_diff(&gpu_v, &cpu_v), 0.0, "{what}: v cache");
            }
        }
    }
}
