//! Times `QuantMatrix::matmul` (each ISA) against candle's `QMatMul` on the test model's
//! shapes (Qwen2.5-Coder-0.5B Q4_K_M) with random weights.
//!
//! `cargo run --release -p qwen-serve-kernels --example qmatmul_bench [-- filter]` (filter: a
//! substring of "name dtype", e.g. `Q6K` or `l2`); `RAYON_NUM_THREADS=1` for one core,
//! `QM_ROWS=1,16,64` the activation row counts, `QM_KERNELS=Avx512` only the kernels whose
//! name contains it.

use std::time::{Duration, Instant};

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use qwen_serve_kernels::{Isa, QuantMatrix};

/// (name, dtype, in_features k, out_features n); the `l2` shapes fit a core's L2 cache and show
/// the kernels' compute speed rather than memory bandwidth.
const SHAPES: [(&str, GgmlDType, usize, usize); 11] = [
    ("l2 896->1024", GgmlDType::Q5_0, 896, 1024),
    ("l2 896->1024", GgmlDType::Q8_0, 896, 1024),
    ("l2 4864->256", GgmlDType::Q4K, 4864, 256),
    ("l2 4864->256", GgmlDType::Q6K, 4864, 256),
    ("l2 4864->256", GgmlDType::Q5K, 4864, 256),
    ("attn_q/o 896->896", GgmlDType::Q5_0, 896, 896),
    ("ffn_up 896->4864", GgmlDType::Q5_0, 896, 4864),
    ("ffn_down 4864->896", GgmlDType::Q6K, 4864, 896),
    ("ffn_down 4864->896", GgmlDType::Q4K, 4864, 896),
    ("attn_v 896->128", GgmlDType::Q8_0, 896, 128),
    ("output 896->151936", GgmlDType::Q8_0, 896, 151936),
];

type Kernel<'a> = Box<dyn FnMut() + 'a>;

/// Fastest seconds per call of each kernel, calling them in turn (so that they share whatever
/// else the machine is doing) for at least `min_time` and 5 rounds: on a shared machine the
/// minimum is the run no other process interrupted.
fn time(kernels: &mut [(String, Kernel<'_>)], min_time: Duration) -> Vec<(String, f64)> {
    let mut best = vec![f64::INFINITY; kernels.len()];
    kernels.iter_mut().for_each(|(_, f)| f());
    let start = Instant::now();
    let mut rounds = 0;
    while rounds < 5 || start.elapsed() < min_time {
        for ((_, f), best) in kernels.iter_mut().zip(&mut best) {
            let t = Instant::now();
            f();
            *best = best.min(t.elapsed().as_secs_f64());
        }
        rounds += 1;
    }
    kernels.iter().map(|(name, _)| name.clone()).zip(best).collect()
}

fn main() -> candle_core::Result<()> {
    let filter = std::env::args().nth(1).unwrap_or_default();
    let dev = Device::Cpu;
    println!("threads: {}, ISAs: {:?}", rayon::current_num_threads(), Isa::available());
    println!("| shape | type | m | kernel | ms/call | weight GB/s |");
    println!("|---|---|---|---|---|---|");
    for (name, dtype, k, n) in SHAPES {
        if !format!("{name} {dtype:?}").contains(&filter) {
            continue;
        }
        let w = Tensor::randn(0f32, 1.0, (n, k), &dev)?;
        let q = QTensor::quantize(&w, dtype)?;
        let bytes = q.storage_size_in_bytes() as f64;
        let ours = QuantMatrix::from_qtensor(&q)?.expect("supported");
        let theirs = QMatMul::from_qtensor(q)?;
        let ms: Vec<usize> = std::env::var("QM_ROWS")
            .map(|v| v.split(',').map(|m| m.trim().parse().expect("QM_ROWS: comma-separated row counts")).collect())
            .unwrap_or_else(|_| vec![1, 16]);
        for &m in &ms {
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
            let min_time = Duration::from_millis(if n > 100_000 { 4000 } else { 1500 });
            let mut kernels: Vec<(String, Kernel)> = Isa::available()
                .into_iter()
                .map(|isa| {
                    let (ours, x) = (&ours, &x);
                    let f: Kernel = Box::new(move || drop(ours.matmul_with(x, isa).unwrap()));
                    (format!("ours {isa:?}"), f)
                })
                .collect();
            kernels.push(("candle QMatMul".to_string(), Box::new(|| drop(theirs.forward(&x).unwrap()))));
            if let Ok(only) = std::env::var("QM_KERNELS") {
                kernels.retain(|(name, _)| name.contains(&only));
            }
            let rows = time(&mut kernels, min_time);
            for (kernel, secs) in rows {
                println!("| {name} | {dtype:?} | {m} | {kernel} | {:.3} | {:.1} |", secs * 1e3, bytes / secs / 1e9);
            }
        }
    }
    Ok(())
}
