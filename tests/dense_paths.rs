//! The dequantized (f32) paths on the real test model: the paged cache across many forwards
//! against one prefill, and the safetensors folder path against the GGUF path.
//!
//! f32 dense matmuls make these comparisons exact up to float reassociation; the quantized
//! kernels pick different code for one row than for many, which would blur what is tested.

mod common;

use std::sync::OnceLock;

use candle_core::DType;
use common::test_gguf;
use qwen_serve::generate::score;
use qwen_serve::loader::{self, export_hf_folder, LoadOptions, LoadedModel};
use qwen_serve_models::{AttentionMetadata, ForwardBatch, KvCache};

fn f32_gguf_model() -> &'static LoadedModel {
    static MODEL: OnceLock<LoadedModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        let opts = LoadOptions { dtype: Some(DType::F32), ..Default::default() };
        loader::load(test_gguf().to_str().unwrap(), &opts).expect("load test GGUF as f32")
    })
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
}

/// A prefill followed by single-token decode steps through the paged cache (with a block
/// table that is not in order) gives the logits of one full prefill.
#[test]
fn incremental_decode_matches_full_prefill() {
    let model = f32_gguf_model();
    let lm = model.model.as_ref();
    let ids = model.tokenizer.encode("fn main() {\n    println!(\"hello, world\");\n}\n// A second line.").unwrap();
    let full = score(lm, &ids).unwrap().to_vec2::<f32>().unwrap();
    let block_size = 4;
    let num_blocks = ids.len().div_ceil(block_size) + 2;
    let mut cache = KvCache::new(lm.config(), num_blocks, block_size, lm.dtype(), lm.device()).unwrap();
    let table: Vec<u32> = (0..num_blocks as u32).rev().collect();
    let prefix = ids.len() - 8;
    let mut rows = vec![];
    let mut start = 0;
    for end in std::iter::once(prefix).chain(prefix + 1..=ids.len()) {
        let batch = ForwardBatch {
            input_ids: ids[start..end].to_vec(),
            attention: AttentionMetadata::single(&table, block_size, end, end - start),
            logits_indices: vec![(end - start - 1) as u32],
            hidden_rows: vec![],
        };
        rows.push((end - 1, lm.forward(&batch, &mut cache).unwrap().to_vec2::<f32>().unwrap().remove(0)));
        start = end;
    }
    for (pos, row) in rows {
        let diff = max_diff(&row, &full[pos]);
        assert!(diff < 1e-3, "position {pos}: max logit difference {diff}");
    }
}

/// The GGUF dequantized and written as a Hugging Face folder (f32 safetensors, config,
/// tokenizer.json, tokenizer_config.json) loads through the folder path and gives the same
/// logits as the GGUF loaded with `--dtype f32`: same weights, same math, so the only
/// tolerated difference is float noise (1e-4 absolute on logits of magnitude ~10-30).
#[test]
fn safetensors_folder_matches_gguf_f32() {
    let dir = tempfile::tempdir().unwrap();
    export_hf_folder(&test_gguf(), dir.path()).unwrap();
    let folder = loader::load(dir.path().to_str().unwrap(), &LoadOptions::default()).unwrap();
    let gguf = f32_gguf_model();
    assert_eq!(folder.model.dtype(), DType::F32);
    assert_eq!(folder.eos_token_ids, gguf.eos_token_ids);
    let text = "<|im_start|>user\nSort a list in Python.<|im_end|>\n<|im_start|>assistant\n";
    let ids = folder.tokenizer.encode(text).unwrap();
    assert_eq!(ids, gguf.tokenizer.encode(text).unwrap());
    let a = score(folder.model.as_ref(), &ids).unwrap().to_vec2::<f32>().unwrap();
    let b = score(gguf.model.as_ref(), &ids).unwrap().to_vec2::<f32>().unwrap();
    for (i, (ra, rb)) in a.iter().zip(&b).enumerate() {
        let d = max_diff(ra, rb);
        assert!(d < 1e-4, "position {i}: max logit difference {d}");
    }
    // The template travelled too.
    let messages = [serde_json::json!({"role": "user", "content": "hi"})];
    let none = serde_json::Map::new();
    assert_eq!(
        folder.chat_template.as_ref().unwrap().render(&messages, None, true, &none).unwrap(),
        gguf.chat_template.as_ref().unwrap().render(&messages, None, true, &none).unwrap()
    );
}

/// `--quantize` on a safetensors folder (the test model written out in f32): the projections
/// run through the quantized kernels (or, for bf16, are stored rounded to bf16), so the logits
/// move off the f32 ones, but the model stays the same model: its top-1 token agrees with
/// f32's at nearly every position.
#[test]
fn quantize_at_load_keeps_the_model() {
    let dir = tempfile::tempdir().unwrap();
    export_hf_folder(&test_gguf(), dir.path()).unwrap();
    let gguf = f32_gguf_model();
    let text = "<|im_start|>user\nWrite a function that reverses a string.<|im_end|>\n<|im_start|>assistant\ndef reverse(s):\n    return s[::-1]\n";
    let ids = gguf.tokenizer.encode(text).unwrap();
    let reference = score(gguf.model.as_ref(), &ids).unwrap().to_vec2::<f32>().unwrap();
    let argmax = |r: &[f32]| r.iter().enumerate().fold((0, f32::MIN), |m, (i, &v)| if v > m.1 { (i, v) } else { m }).0;
    for quantize in [candle_core::quantized::GgmlDType::Q8_0, candle_core::quantized::GgmlDType::Q4K, candle_core::quantized::GgmlDType::BF16] {
        let opts = LoadOptions { quantize: Some(quantize), ..Default::default() };
        let folder = loader::load(dir.path().to_str().unwrap(), &opts).unwrap();
        let got = score(folder.model.as_ref(), &ids).unwrap().to_vec2::<f32>().unwrap();
        let moved = got.iter().zip(&reference).map(|(a, b)| max_diff(a, b)).fold(0f32, f32::max);
        assert!(moved > 1e-3, "{quantize:?}: logits identical to f32 ({moved}): not quantized?");
        let agree = got.iter().zip(&reference).filter(|(a, b)| argmax(a) == argmax(b)).count();
        eprintln!("{quantize:?}: top-1 agrees with f32 at {agree}/{} positions, max logit change {moved:.3}", ids.len());
        let min = if quantize == candle_core::quantized::GgmlDType::Q4K { 0.85 } else { 0.95 };
        assert!(agree as f64 >= min * ids.len() as f64, "{quantize:?}: top-1 agrees at {agree} of {} positions", ids.len());
    }
}
