//! Times the CPU paged attention on the test model's shape (14 query heads, 2 KV heads, head
//! dim 64; `--head-dim 128 --heads 28 --kv-heads 4` for the 7B shape): decode steps of 1 and
//! 16 sequences at several context lengths, and 512-token prefill chunks at the end of prompts
//! of 512, 2048 and 4096 tokens. Each case re-runs one layer, so its K/V stay in cache where they
//! fit (32 MiB of L3 on the EPYC); a real step reads every layer's from memory.
//! `cargo run --release -p qwen-serve-kernels --example attention_bench [f32|bf16|f16]`.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use qwen_serve_kernels::{paged_attention, AttentionMetadata};

const BLOCK: usize = 16;

/// `seqs`: (context length, new tokens) per sequence; every sequence's blocks are its own.
fn case(seqs: &[(usize, usize)], heads: usize, kv_heads: usize, d: usize, dtype: DType) -> candle_core::Result<f64> {
    let dev = Device::Cpu;
    let max_blocks = seqs.iter().map(|(len, _)| len.div_ceil(BLOCK)).max().unwrap();
    let num_blocks = seqs.len() * max_blocks;
    let k = Tensor::randn(0f32, 1., (num_blocks, BLOCK, kv_heads, d), &dev)?.to_dtype(dtype)?;
    let v = Tensor::randn(0f32, 1., (num_blocks, BLOCK, kv_heads, d), &dev)?.to_dtype(dtype)?;
    // Interleave the sequences' blocks, as a busy pool would.
    let tables: Vec<u32> = (0..seqs.len() * max_blocks).map(|i| ((i % max_blocks) * seqs.len() + i / max_blocks) as u32).collect();
    let mut meta = AttentionMetadata { max_blocks_per_seq: max_blocks, block_tables: tables, query_start_loc: vec![0], ..Default::default() };
    for &(len, new) in seqs {
        meta.seq_lens.push(len as u32);
        meta.query_start_loc.push(meta.query_start_loc.last().unwrap() + new as u32);
    }
    let tokens = *meta.query_start_loc.last().unwrap() as usize;
    meta.slot_mapping = vec![0; tokens];
    let q = Tensor::randn(0f32, 1., (tokens, heads, d), &dev)?.to_dtype(dtype)?;
    let scale = 1.0 / (d as f32).sqrt();
    paged_attention(&q, &k, &v, &meta, scale)?;
    let (mut runs, start) = (0, Instant::now());
    while runs < 5 || start.elapsed().as_secs_f64() < 0.5 {
        paged_attention(&q, &k, &v, &meta, scale)?;
        runs += 1;
    }
    Ok(start.elapsed().as_secs_f64() / runs as f64 * 1e6)
}

fn main() -> candle_core::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str, default: usize| args.iter().position(|a| a == name).map_or(default, |i| args[i + 1].parse().unwrap());
    let dtype = if args.iter().any(|a| a == "bf16") {
        DType::BF16
    } else if args.iter().any(|a| a == "f16") {
        DType::F16
    } else {
        DType::F32
    };
    let (heads, kv_heads, d) = (flag("--heads", 14), flag("--kv-heads", 2), flag("--head-dim", 64));
    println!("{heads} heads, {kv_heads} KV heads, head dim {d}, {dtype:?} cache, {} threads", rayon::current_num_threads());
    for &(n, ctx) in &[(1, 256), (1, 2048), (1, 4096), (16, 192), (16, 1024)] {
        let us = case(&vec![(ctx, 1); n], heads, kv_heads, d, dtype)?;
        println!("decode {n:>2} x ctx {ctx:>4}: {us:9.1} us/layer");
    }
    // A long prompt is prefilled in chunks (512 tokens: the CPU's default step budget), each
    // attending to the chunks before it too.
    for ctx in [512, 2048, 4096] {
        let us = case(&[(ctx, 512)], heads, kv_heads, d, dtype)?;
        println!("prefill 512 @ {ctx:>4}:  {us:9.1} us/layer");
    }
    Ok(())
}
