//! Turns a scheduler decision into one model forward: flattens the scheduled tokens, builds
//! the attention metadata (block tables, slot mapping), runs the model over the paged cache
//! and hands back the logits rows the step needs.

use std::time::Instant;

use candle_core::{DType, Storage, Tensor};
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;
use qwen_serve_models::{AttentionMetadata, CausalLm, ForwardBatch, KvCache, ModelError};

use super::scheduler::SchedulerOutput;
use super::sampler::argmax;
use super::sequence::Sequence;
#[cfg(doc)]
use super::SamplingParams;

/// What a sequence's next token is drawn from.
pub enum Next {
    /// Plain greedy decoding ([`SamplingParams::is_plain_greedy`] and nothing suppressed): the
    /// argmax was taken on the model's device, so its vocabulary-sized row never reached the host.
    Argmax(u32),
    /// The full row, for the sampler.
    Logits(Vec<f32>),
}

/// Logits of one step, by scheduled sequence (same order as `SchedulerOutput::seqs`).
pub struct StepLogits {
    /// For sequences whose known tokens are all computed after this step: the row after the
    /// last of them.
    pub next: Vec<Option<Next>>,
    /// For sequences with draft tokens: the row after each draft token (`next` is the one
    /// before the first).
    pub after_draft: Vec<Vec<Next>>,
    /// For prompt-logprob sequences: rows for each new prompt token (row `i` predicts the
    /// token after new token `i`).
    pub prompt: Vec<Vec<Vec<f32>>>,
}

pub struct ModelRunner {
    model: Box<dyn CausalLm>,
    cache: KvCache,
    /// Seconds spent issuing forwards, and then waiting for their logits (see `EngineStats`).
    pub forward_seconds: f64,
    pub logits_seconds: f64,
}

impl ModelRunner {
    pub fn new(model: Box<dyn CausalLm>, cache: KvCache) -> Self {
        Self { model, cache, forward_seconds: 0.0, logits_seconds: 0.0 }
    }

    pub fn model(&self) -> &dyn CausalLm {
        self.model.as_ref()
    }

    pub fn block_size(&self) -> usize {
        self.cache.block_size()
    }

    pub fn num_blocks(&self) -> usize {
        self.cache.num_blocks()
    }

    /// `eos_token_ids`: what a sequence may not sample before its `min_tokens` (with its stop
    /// ids); a sequence with nothing to suppress and plain greedy parameters gets [`Next::Argmax`].
    pub fn execute(&mut self, out: &SchedulerOutput, running: &[Sequence], eos_token_ids: &[u32]) -> Result<StepLogits, ModelError> {
        let block_size = self.cache.block_size();
        let max_blocks = out.seqs.iter().map(|s| running[s.running_index].block_table.len()).max().unwrap_or(0);
        let mut batch = ForwardBatch::default();
        let meta: &mut AttentionMetadata = &mut batch.attention;
        meta.max_blocks_per_seq = max_blocks;
        meta.query_start_loc.push(0);
        // For each scheduled sequence: (first logits row, number of rows) in the output.
        let mut rows = Vec::with_capacity(out.seqs.len());
        // Per logits row: reduced to its argmax on the device (else copied to the host).
        let mut argmax_rows = Vec::with_capacity(out.seqs.len());
        for s in &out.seqs {
            let seq = &running[s.running_index];
            let start = seq.num_computed_tokens;
            let end = start + s.num_new_tokens;
            // The known tokens, then the draft's (which continue the positions and slots).
            let known_end = end - s.num_draft_tokens;
            let row0 = batch.input_ids.len() as u32;
            batch.input_ids.extend_from_slice(&seq.tokens[start..known_end]);
            batch.input_ids.extend_from_slice(&seq.draft[..s.num_draft_tokens]);
            meta.query_start_loc.push(batch.input_ids.len() as u32);
            meta.seq_lens.push(end as u32);
            meta.block_tables.extend_from_slice(&seq.block_table);
            meta.block_tables.extend(std::iter::repeat_n(0, max_blocks - seq.block_table.len()));
            meta.slot_mapping.extend((start..end).map(|p| seq.block_table[p / block_size] * block_size as u32 + (p % block_size) as u32));
            let first = batch.logits_indices.len();
            if seq.params.prompt_logprobs.is_some() && start < seq.num_prompt_tokens {
                // Every new prompt token's row (the last may also be the next-token row).
                batch.logits_indices.extend(row0..row0 + s.num_new_tokens as u32);
                argmax_rows.extend(std::iter::repeat_n(false, s.num_new_tokens));
            } else if known_end == seq.num_tokens() {
                // The row after the last known token, and one after each draft token.
                let rows = s.num_draft_tokens as u32 + 1;
                batch.logits_indices.extend(row0 + s.num_new_tokens as u32 - rows..row0 + s.num_new_tokens as u32);
                let argmax = seq.params.is_plain_greedy() && seq.suppressed(eos_token_ids).is_empty();
                argmax_rows.extend(std::iter::repeat_n(argmax, rows as usize));
            }
            rows.push((first, batch.logits_indices.len() - first));
        }
        // A step of prefill chunks only still runs (their K/V must be written); it needs no
        // logits, but the model returns at least one row.
        let no_logits = batch.logits_indices.is_empty();
        if no_logits {
            batch.logits_indices.push(0);
        }
        let start = Instant::now();
        let logits = self.model.forward(&batch, &mut self.cache)?;
        let issued = Instant::now();
        let mut logits = if no_logits { vec![] } else { host_rows(&logits, &argmax_rows)? };
        self.forward_seconds += (issued - start).as_secs_f64();
        self.logits_seconds += issued.elapsed().as_secs_f64();
        let mut next = Vec::with_capacity(out.seqs.len());
        let mut prompt = Vec::with_capacity(out.seqs.len());
        let mut after_draft = Vec::with_capacity(out.seqs.len());
        for (s, (first, count)) in out.seqs.iter().zip(rows) {
            let seq = &running[s.running_index];
            let known_end = seq.num_computed_tokens + s.num_new_tokens - s.num_draft_tokens;
            let mut own: Vec<Next> = logits[first..first + count].iter_mut().map(|r| r.take().expect("each row once")).collect();
            let complete = known_end == seq.num_tokens();
            after_draft.push(own.split_off(own.len() - s.num_draft_tokens.min(own.len())));
            if seq.params.prompt_logprobs.is_some() && seq.num_computed_tokens < seq.num_prompt_tokens {
                let rows: Vec<Vec<f32>> = own
                    .into_iter()
                    .map(|r| match r {
                        Next::Logits(row) => row,
                        Next::Argmax(_) => unreachable!("prompt-logprob rows are copied whole"),
                    })
                    .collect();
                next.push(if complete { rows.last().cloned().map(Next::Logits) } else { None });
                prompt.push(rows);
            } else {
                next.push(if complete { own.pop() } else { None });
                prompt.push(vec![]);
            }
        }
        Ok(StepLogits { next, after_draft, prompt })
    }
}

/// The logits rows as the engine needs them: the argmax of each row marked in `argmax_rows`,
/// and the other rows copied out whole, as f32. On a GPU the argmax is taken there (one id comes
/// back instead of ~300-600 KB per row); on the CPU f32 rows are read in place, in parallel.
fn host_rows(logits: &Tensor, argmax_rows: &[bool]) -> Result<Vec<Option<Next>>, ModelError> {
    let mut logits = logits.contiguous()?;
    if logits.device().is_cpu() && logits.dtype() != DType::F32 {
        logits = logits.to_dtype(DType::F32)?;
    }
    let (num_rows, vocab) = logits.dims2()?;
    if num_rows != argmax_rows.len() {
        return Err(ModelError::Input(format!("{num_rows} logits rows for {} wanted", argmax_rows.len())));
    }
    let (storage, layout) = logits.storage_and_layout();
    if let Storage::Cpu(cpu) = &*storage {
        let all = &cpu.as_slice::<f32>()?[layout.start_offset()..layout.start_offset() + num_rows * vocab];
        return Ok(all
            .par_chunks(vocab)
            .zip(argmax_rows)
            .map(|(row, &greedy)| Some(if greedy { Next::Argmax(argmax(row)) } else { Next::Logits(row.to_vec()) }))
            .collect());
    }
    drop(storage);
    device_rows(&logits, argmax_rows)
}

/// [`host_rows`] for logits on a GPU (works on any device): the argmaxes are taken there and
/// only the rows wanted whole are copied back.
fn device_rows(logits: &Tensor, argmax_rows: &[bool]) -> Result<Vec<Option<Next>>, ModelError> {
    let num_rows = argmax_rows.len();
    let pick = |want: bool| -> Vec<u32> { (0..num_rows as u32).filter(|&i| argmax_rows[i as usize] == want).collect() };
    let select = |rows: &[u32]| -> candle_core::Result<Tensor> {
        if rows.len() == num_rows {
            Ok(logits.clone())
        } else {
            logits.index_select(&Tensor::from_slice(rows, rows.len(), logits.device())?, 0)
        }
    };
    let mut out: Vec<Option<Next>> = (0..num_rows).map(|_| None).collect();
    let (greedy, full) = (pick(true), pick(false));
    if !greedy.is_empty() {
        // Ties go to the lowest id, as on the host.
        let ids = qwen_serve_models::argmax_rows(&select(&greedy)?)?.to_vec1::<u32>()?;
        for (&row, id) in greedy.iter().zip(ids) {
            out[row as usize] = Some(Next::Argmax(id));
        }
    }
    if !full.is_empty() {
        for (&row, values) in full.iter().zip(rows_f32(&select(&full)?)?) {
            out[row as usize] = Some(Next::Logits(values));
        }
    }
    Ok(out)
}

/// The rows of `(rows, vocab)` logits on the host as f32: one copy in their own dtype (a GPU's
/// bf16 rows are half the bytes of f32 ones), then each row converted, exactly, as its own task.
fn rows_f32(t: &Tensor) -> candle_core::Result<Vec<Vec<f32>>> {
    let vocab = t.dim(1)?;
    let flat = t.flatten_all()?;
    Ok(match t.dtype() {
        DType::F32 => flat.to_vec1::<f32>()?.par_chunks(vocab).map(<[f32]>::to_vec).collect(),
        DType::BF16 => flat.to_vec1::<half::bf16>()?.par_chunks(vocab).map(|r| r.to_f32_vec()).collect(),
        DType::F16 => flat.to_vec1::<half::f16>()?.par_chunks(vocab).map(|r| r.to_f32_vec()).collect(),
        dtype => candle_core::bail!("logits of dtype {dtype:?}"),
    })
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};

    use super::{device_rows, host_rows, Next};

    fn flat(rows: Vec<Option<Next>>) -> Vec<(bool, Vec<f32>)> {
        rows.into_iter()
            .map(|r| match r.expect("every row") {
                Next::Argmax(id) => (true, vec![id as f32]),
                Next::Logits(row) => (false, row),
            })
            .collect()
    }

    /// The GPU's way (argmax on the device, whole rows copied) gives what the CPU's in-place
    /// reading does, whichever rows are greedy; half-precision logits (a GPU's head output) give
    /// what their f32 copy does.
    #[test]
    fn device_and_host_rows_agree() {
        let logits = Tensor::randn(0f32, 1.0, (5, 300), &Device::Cpu).unwrap();
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let logits = logits.to_dtype(dtype).unwrap();
            let rows = logits.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap();
            for mask in [[true; 5], [false; 5], [true, false, true, true, false]] {
                let host = flat(host_rows(&logits, &mask).unwrap());
                assert_eq!(host, flat(device_rows(&logits, &mask).unwrap()), "{dtype:?} {mask:?}");
                for (i, (greedy, got)) in host.iter().enumerate() {
                    assert_eq!(*greedy, mask[i]);
                    if *greedy {
                        assert_eq!(got[0] as u32, super::argmax(&rows[i]), "{dtype:?}");
                    } else {
                        assert_eq!(got, &rows[i], "{dtype:?}");
                    }
                }
            }
        }
    }
}
