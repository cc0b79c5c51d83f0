//! The quantized matmul against dense references, and its batch invariance.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use super::activations::QuantizedRows;
use super::panel::Acts;
use super::{Isa, QuantMatrix};

const TYPES: [GgmlDType; 6] =
    [GgmlDType::Q4_0, GgmlDType::Q5_0, GgmlDType::Q8_0, GgmlDType::Q4K, GgmlDType::Q5K, GgmlDType::Q6K];

fn is_k_quant(t: GgmlDType) -> bool {
    matches!(t, GgmlDType::Q4K | GgmlDType::Q5K | GgmlDType::Q6K)
}

/// Deterministic values with LLM-like structure: mostly small, per-row scales spanning two
/// orders of magnitude, and a few large outlier channels.
fn values(len: usize, row_len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    let mut row_scale = 1.0;
    (0..len)
        .map(|i| {
            if i % row_len == 0 {
                row_scale = 10f32.powf(next() * 1.0);
            }
            let v = next() + next() + next();
            let outlier = if (i % row_len) % 97 == 13 { 20.0 } else { 1.0 };
            v * row_scale * outlier
        })
        .collect()
}

struct Case {
    w: QuantMatrix,
    /// The weights as candle dequantizes them, `(n, k)`.
    dense: Vec<f32>,
}

fn case(dtype: GgmlDType, n: usize, k: usize, seed: u64) -> Case {
    let w = Tensor::from_vec(values(n * k, k, seed), (n, k), &Device::Cpu).unwrap();
    let q = QTensor::quantize(&w, dtype).unwrap();
    let dense = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    Case { w: QuantMatrix::from_qtensor(&q).unwrap().expect("supported type"), dense }
}

fn input(m: usize, k: usize, seed: u64) -> Tensor {
    Tensor::from_vec(values(m * k, k, seed), (m, k), &Device::Cpu).unwrap()
}

fn bits(t: &Tensor) -> Vec<Vec<u32>> {
    t.to_vec2::<f32>().unwrap().iter().map(|r| r.iter().map(|v| v.to_bits()).collect()).collect()
}

/// Shapes of the test model (k = 896: 28 blocks of 32; k = 4864 = 19 * 256), short rows (three
/// 32-blocks; one super-block), and n that neither a task split nor the 16-row panels divide
/// evenly.
fn shapes(dtype: GgmlDType) -> Vec<(usize, usize)> {
    if is_k_quant(dtype) { vec![(67, 4864), (150, 256)] } else { vec![(100, 896), (67, 4864), (150, 96)] }
}

/// The quantized activations a kernel multiplies: `(values (m, k), scales (m, k / block))`.
fn quantized(xs: &[f32], k: usize, dtype: GgmlDType, w: &QuantMatrix) -> (Vec<i8>, Vec<f32>) {
    if is_k_quant(dtype) {
        let acts = QuantizedRows::quantize(xs, k, w.weights.block_len(), 32);
        let m = xs.len() / k;
        (0..m).fold((Vec::new(), Vec::new()), |(mut q, mut d), r| {
            q.extend_from_slice(acts.row(r).qs);
            d.extend_from_slice(acts.row(r).scales);
            (q, d)
        })
    } else {
        let acts = Acts::quantize(xs, k, 0, false);
        let m = xs.len() / k;
        (acts.qs[..m * k].to_vec(), acts.scales[..m * (k / 32)].to_vec())
    }
}

/// Every type and shape, each ISA, m = 1, 3, 17, against f64 dense products:
/// - with the activations as quantized (the values the kernel multiplies), only f32 rounding
///   separates us: |error| <= 1e-5 * sum |w a|;
/// - with the original activations, each element is off by at most half its block's scale:
///   |error| <= sum_i |w_i| d_i / 2, plus the rounding allowance.
#[test]
fn matches_dense_reference() {
    for dtype in TYPES {
        for (n, k) in shapes(dtype) {
            let c = case(dtype, n, k, n as u64 * 7 + k as u64);
            for m in [1, 3, 17] {
                let x = input(m, k, m as u64 + 1000);
                let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
                let block = c.w.weights.block_len();
                let (qs, scales) = quantized(&xs, k, dtype, &c.w);
                for isa in Isa::available() {
                    let y = c.w.matmul_with(&x, isa).unwrap().to_vec2::<f32>().unwrap();
                    for (r, y) in y.iter().enumerate() {
                        for (j, &got) in y.iter().enumerate() {
                            let w = &c.dense[j * k..(j + 1) * k];
                            let (mut exact, mut abs, mut bound, mut orig) = (0f64, 0f64, 0f64, 0f64);
                            for i in 0..k {
                                let (wi, da) = (w[i] as f64, scales[r * (k / block) + i / block] as f64);
                                let ai = qs[r * k + i] as f64 * da;
                                exact += wi * ai;
                                abs += (wi * ai).abs();
                                bound += wi.abs() * da / 2.0;
                                orig += wi * xs[r * k + i] as f64;
                            }
                            let got = got as f64;
                            let what = format!("{dtype:?} {isa:?} n={n} k={k} m={m} y[{r}][{j}]");
                            assert!((got - exact).abs() <= 1e-5 * abs + 1e-30, "{what}: {got} vs exact {exact}");
                            let err = (got - orig).abs();
                            assert!(err <= bound * 1.0001 + 1e-5 * abs, "{what}: {got} vs {orig}, bound {bound}");
                        }
                    }
                }
            }
        }
    }
}

/// Row r of a batch is bitwise the row computed alone, for every r, sub-batches at any offset,
/// batches spanning several row tiles, any rayon thread count, and every ISA's kernels.
#[test]
fn rows_are_batch_invariant() {
    let pool = |threads| rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    for dtype in TYPES {
        let (n, k) = shapes(dtype)[0];
        let c = case(dtype, n, k, 3);
        let m = 40;
        let x = input(m, k, 4);
        for isa in Isa::available() {
            let matmul = |x: &Tensor| bits(&c.w.matmul_with(x, isa).unwrap());
            let full = matmul(&x);
            for (r, row) in full.iter().enumerate() {
                let alone = matmul(&x.narrow(0, r, 1).unwrap());
                assert_eq!(&alone[0], row, "{dtype:?} {isa:?}: row {r} alone");
            }
            for (start, len) in [(5, 7), (0, 20), (17, 23), (31, 2)] {
                let part = matmul(&x.narrow(0, start, len).unwrap());
                assert_eq!(part[..], full[start..start + len], "{dtype:?} {isa:?}: rows {start}..+{len}");
            }
            for threads in [1, 2, 3] {
                let y = pool(threads).install(|| matmul(&x));
                assert_eq!(y, full, "{dtype:?} {isa:?}: {threads} threads");
            }
        }
    }
}

/// Every SIMD kernel gives the scalar reference's bits.
#[test]
fn simd_kernels_match_scalar_bitwise() {
    let available = Isa::available();
    eprintln!("ISAs on this CPU: {available:?}");
    for dtype in TYPES {
        for (n, k) in shapes(dtype) {
            let c = case(dtype, n, k, 11);
            // 13 rows: tiles of eight, four and one (one padded AMX tile); 35: three AMX tiles.
            for m in [13, 35] {
            let x = input(m, k, 12);
            let reference = bits(&c.w.matmul_with(&x, Isa::Scalar).unwrap());
            for &isa in &available {
                assert_eq!(bits(&c.w.matmul_with(&x, isa).unwrap()), reference, "{dtype:?} {isa:?} n={n} k={k} m={m}");
            }
            }
        }
    }
}

#[test]
fn zero_activations_give_zeros_and_shapes_are_checked() {
    let c = case(GgmlDType::Q5_0, 40, 896, 5);
    let y = c.w.matmul(&Tensor::zeros((2, 896), candle_core::DType::F32, &Device::Cpu).unwrap()).unwrap();
    assert_eq!(y.dims(), &[2, 40]);
    assert!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().all(|&v| v == 0.0));
    assert!(c.w.matmul(&input(2, 864, 1)).is_err());
    assert!(c.w.matmul(&input(2, 896, 1).to_dtype(candle_core::DType::BF16).unwrap()).is_err());
    assert_eq!((c.w.out_features(), c.w.in_features()), (40, 896));
}

#[test]
fn unsupported_types_and_widths_are_declined() {
    let w = Tensor::from_vec(values(4 * 256, 256, 1), (4, 256), &Device::Cpu).unwrap();
    for dtype in [GgmlDType::Q2K, GgmlDType::Q3K, GgmlDType::Q4_1, GgmlDType::F16] {
        let q = QTensor::quantize(&w, dtype).unwrap();
        assert!(QuantMatrix::from_qtensor(&q).unwrap().is_none(), "{dtype:?}");
    }
}

/// Rows looked up in the repacked matrix are bitwise candle's dequantization, every type.
#[test]
fn rows_dequantize_like_candle() {
    for dtype in TYPES {
        let (n, k) = shapes(dtype)[0];
        let c = case(dtype, n, k, 21);
        let ids = [0u32, 5, (n - 1) as u32, 5];
        let got = c.w.lookup_rows(&ids).unwrap().to_vec2::<f32>().unwrap();
        for (row, &id) in got.iter().zip(&ids) {
            let want = &c.dense[id as usize * k..(id as usize + 1) * k];
            let same = row.iter().zip(want).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{dtype:?} row {id}");
        }
    }
    assert!(case(GgmlDType::Q8_0, 4, 128, 1).w.lookup_rows(&[4]).is_err());
}

/// Stacked matrices give each part's outputs bitwise; mixed types or widths are declined.
#[test]
fn concatenated_matrices_give_each_parts_columns() {
    // [24, 8, 8]: panels repacked; [32, 16, 8]: panels copied.
    for (dtype, sizes) in TYPES.iter().flat_map(|&t| [(t, [24, 8, 8]), (t, [32, 16, 8])]) {
        let (_, k) = shapes(dtype)[0];
        let parts: Vec<Case> = sizes.iter().enumerate().map(|(i, &n)| case(dtype, n, k, 30 + i as u64)).collect();
        let both = QuantMatrix::concat(&parts.iter().map(|c| &c.w).collect::<Vec<_>>()).expect("same type");
        assert_eq!((both.out_features(), both.in_features()), (sizes.iter().sum(), k));
        let x = input(9, k, 7);
        let whole = bits(&both.matmul(&x).unwrap());
        let mut at = 0;
        for c in &parts {
            let own = bits(&c.w.matmul(&x).unwrap());
            for (r, row) in own.iter().enumerate() {
                assert_eq!(&whole[r][at..at + c.w.out_features()], &row[..], "{dtype:?}");
            }
            at += c.w.out_features();
        }
    }
    let (a, b) = (case(GgmlDType::Q5_0, 8, 896, 1), case(GgmlDType::Q8_0, 8, 896, 2));
    assert!(QuantMatrix::concat(&[&a.w, &b.w]).is_none());
    assert!(QuantMatrix::concat(&[&a.w, &case(GgmlDType::Q5_0, 8, 128, 3).w]).is_none());
}

/// Raw GGUF blocks of `dtype` whose values are all at their largest magnitude (Q8_0 -128,
/// the others their largest stored value; Q6_K scales alternate 127 and -128), with scales of
/// 1 and minimums scaled by 0.5.
fn extreme_blocks(dtype: GgmlDType, blocks: usize) -> Vec<u8> {
    let one = half::f16::ONE.to_le_bytes();
    let block: Vec<u8> = match dtype {
        GgmlDType::Q4_0 | GgmlDType::Q5_0 => [&one[..], &[0xFF; 20]].concat()[..dtype.type_size()].to_vec(),
        GgmlDType::Q8_0 => [&one[..], &[0x80; 32]].concat(),
        GgmlDType::Q4K | GgmlDType::Q5K => {
            let half = half::f16::from_f32(0.5).to_le_bytes();
            [&one[..], &half, &vec![0xFF; dtype.type_size() - 4]].concat()
        }
        GgmlDType::Q6K => {
            let scales: Vec<u8> = (0..16).map(|i| if i % 2 == 0 { 0x7F } else { 0x80 }).collect();
            [&[0xFF; 192][..], &scales, &one].concat()
        }
        _ => unreachable!("not a kernel type"),
    };
    assert_eq!(block.len(), dtype.type_size());
    block.repeat(blocks)
}

/// Weights at their largest values against activations at +-127: the SIMD kernels' i16
/// partial sums reach their bound here and must still give the scalar reference's bits, which
/// stay within rounding of the dense product.
#[test]
fn extreme_values_match_scalar_bitwise() {
    let (n, k, m) = (24, 512, 13);
    for dtype in TYPES {
        let raw = extreme_blocks(dtype, n * k / dtype.block_size());
        let q = candle_core::quantized::ggml_file::qtensor_from_ggml(dtype, &raw, vec![n, k], &Device::Cpu).unwrap();
        let dense: Vec<f32> = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let w = QuantMatrix::from_qtensor(&q).unwrap().expect("supported type");
        // Rows of all +1, all -1 (quantized to +-127) and mixed signs.
        let xs: Vec<f32> = (0..m * k).map(|i| match (i / k) % 3 { 0 => 1.0, 1 => -1.0, _ => if i % 5 < 2 { -1.0 } else { 1.0 } }).collect();
        let x = Tensor::from_vec(xs.clone(), (m, k), &Device::Cpu).unwrap();
        let reference = bits(&w.matmul_with(&x, Isa::Scalar).unwrap());
        for (r, row) in reference.iter().enumerate() {
            for (j, &y) in row.iter().enumerate() {
                let exact: f64 = (0..k).map(|i| dense[j * k + i] as f64 * xs[r * k + i] as f64).sum();
                let abs: f64 = (0..k).map(|i| (dense[j * k + i] as f64).abs()).sum();
                let y = f32::from_bits(y) as f64;
                assert!((y - exact).abs() <= 1e-5 * abs, "{dtype:?} y[{r}][{j}] = {y}, dense {exact}");
            }
        }
        for isa in Isa::available() {
            assert_eq!(bits(&w.matmul_with(&x, isa).unwrap()), reference, "{dtype:?} {isa:?}");
        }
    }
}
