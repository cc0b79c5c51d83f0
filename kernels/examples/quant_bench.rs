//! Times the quantized matmul on the test model's shapes, per weight type, batch size and
//! instruction set: `cargo run --release -p qwen-serve-kernels --example quant_bench`.
//! Prints GMAC/s (multiply-adds of the weight matrix times the batch per second).

use std::time::Instant;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use qwen_serve_kernels::{Isa, QuantMatrix};

fn main() -> candle_core::Result<()> {
    // (type, out_features, in_features): gate+up stacked and the output head of Qwen2.5-0.5B,
    // and its down projection.
    let shapes = [(GgmlDType::Q5_0, 9728, 896), (GgmlDType::Q8_0, 151936, 896), (GgmlDType::Q4K, 896, 4864), (GgmlDType::Q6K, 896, 4864)];
    let batches: Vec<usize> = std::env::args().nth(1).map_or(vec![1, 4, 16, 64, 256], |s| s.split(',').map(|v| v.parse().unwrap()).collect());
    for (dtype, n, k) in shapes {
        let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu)?;
        let w = QuantMatrix::from_qtensor(&QTensor::quantize(&w, dtype)?)?.expect("supported");
        for &m in &batches {
            let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu)?;
            let mut line = format!("{dtype:?} {n}x{k} m={m:<4}");
            for isa in Isa::available().into_iter().filter(|&i| i != Isa::Scalar) {
                w.matmul_with(&x, isa)?;
                let (mut runs, start) = (0, Instant::now());
                while runs < 3 || start.elapsed().as_secs_f64() < 0.5 {
                    w.matmul_with(&x, isa)?;
                    runs += 1;
                }
                let secs = start.elapsed().as_secs_f64() / runs as f64;
                line += &format!("  {isa:?} {:7.1} GMAC/s ({:.2} ms)", (n * k * m) as f64 / secs / 1e9, secs * 1e3);
            }
            println!("{line}");
        }
    }
    Ok(())
}
