//! Small random-weight Qwen3, Qwen2 and MoE checkpoints with the real models' shape ratios
//! (tests/fixtures/tiny-*, written with logits by transformers in `scripts/make_reference.py`).
//! The weights are large (N(0, 0.2)) so a wrong rope layout, bias, q/k norm or GQA mapping moves
//! the logits far beyond the tolerance.

mod common;

use std::collections::{BTreeMap, HashMap};

use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{DType, Device, Tensor};
use common::{fixture, read_json};
use qwen_serve::generate::score;
use qwen_serve_models::{
    gguf_expert_name, gguf_tensor_name, graph_rows, load_model, pad_decode_batch, AttentionMetadata, CausalLm, DeviceMetadata, ForwardBatch, GgufReader,
    KvCache, ModelConfig, QwenForCausalLm, RopeScaling, Weights,
};

const TOLERANCE: f32 = 1e-4;

fn config(name: &str) -> ModelConfig {
    ModelConfig::from_json(&std::fs::read_to_string(fixture(name).join("config.json")).unwrap()).unwrap()
}

fn load(name: &str) -> Box<dyn CausalLm> {
    let weights = Weights::from_safetensors(&[fixture(name).join("model.safetensors")], DType::F32, &Device::Cpu).unwrap();
    load_model(&config(name), &weights).unwrap()
}

/// The fixture's tensors as a GGUF file holds them, by GGUF name: each MoE layer's experts
/// stacked into one `(experts, rows, cols)` tensor per projection, the shared-expert gate as a
/// vector, matrices in `dtype` where their width allows it (f16 elsewhere, as llama.cpp's
/// quantizer falls back; vectors f32).
fn gguf_blocks(name: &str, dtype: GgmlDType) -> HashMap<String, QTensor> {
    let tensors = candle_core::safetensors::load(fixture(name).join("model.safetensors"), &Device::Cpu).unwrap();
    let mut stacks: BTreeMap<String, BTreeMap<usize, Tensor>> = BTreeMap::new();
    let mut blocks = HashMap::new();
    let quantize = |t: &Tensor| {
        let dtype = match (t.rank(), t.dims()[t.rank() - 1] % dtype.block_size()) {
            (1, _) => GgmlDType::F32,
            (_, 0) => dtype,
            _ => GgmlDType::F16,
        };
        QTensor::quantize(t, dtype).unwrap()
    };
    for (hf, t) in tensors {
        if let Some((stacked, expert)) = gguf_expert_name(&hf) {
            stacks.entry(stacked).or_default().insert(expert, t);
        } else {
            let gguf = gguf_tensor_name(&hf).unwrap_or_else(|| panic!("no GGUF name for {hf}"));
            let t = if hf.ends_with("shared_expert_gate.weight") { t.squeeze(0).unwrap() } else { t };
            blocks.insert(gguf, quantize(&t));
        }
    }
    for (stacked, experts) in stacks {
        let parts: Vec<Tensor> = experts.into_values().collect();
        blocks.insert(stacked, quantize(&Tensor::stack(&parts, 0).unwrap()));
    }
    blocks
}

fn load_gguf(name: &str, dtype: GgmlDType, dequantize: Option<DType>) -> Box<dyn CausalLm> {
    let blocks = gguf_blocks(name, dtype);
    let names: Vec<String> = blocks.keys().cloned().collect();
    let read: GgufReader = Box::new(move |n| {
        let q = &blocks[n];
        QTensor::new(QStorage::from_data(q.data()?, &Device::Cpu, q.dtype())?, q.shape().clone())
    });
    load_model(&config(name), &Weights::from_gguf(names, read, dequantize, DType::F32, &Device::Cpu)).unwrap()
}

fn rows(v: &serde_json::Value) -> Vec<Vec<f32>> {
    v.as_array().unwrap().iter().map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()).collect()
}

/// Every position's f32 logits for `ids` in one pass.
fn scored(model: &dyn CausalLm, ids: &[u32]) -> Vec<Vec<f32>> {
    score(model, ids).unwrap().to_vec2::<f32>().unwrap()
}

/// The cosine similarity of each pair of corresponding rows.
fn cosines(a: &[Vec<f32>], b: &[Vec<f32>]) -> Vec<f64> {
    let dot = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(p, q)| (p * q) as f64).sum::<f64>();
    a.iter().zip(b).map(|(x, y)| dot(x, y) / (dot(x, x) * dot(y, y)).sqrt()).collect()
}

/// The largest absolute difference between corresponding entries of two row sets.
fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter().zip(b).flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs())).fold(0f32, f32::max)
}

fn assert_close(ours: &[Vec<f32>], reference: &[Vec<f32>], what: &str) {
    assert_eq!(ours.len(), reference.len(), "{what}: rows");
    for (i, (a, b)) in ours.iter().zip(reference).enumerate() {
        let d = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(d < TOLERANCE, "{what}: position {i} differs by {d}");
    }
}

/// One full pass, and a prefill of `prefill_len` tokens followed by single-token decodes.
fn check(name: &str) {
    check_model(name, load(name).as_ref());
}

fn check_model(name: &str, model: &dyn CausalLm) {
    let reference = read_json(&format!("{name}/reference.json"));
    let ids = common::ids(&reference["input_ids"]);
    let full = scored(model, &ids);
    assert_close(&full, &rows(&reference["logits"]), &format!("{name} full pass"));

    let prefill = reference["prefill_len"].as_u64().unwrap() as usize;
    let block_size = 4;
    let num_blocks = ids.len().div_ceil(block_size);
    let mut cache = KvCache::new(model.config(), num_blocks, block_size, DType::F32, &Device::Cpu).unwrap();
    let table: Vec<u32> = (0..num_blocks as u32).rev().collect();
    let mut incremental = vec![];
    let mut start = 0;
    for end in std::iter::once(prefill).chain(prefill + 1..=ids.len()) {
        let batch = ForwardBatch {
            input_ids: ids[start..end].to_vec(),
            attention: AttentionMetadata::single(&table, block_size, end, end - start),
            logits_indices: (0..(end - start) as u32).collect(),
            hidden_rows: vec![],
        };
        incremental.extend(model.forward(&batch, &mut cache).unwrap().to_vec2::<f32>().unwrap());
        start = end;
    }
    assert_close(&incremental, &rows(&reference["logits_incremental"]), &format!("{name} prefill + decode"));
}

#[test]
fn tiny_qwen3_matches_transformers() {
    check("tiny-qwen3");
}

#[test]
fn tiny_qwen2_with_bias_and_tied_embeddings_matches_transformers() {
    check("tiny-qwen2");
}

/// YaRN and linear rope scaling, spelled as the Hub's `rope_scaling` or transformers 5's
/// `rope_parameters`, against transformers on sequences past the original context
/// (tests/fixtures/rope_scaling.json: the tiny checkpoints with their config.json changed).
#[test]
fn rope_scaling_matches_transformers_past_the_original_context() {
    let reference = read_json("rope_scaling.json");
    for case in reference["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let fixture_name = case["fixture"].as_str().unwrap();
        let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture(fixture_name).join("config.json")).unwrap()).unwrap();
        for (key, value) in case["config"].as_object().unwrap() {
            json[key] = value.clone();
        }
        let cfg = ModelConfig::from_json(&json.to_string()).unwrap();
        let ids = common::ids(&case["input_ids"]);
        let original = match cfg.rope().unwrap() {
            RopeScaling::Yarn(y) => y.original_max_position_embeddings,
            _ => cfg.max_position_embeddings,
        };
        assert!(original < ids.len() && ids.len() <= cfg.context_length(), "{name}: the case stays inside the original context");
        // Each mistake the fixture measured moves the logits far past the tolerance.
        for (mistake, diff) in case["perturbation_max_abs_diff"].as_object().unwrap() {
            assert!(diff.as_f64().unwrap() > 1000.0 * TOLERANCE as f64, "{name}: {mistake} is within the tolerance");
        }
        let weights = Weights::from_safetensors(&[fixture(fixture_name).join("model.safetensors")], DType::F32, &Device::Cpu).unwrap();
        let model = load_model(&cfg, &weights).unwrap();
        let all = scored(model.as_ref(), &ids);
        let positions = common::ids(&case["positions"]);
        let ours: Vec<Vec<f32>> = positions.iter().map(|&p| all[p as usize].clone()).collect();
        assert_close(&ours, &rows(&case["logits"]), name);
        // One token past the stretched context is refused, not rotated by a missing row.
        let too_long: Vec<u32> = ids.iter().copied().cycle().take(cfg.context_length() + 1).collect();
        let err = score(model.as_ref(), &too_long).unwrap_err().to_string();
        assert!(err.contains("exceeds the context length"), "{name}: {err}");
    }
}

/// Prefills each prompt alone in its two blocks of 4 tokens, then returns the step that decodes
/// `next[i]` after prompt `i`, one token per sequence.
fn prefill_then_decode(model: &dyn CausalLm, cache: &mut KvCache, prompts: &[(&[u32], [u32; 2])], next: &[u32]) -> ForwardBatch {
    let mut attention = AttentionMetadata { max_blocks_per_seq: 2, query_start_loc: vec![0], ..Default::default() };
    for (i, (prompt, table)) in prompts.iter().enumerate() {
        let n = prompt.len();
        let batch = ForwardBatch { input_ids: prompt.to_vec(), attention: AttentionMetadata::single(table, 4, n, n), logits_indices: vec![n as u32 - 1], hidden_rows: vec![] };
        model.forward(&batch, cache).unwrap();
        let decode = AttentionMetadata::single(table, 4, n + 1, 1);
        attention.query_start_loc.push(i as u32 + 1);
        attention.seq_lens.extend(decode.seq_lens);
        attention.block_tables.extend(decode.block_tables);
        attention.slot_mapping.extend(decode.slot_mapping);
    }
    ForwardBatch { input_ids: next.to_vec(), attention, logits_indices: (0..next.len() as u32).collect(), hidden_rows: vec![] }
}

/// The fused decode path (norms, SiLU and residual adds inside the few-rows matmuls; on a GPU
/// on by default, `QWEN_SERVE_CUDA_FUSED_DECODE=0` turns it off) keeps the residual stream, the gate/up halves, the q/k/v
/// split and the last norm as the unfused layers do: on the CPU its ops run their reference
/// loops, and every step of up to 2 tokens takes it (here each decode step, and a step of
/// two sequences against the unfused model). A sparse model does not.
#[test]
fn fused_decode_path_matches_transformers() {
    for name in ["tiny-qwen3", "tiny-qwen2"] {
        let weights = Weights::from_safetensors(&[fixture(name).join("model.safetensors")], DType::F32, &Device::Cpu).unwrap();
        let model = QwenForCausalLm::new(&config(name), &weights).unwrap().with_fused_decode(true);
        assert!(model.fused_decode(), "{name}: every layer fuses");
        check_model(name, &model);
        // Two sequences after prefills of 5 and 3 tokens, each in its own blocks.
        let unfused = load(name);
        let step = |model: &dyn CausalLm| {
            let mut cache = KvCache::new(model.config(), 4, 4, DType::F32, &Device::Cpu).unwrap();
            let batch = prefill_then_decode(model, &mut cache, &[(&[5, 99, 300, 7, 42], [0, 1]), (&[1, 2, 3], [2, 3])], &[11, 250]);
            model.forward(&batch, &mut cache).unwrap().to_vec2::<f32>().unwrap()
        };
        assert_close(&step(&model), &step(unfused.as_ref()), &format!("{name}: a step of two sequences"));
    }
    let name = "tiny-qwen3-moe";
    let weights = Weights::from_safetensors(&[fixture(name).join("model.safetensors")], DType::F32, &Device::Cpu).unwrap();
    assert!(!QwenForCausalLm::new(&config(name), &weights).unwrap().with_fused_decode(true).fused_decode());
}

/// A decode step padded to a graph's rows (as CUDA graphs above 64 sequences run it): the
/// real sequences' logits are the unpadded step's bit for bit, and so is every usable block of
/// the cache; the padding wrote only the scratch block. And the rows a graph takes.
#[test]
fn padded_decode_steps_give_the_unpadded_results() {
    assert_eq!([1, 64, 65, 96, 97, 128, 129, 250, 256].map(|n| graph_rows(n, 256)), [1, 64, 96, 96, 128, 128, 192, 256, 256]);
    assert_eq!((graph_rows(99, 100), graph_rows(100, 100)), (100, 100));
    let model = load("tiny-qwen2");
    let step = |pad_to: Option<usize>| {
        let mut cache = KvCache::new(model.config(), 6, 4, DType::F32, &Device::Cpu).unwrap();
        let prompts: [(&[u32], [u32; 2]); 3] = [(&[5, 99, 300, 7, 42], [0, 1]), (&[1, 2, 3], [2, 3]), (&[9, 8, 7, 6, 5, 4], [4, 5])];
        let batch = prefill_then_decode(model.as_ref(), &mut cache, &prompts, &[11, 250, 17]);
        let logits = match pad_to {
            None => model.forward(&batch, &mut cache).unwrap(),
            Some(rows) => {
                let padded = pad_decode_batch(&batch, rows, &cache);
                assert_eq!((padded.input_ids.len(), padded.attention.num_seqs()), (rows, rows));
                let ids = Tensor::from_slice(&padded.input_ids, rows, &Device::Cpu).unwrap();
                let meta = DeviceMetadata::new(padded.attention.clone(), &Device::Cpu).unwrap();
                let all = model.forward_on_device(&ids, &meta, &mut cache).unwrap();
                assert_eq!(all.dim(0).unwrap(), rows);
                all.narrow(0, 0, 3).unwrap()
            }
        };
        // The usable blocks of every layer's keys and values.
        let usable: Vec<Vec<f32>> = (0..model.config().num_hidden_layers)
            .flat_map(|i| {
                let (k, v) = cache.layer(i);
                [k, v].map(|t| t.narrow(0, 0, cache.num_blocks()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap())
            })
            .collect();
        (logits.to_vec2::<f32>().unwrap(), usable)
    };
    let (want, want_cache) = step(None);
    for rows in [4, 8] {
        let (got, got_cache) = step(Some(rows));
        same_bits(&got, &want, &format!("padded to {rows}"));
        assert!(got_cache == want_cache, "padded to {rows}: a usable block changed");
    }
}

/// 16 experts, top 4 with renormalised weights, a dense layer among sparse ones
/// (`mlp_only_layers`), an untied head, and the expert count spelt `num_local_experts`.
#[test]
fn tiny_qwen3_moe_matches_transformers() {
    check("tiny-qwen3-moe");
}

/// 8 experts, top 3 without renormalising, a shared expert behind a sigmoid gate, q/k/v biases
/// (`qkv_bias`), `decoder_sparse_step` 2 (layer 0 dense), and the Hub's `num_experts`.
#[test]
fn tiny_qwen2_moe_matches_transformers() {
    check("tiny-qwen2-moe");
}

/// The MoE fixtures laid out as llama.cpp's GGUF files hold them (stacked experts, the
/// shared-expert gate as a vector), in f32: the same logits as transformers.
#[test]
fn tiny_moe_models_from_gguf_tensors_match_transformers() {
    for name in ["tiny-qwen3-moe", "tiny-qwen2-moe"] {
        check_model(name, load_gguf(name, GgmlDType::F32, None).as_ref());
    }
}

/// The same with the matrices in Q8_0 (experts split out of the stacked blocks for our
/// kernels) against their dequantized copy.
#[test]
fn quantized_moe_experts_match_their_dequantized_copy() {
    for name in ["tiny-qwen3-moe", "tiny-qwen2-moe"] {
        let ids: Vec<u32> = (0..24u32).map(|t| t * 37 % 512).collect();
        let quantized = scored(load_gguf(name, GgmlDType::Q8_0, None).as_ref(), &ids);
        let dequantized = scored(load_gguf(name, GgmlDType::Q8_0, Some(DType::F32)).as_ref(), &ids);
        let f32_model = scored(load(name).as_ref(), &ids);
        let (q_vs_deq, deq_vs_f32) = (max_diff(&quantized, &dequantized), max_diff(&dequantized, &f32_model));
        let cosine = cosines(&quantized, &dequantized).into_iter().fold(1f64, f64::min);
        println!("{name}: Q8_0 kernels vs dequantized: max diff {q_vs_deq:.4}, min cosine {cosine:.6}; dequantized Q8_0 vs f32 {deq_vs_f32:.4}");
        // Q8_0 weights move these logits (range about +-7) by tenths, and the kernels' 8-bit
        // activations about as much again; experts split wrongly move them by whole units
        // (a reversed split: 2.5 to 5).
        assert!(deq_vs_f32 < 1.0, "{name}: dequantized Q8_0 vs f32 {deq_vs_f32}");
        assert!(cosine > 0.99 && q_vs_deq < 1.0, "{name}: cosine {cosine}, max diff {q_vs_deq}");
        assert!(deq_vs_f32 > 0.0, "{name}: the Q8_0 copy is not quantized");
    }
}

/// Block types our CPU kernels lack (here Q4_1) run as f16 matrices: close to their
/// dequantized f32 copy (only f16's rounding of the weights apart).
#[test]
fn quantized_types_without_a_cpu_kernel_run_as_f16() {
    for name in ["tiny-qwen3-moe", "tiny-qwen2-moe"] {
        let ids: Vec<u32> = (0..24u32).map(|t| t * 37 % 512).collect();
        let half = scored(load_gguf(name, GgmlDType::Q4_1, None).as_ref(), &ids);
        let full = scored(load_gguf(name, GgmlDType::Q4_1, Some(DType::F32)).as_ref(), &ids);
        let diff = max_diff(&half, &full);
        println!("{name}: Q4_1 as f16 vs dequantized f32: max difference {diff:.5}");
        assert!(diff < 0.02, "{name}: {diff}");
    }
}

/// A token's logits do not depend on what it is batched with: two prompts prefilled together,
/// then decoded together, give bitwise the rows each gives alone, though the batch routes
/// more tokens to each expert (one matmul over all of an expert's rows). As a GGUF model runs
/// on the CPU: Q8_0 matrices (our kernels), f16 where the width does not fit Q8_0 blocks
/// (`half_matmul`), and the router in f32 through `half_matmul` too.
#[test]
fn moe_rows_do_not_depend_on_the_batch() {
    for name in ["tiny-qwen3-moe", "tiny-qwen2-moe"] {
        let model = load_gguf(name, GgmlDType::Q8_0, None);
        let block_size = 4;
        let prompts: [Vec<u32>; 2] = [vec![5, 99, 300, 7, 7, 42, 510], vec![1, 2, 3, 400, 77]];
        let tables: [Vec<u32>; 2] = [vec![0, 1], vec![2, 3]];
        let next = [11u32, 250];
        // Alone: a prefill then one decode step, each prompt in its own cache.
        let mut alone = Vec::new();
        for ((prompt, table), &token) in prompts.iter().zip(&tables).zip(&next) {
            let mut cache = KvCache::new(model.config(), 4, block_size, DType::F32, &Device::Cpu).unwrap();
            let n = prompt.len();
            let prefill = ForwardBatch { input_ids: prompt.clone(), attention: AttentionMetadata::single(table, block_size, n, n), logits_indices: (0..n as u32).collect(), hidden_rows: vec![] };
            let decode = ForwardBatch { input_ids: vec![token], attention: AttentionMetadata::single(table, block_size, n + 1, 1), logits_indices: vec![0], hidden_rows: vec![] };
            alone.push((model.forward(&prefill, &mut cache).unwrap().to_vec2::<f32>().unwrap(), model.forward(&decode, &mut cache).unwrap().to_vec2::<f32>().unwrap()));
        }
        // Together, in one cache.
        let together = |parts: [AttentionMetadata; 2], ids: Vec<u32>| {
            let mut attention = AttentionMetadata { max_blocks_per_seq: 2, query_start_loc: vec![0], ..Default::default() };
            for p in parts {
                attention.query_start_loc.push(attention.query_start_loc.last().unwrap() + p.num_tokens() as u32);
                attention.seq_lens.extend(p.seq_lens);
                attention.block_tables.extend(p.block_tables);
                attention.slot_mapping.extend(p.slot_mapping);
            }
            ForwardBatch { logits_indices: (0..ids.len() as u32).collect(), input_ids: ids, attention, hidden_rows: vec![] }
        };
        let mut cache = KvCache::new(model.config(), 4, block_size, DType::F32, &Device::Cpu).unwrap();
        let (a, b) = (prompts[0].len(), prompts[1].len());
        let prefill = together(
            [AttentionMetadata::single(&tables[0], block_size, a, a), AttentionMetadata::single(&tables[1], block_size, b, b)],
            prompts.concat(),
        );
        let rows = model.forward(&prefill, &mut cache).unwrap().to_vec2::<f32>().unwrap();
        same_bits(&rows[..a], &alone[0].0, &format!("{name}: first prompt's prefill"));
        same_bits(&rows[a..], &alone[1].0, &format!("{name}: second prompt's prefill"));
        let decode = together(
            [AttentionMetadata::single(&tables[0], block_size, a + 1, 1), AttentionMetadata::single(&tables[1], block_size, b + 1, 1)],
            next.to_vec(),
        );
        let rows = model.forward(&decode, &mut cache).unwrap().to_vec2::<f32>().unwrap();
        same_bits(&rows[..1], &alone[0].1, &format!("{name}: first prompt's decode"));
        same_bits(&rows[1..], &alone[1].1, &format!("{name}: second prompt's decode"));
    }
}

fn same_bits(got: &[Vec<f32>], want: &[Vec<f32>], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: rows");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        let d = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(a == b, "{what}: row {i} differs by up to {d}");
    }
}

/// The MoE checkpoints in bf16 on the CPU (half-precision weights and activations: the
/// routing's weighted sum through candle's ops rather than the f32 host path) stay close to
/// transformers' f32 logits.
#[test]
fn moe_models_in_bf16_stay_close_to_f32() {
    for name in ["tiny-qwen3-moe", "tiny-qwen2-moe"] {
        let weights = Weights::from_safetensors(&[fixture(name).join("model.safetensors")], DType::BF16, &Device::Cpu).unwrap();
        let model = load_model(&config(name), &weights).unwrap();
        let reference = read_json(&format!("{name}/reference.json"));
        let ids = common::ids(&reference["input_ids"]);
        let cosines = cosines(&scored(model.as_ref(), &ids), &rows(&reference["logits"]));
        let min = cosines.iter().copied().fold(1f64, f64::min);
        println!("{name} bf16 vs f32 reference: min cosine {min:.5}");
        assert!(min > 0.99, "{name}: cosines {cosines:?}");
    }
}

/// A half-precision KV cache under f32 activations (`--kv-cache-dtype`): keys and values are
/// rounded as they are written and queries meet them in that dtype; the logits stay close to
/// transformers' f32 ones (the top token too, but for near-ties: bf16 changes one of 60).
#[test]
fn half_precision_kv_cache_stays_close_to_f32() {
    for name in ["tiny-qwen3", "tiny-qwen2", "tiny-qwen3-moe"] {
        let model = load(name);
        let reference = read_json(&format!("{name}/reference.json"));
        let ids = common::ids(&reference["input_ids"]);
        let want = rows(&reference["logits"]);
        for dtype in [DType::F16, DType::BF16] {
            let block_size = 4;
            let mut cache = KvCache::new(model.config(), ids.len().div_ceil(block_size), block_size, dtype, &Device::Cpu).unwrap();
            let table: Vec<u32> = (0..cache.num_blocks() as u32).collect();
            let n = ids.len();
            let batch = ForwardBatch { input_ids: ids.clone(), attention: AttentionMetadata::single(&table, block_size, n, n), logits_indices: (0..n as u32).collect(), hidden_rows: vec![] };
            let got = model.forward(&batch, &mut cache).unwrap().to_vec2::<f32>().unwrap();
            let diff = max_diff(&got, &want);
            let argmax = |r: &[f32]| (0..r.len()).max_by(|&a, &b| r[a].total_cmp(&r[b])).unwrap();
            let same_top = got.iter().zip(&want).filter(|(a, b)| argmax(a) == argmax(b)).count();
            println!("{name} {dtype:?} cache: max logit difference {diff:.4}, top-1 same at {same_top}/{n}");
            // One rounding of K, V and q to 11 (f16) or 8 (bf16) significant bits.
            let limit = if dtype == DType::F16 { 0.05 } else { 0.3 };
            assert!(diff < limit, "{name} {dtype:?}: max difference {diff}, top-1 same at {same_top}/{n}");
        }
    }
}
