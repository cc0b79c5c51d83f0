//! Turns a scheduler decision into one model forward: flattens the scheduled tokens, builds
//! the attention metadata (block tables, slot mapping), runs the model over the paged cache
//! and hands back the logits rows the step needs.

use qwen_serve_models::{AttentionMetadata, CausalLm, ForwardBatch, KvCache, ModelError};

use super::scheduler::SchedulerOutput;
use super::sequence::Sequence;

/// Logits of one step, by scheduled sequence (same order as `SchedulerOutput::seqs`).
pub struct StepLogits {
    /// The next-token row, for sequences whose known tokens are all computed after this step.
    pub next: Vec<Option<Vec<f32>>>,
    /// For prompt-logprob sequences: rows for each new prompt token (row `i` predicts the
    /// token after new token `i`).
    pub prompt: Vec<Vec<Vec<f32>>>,
}

pub struct ModelRunner {
    model: Box<dyn CausalLm>,
    cache: KvCache,
}

impl ModelRunner {
    pub fn new(model: Box<dyn CausalLm>, cache: KvCache) -> Self {
        Self { model, cache }
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

    pub fn execute(&mut self, out: &SchedulerOutput, running: &[Sequence]) -> Result<StepLogits, ModelError> {
        let block_size = self.cache.block_size();
        let max_blocks = out.seqs.iter().map(|s| running[s.running_index].block_table.len()).max().unwrap_or(0);
        let mut batch = ForwardBatch::default();
        let meta: &mut AttentionMetadata = &mut batch.attention;
        meta.max_blocks_per_seq = max_blocks;
        meta.query_start_loc.push(0);
        // For each scheduled sequence: (first logits row, number of rows) in the output.
        let mut rows = Vec::with_capacity(out.seqs.len());
        for s in &out.seqs {
            let seq = &running[s.running_index];
            let start = seq.num_computed_tokens;
            let end = start + s.num_new_tokens;
            let row0 = batch.input_ids.len() as u32;
            batch.input_ids.extend_from_slice(&seq.tokens[start..end]);
            meta.query_start_loc.push(batch.input_ids.len() as u32);
            meta.seq_lens.push(end as u32);
            meta.block_tables.extend_from_slice(&seq.block_table);
            meta.block_tables.extend(std::iter::repeat_n(0, max_blocks - seq.block_table.len()));
            meta.slot_mapping.extend((start..end).map(|p| seq.block_table[p / block_size] * block_size as u32 + (p % block_size) as u32));
            let first = batch.logits_indices.len();
            if seq.params.prompt_logprobs.is_some() && start < seq.num_prompt_tokens {
                // Every new prompt token's row (the last may also be the next-token row).
                batch.logits_indices.extend(row0..row0 + s.num_new_tokens as u32);
            } else if end == seq.num_tokens() {
                batch.logits_indices.push(row0 + s.num_new_tokens as u32 - 1);
            }
            rows.push((first, batch.logits_indices.len() - first));
        }
        // A step of prefill chunks only still runs (their K/V must be written); it needs no
        // logits, but the model returns at least one row.
        let no_logits = batch.logits_indices.is_empty();
        if no_logits {
            batch.logits_indices.push(0);
        }
        let mut logits = self.model.forward(&batch, &mut self.cache)?.to_vec2::<f32>()?;
        if no_logits {
            logits.clear();
        }
        let mut next = Vec::with_capacity(out.seqs.len());
        let mut prompt = Vec::with_capacity(out.seqs.len());
        let mut logits = logits.into_iter().map(Some).collect::<Vec<_>>();
        for (s, (first, count)) in out.seqs.iter().zip(rows) {
            let seq = &running[s.running_index];
            let end = seq.num_computed_tokens + s.num_new_tokens;
            let mut own: Vec<Vec<f32>> = logits[first..first + count].iter_mut().map(|r| r.take().expect("each row once")).collect();
            let complete = end == seq.num_tokens();
            if seq.params.prompt_logprobs.is_some() && seq.num_computed_tokens < seq.num_prompt_tokens {
                next.push(if complete { own.last().cloned() } else { None });
                prompt.push(own);
            } else {
                next.push(if complete { own.pop() } else { None });
                prompt.push(vec![]);
            }
        }
        Ok(StepLogits { next, prompt })
    }
}
