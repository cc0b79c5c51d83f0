//! Turns a scheduler decision into one model forward: flattens the scheduled tokens, builds
//! the attention metadata (block tables, slot mapping), runs the model over the paged cache
//! and hands back the logits rows the step needs.

use std::time::Instant;

use candle_core::{DType, Storage, Tensor};
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;
use qwen_serve_models::{AttentionMetadata, CausalLm, ForwardBatch, KvCache, ModelError};

use super::constraint::OutputFormat;
use super::scheduler::SchedulerOutput;
use super::sampler::argmax;
use super::sequence::Sequence;
#[cfg(doc)]
use super::SamplingParams;

/// What a sequence's next token is drawn from.
pub enum Next {
    /// The token, chosen on the model's device so that its vocabulary-sized row never reached
    /// the host: the argmax for plain greedy decoding ([`SamplingParams::is_plain_greedy`] and
    /// nothing suppressed), or a plain whole-vocabulary draw made with the sequence's RNG.
    Token(u32),
    /// The full row, for the sampler.
    Logits(Vec<f32>),
    /// The row's best candidates and the logits its processing touches, by id (see
    /// [`Sampler::sample_candidates`](super::sampler::Sampler::sample_candidates)): on a GPU,
    /// a few hundred bytes where the row is ~300 KB.
    Candidates(Vec<(u32, f32)>),
}

/// How a logits row reaches the host.
#[derive(Debug, Clone, PartialEq)]
enum Want {
    Argmax,
    Whole,
    /// Every logit at least the `k`-th largest of the row, and the `touched` ids' logits.
    Best { k: usize, touched: Vec<u32> },
    /// The token of a whole-vocabulary draw at `u` (the sequence's next uniform draw, taken
    /// when the step is built), as the sampler would make it (`qwen_serve_models::draw_whole`).
    Draw { temperature: f32, min_p: f32, u: f64 },
}

/// The most candidates a row may ask for before it is copied whole instead.
const MAX_CANDIDATES: usize = 4096;

/// The union of two sorted, duplicate-free lists, sorted and duplicate-free.
fn merge_sorted(a: &[u32], b: &[u32]) -> Vec<u32> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let next = a[i].min(b[j]);
        i += usize::from(a[i] == next);
        j += usize::from(b[j] == next);
        out.push(next);
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

/// What a GPU sends of the rows of `seq` (the next token's and, with `num_draft` draft tokens,
/// one after each): the argmax for plain greedy decoding; the token of a plain draw from the
/// whole vocabulary (temperature and min-p only, no draft: its rows' draws depend on which
/// draft tokens are kept); otherwise, where the sampler needs only the top k (greedy, or
/// `top_k` below the vocabulary, with no logprobs and no output constraint), the best `k + t`
/// logits plus the `t` ids that bias, suppression and penalties touch (the draft's tokens count
/// as output: a row after one sees it); else the whole row. A `Draw`'s `u` is left for the
/// caller to draw.
fn want(seq: &Sequence, num_draft: usize, eos_token_ids: &[u32], vocab: usize) -> Want {
    let p = &seq.params;
    let suppressed = seq.suppressed(eos_token_ids);
    if p.is_plain_greedy() && suppressed.is_empty() {
        return Want::Argmax;
    }
    if p.logprobs.is_some() || p.format != OutputFormat::Text {
        return Want::Whole;
    }
    let whole_vocab = p.top_k == 0 || p.top_k >= vocab;
    let processed = !p.logit_bias.is_empty() || p.repetition_penalty != 1.0 || p.presence_penalty != 0.0 || p.frequency_penalty != 0.0;
    let drawable = vocab <= qwen_serve_models::SAMPLE_WHOLE_MAX_VOCAB;
    if p.temperature > 0.0 && whole_vocab && p.top_p >= 1.0 && !processed && suppressed.is_empty() && num_draft == 0 && drawable {
        return Want::Draw { temperature: p.temperature, min_p: p.draw_min_p(), u: 0.0 };
    }
    let k = match (p.temperature <= 0.0, p.top_k) {
        (true, _) => 1,
        (false, k) if k > 0 && k < vocab => k,
        _ => return Want::Whole,
    };
    // The few ids of this step (bias, suppression, output, draft), then, with a repetition
    // penalty, merged with the prompt's distinct ids (sorted once per sequence).
    let mut touched: Vec<u32> = p.logit_bias.iter().map(|b| b.0).chain(suppressed).collect();
    let penalised = p.repetition_penalty != 1.0 || p.presence_penalty != 0.0 || p.frequency_penalty != 0.0;
    if penalised {
        touched.extend(seq.output().iter().chain(&seq.draft[..num_draft]));
    }
    touched.sort_unstable();
    touched.dedup();
    // The prompt's ids: the repetition penalty's, or every penalty's over a window of the last
    // tokens (a superset of the window's).
    if p.repetition_penalty != 1.0 || (penalised && p.penalty_last_n.is_some()) {
        let prompt = seq.distinct_prompt_ids();
        if prompt.len() + k > MAX_CANDIDATES {
            return Want::Whole;
        }
        touched = merge_sorted(&touched, prompt);
    }
    touched.retain(|&id| (id as usize) < vocab);
    let k = k + touched.len();
    if k > MAX_CANDIDATES {
        return Want::Whole;
    }
    Want::Best { k, touched }
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
    /// For pooling sequences whose prompt is all computed after this step: the last token's
    /// final hidden state, or its scored tokens' logits (their `next` is `None`: nothing is
    /// sampled).
    pub pooled: Vec<Option<Vec<f32>>>,
}

pub struct ModelRunner {
    model: Box<dyn CausalLm>,
    cache: KvCache,
    /// Sampling starts on the model's device ([`Want::Best`], [`Want::Draw`]).
    on_device: bool,
    /// Seconds spent issuing forwards, and then waiting for their logits (see `EngineStats`).
    pub forward_seconds: f64,
    pub logits_seconds: f64,
}

impl ModelRunner {
    /// `on_device`: see `EngineConfig::sample_on_device`; when `None`,
    /// `QWEN_SERVE_SAMPLE_ON_DEVICE=0|1` (a measuring switch) decides before the device does.
    pub fn new(model: Box<dyn CausalLm>, cache: KvCache, on_device: Option<bool>) -> Self {
        let from_env = match std::env::var("QWEN_SERVE_SAMPLE_ON_DEVICE").as_deref() {
            Ok("0") => Some(false),
            Ok("1") => Some(true),
            _ => None,
        };
        let on_device = on_device.or(from_env).unwrap_or(!model.device().is_cpu());
        Self { model, cache, on_device, forward_seconds: 0.0, logits_seconds: 0.0 }
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
    /// ids); a sequence with nothing to suppress and plain greedy parameters gets [`Next::Token`].
    /// A [`Want::Draw`] row takes its sequence's next uniform draw here (`running` is mutable for
    /// that alone).
    pub fn execute(&mut self, out: &SchedulerOutput, running: &mut [Sequence], eos_token_ids: &[u32]) -> Result<StepLogits, ModelError> {
        let block_size = self.cache.block_size();
        let max_blocks = out.seqs.iter().map(|s| running[s.running_index].block_table.len()).max().unwrap_or(0);
        let mut batch = ForwardBatch::default();
        let meta: &mut AttentionMetadata = &mut batch.attention;
        meta.max_blocks_per_seq = max_blocks;
        meta.query_start_loc.push(0);
        // For each scheduled sequence: (first logits row, number of rows) in the output.
        let mut rows = Vec::with_capacity(out.seqs.len());
        // Per logits row: how it reaches the host (on the CPU, read in place: an argmax or whole).
        let mut wants = Vec::with_capacity(out.seqs.len());
        let vocab = self.model.config().vocab_size;
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
                wants.extend(std::iter::repeat_n(Want::Whole, s.num_new_tokens));
            } else if seq.params.embed && known_end == seq.num_tokens() {
                // A pooling request's last chunk: its last token's row. A score keeps the named
                // tokens' logits from it; an embedding reads the hidden state and leaves the
                // logits unread (an argmax is the cheapest way for a row to come back).
                let scored = !seq.params.score_tokens.is_empty();
                if !scored {
                    batch.hidden_rows.push(batch.logits_indices.len() as u32);
                }
                batch.logits_indices.push(row0 + (known_end - start) as u32 - 1);
                wants.push(if scored { Want::Whole } else { Want::Argmax });
            } else if known_end == seq.num_tokens() {
                // The row after the last known token, and one after each draft token.
                let rows = s.num_draft_tokens as u32 + 1;
                batch.logits_indices.extend(row0 + s.num_new_tokens as u32 - rows..row0 + s.num_new_tokens as u32);
                let want = match want(seq, s.num_draft_tokens, eos_token_ids, vocab) {
                    Want::Best { .. } | Want::Draw { .. } if !self.on_device => Want::Whole,
                    Want::Draw { temperature, min_p, .. } => Want::Draw { temperature, min_p, u: running[s.running_index].sampler.uniform() },
                    w => w,
                };
                wants.extend(std::iter::repeat_n(want, rows as usize));
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
        let (logits, hidden) = self.model.forward_with_hidden(&batch, &mut self.cache)?;
        let issued = Instant::now();
        let mut logits = if no_logits { vec![] } else { host_rows(&logits, &wants)? };
        let mut hidden = match hidden {
            Some(h) => h.to_vec2::<f32>()?,
            None => vec![],
        }
        .into_iter();
        self.forward_seconds += (issued - start).as_secs_f64();
        self.logits_seconds += issued.elapsed().as_secs_f64();
        let mut next = Vec::with_capacity(out.seqs.len());
        let mut prompt = Vec::with_capacity(out.seqs.len());
        let mut after_draft = Vec::with_capacity(out.seqs.len());
        let mut states = Vec::with_capacity(out.seqs.len());
        for (s, (first, count)) in out.seqs.iter().zip(rows) {
            let seq = &running[s.running_index];
            let known_end = seq.num_computed_tokens + s.num_new_tokens - s.num_draft_tokens;
            let complete = known_end == seq.num_tokens();
            if seq.params.embed {
                states.push(match (complete, &seq.params.score_tokens[..]) {
                    (false, _) => None,
                    // Hidden rows come in the order their sequences were scheduled.
                    (true, []) => hidden.next(),
                    (true, tokens) => match logits[first].take() {
                        Some(Next::Logits(row)) => Some(tokens.iter().map(|&t| row[t as usize]).collect()),
                        _ => unreachable!("a scored row is copied whole"),
                    },
                });
                next.push(None);
                after_draft.push(vec![]);
                prompt.push(vec![]);
                continue;
            }
            states.push(None);
            let mut own: Vec<Next> = logits[first..first + count].iter_mut().map(|r| r.take().expect("each row once")).collect();
            after_draft.push(own.split_off(own.len() - s.num_draft_tokens.min(own.len())));
            if seq.params.prompt_logprobs.is_some() && seq.num_computed_tokens < seq.num_prompt_tokens {
                let rows: Vec<Vec<f32>> = own
                    .into_iter()
                    .map(|r| match r {
                        Next::Logits(row) => row,
                        Next::Token(_) | Next::Candidates(_) => unreachable!("prompt-logprob rows are copied whole"),
                    })
                    .collect();
                next.push(if complete { rows.last().cloned().map(Next::Logits) } else { None });
                prompt.push(rows);
            } else {
                next.push(if complete { own.pop() } else { None });
                prompt.push(vec![]);
            }
        }
        Ok(StepLogits { next, after_draft, prompt, pooled: states })
    }
}

/// The logits rows as the engine needs them, each as its [`Want`] says: a token (argmax or
/// draw), candidates, or the row copied out whole as f32. On a GPU tokens and candidates are
/// taken there (an id or a few hundred bytes come back instead of ~300-600 KB per row); on the
/// CPU f32 rows are read in place, in parallel, unless some row wants the GPU's way.
fn host_rows(logits: &Tensor, wants: &[Want]) -> Result<Vec<Option<Next>>, ModelError> {
    let mut logits = logits.contiguous()?;
    if logits.device().is_cpu() && logits.dtype() != DType::F32 {
        logits = logits.to_dtype(DType::F32)?;
    }
    let (num_rows, vocab) = logits.dims2()?;
    if num_rows != wants.len() {
        return Err(ModelError::Input(format!("{num_rows} logits rows for {} wanted", wants.len())));
    }
    let (storage, layout) = logits.storage_and_layout();
    let best = wants.iter().any(|w| matches!(w, Want::Best { .. } | Want::Draw { .. }));
    if let (Storage::Cpu(cpu), false) = (&*storage, best) {
        let all = &cpu.as_slice::<f32>()?[layout.start_offset()..layout.start_offset() + num_rows * vocab];
        return Ok(all
            .par_chunks(vocab)
            .zip(wants)
            .map(|(row, want)| Some(if *want == Want::Argmax { Next::Token(argmax(row)) } else { Next::Logits(row.to_vec()) }))
            .collect());
    }
    drop(storage);
    device_rows(&logits, wants)
}

/// [`host_rows`] for logits on a GPU (works on any device): the argmaxes and the best candidates
/// are taken there, and only the rows wanted whole (or with more candidates than the output
/// could hold) are copied back.
fn device_rows(logits: &Tensor, wants: &[Want]) -> Result<Vec<Option<Next>>, ModelError> {
    let (num_rows, vocab) = logits.dims2()?;
    let device = logits.device();
    let pick = |f: &dyn Fn(&Want) -> bool| -> Vec<u32> { (0..num_rows as u32).filter(|&i| f(&wants[i as usize])).collect() };
    let select = |rows: &[u32]| -> candle_core::Result<Tensor> {
        if rows.len() == num_rows {
            Ok(logits.clone())
        } else {
            logits.index_select(&Tensor::from_slice(rows, rows.len(), device)?, 0)
        }
    };
    let mut out: Vec<Option<Next>> = (0..num_rows).map(|_| None).collect();
    let greedy = pick(&|w| *w == Want::Argmax);
    if !greedy.is_empty() {
        // Ties go to the lowest id, as on the host.
        let ids = qwen_serve_models::argmax_rows(&select(&greedy)?)?.to_vec1::<u32>()?;
        for (&row, id) in greedy.iter().zip(ids) {
            out[row as usize] = Some(Next::Token(id));
        }
    }
    let draws = pick(&|w| matches!(w, Want::Draw { .. }));
    if !draws.is_empty() {
        // Over every row (the others with temperature 0, left out), so the logits are not copied.
        let mut params = vec![0f32; 2 * num_rows];
        let mut us = vec![0f64; num_rows];
        for &row in &draws {
            if let Want::Draw { temperature, min_p, u } = wants[row as usize] {
                params[2 * row as usize] = temperature;
                params[2 * row as usize + 1] = min_p;
                us[row as usize] = u;
            }
        }
        let params = Tensor::from_vec(params, (num_rows, 2), device)?;
        let ids = qwen_serve_models::sample_whole_rows(logits, &params, &Tensor::from_vec(us, num_rows, device)?)?.to_vec1::<u32>()?;
        for &row in &draws {
            out[row as usize] = Some(Next::Token(ids[row as usize]));
        }
    }
    let mut whole = pick(&|w| *w == Want::Whole);
    let best = pick(&|w| matches!(w, Want::Best { .. }));
    // (Touched logits are gathered by flat u32 index.)
    if !best.is_empty() && num_rows * vocab <= u32::MAX as usize {
        let ks: Vec<u32> = wants.iter().map(|w| if let Want::Best { k, .. } = w { *k as u32 } else { 0 }).collect();
        let max_k = ks.iter().copied().max().unwrap_or(1) as usize;
        // Room for ties at the k-th value; a row with more is copied whole.
        let cap = 2 * max_k + 256;
        // Only the asking rows' lists come back.
        let packed = qwen_serve_models::top_k_candidates(logits, &Tensor::new(ks, device)?, cap)?
            .index_select(&Tensor::from_slice(&best, best.len(), device)?, 0)?
            .to_vec2::<u32>()?;
        let mut flat = vec![];
        for &row in &best {
            if let Want::Best { touched, .. } = &wants[row as usize] {
                flat.extend(touched.iter().map(|&id| row * vocab as u32 + id));
            }
        }
        let mut touched_values = if flat.is_empty() {
            vec![]
        } else {
            let len = flat.len();
            logits.flatten_all()?.index_select(&Tensor::from_vec(flat, len, device)?, 0)?.to_dtype(DType::F32)?.to_vec1::<f32>()?
        }
        .into_iter();
        for (&row, listed) in best.iter().zip(&packed) {
            let Want::Best { touched, .. } = &wants[row as usize] else { unreachable!("picked as Best") };
            let values: Vec<f32> = touched_values.by_ref().take(touched.len()).collect();
            match qwen_serve_models::unpack_candidates(listed) {
                Some(mut candidates) => {
                    candidates.extend(touched.iter().copied().zip(values));
                    candidates.sort_by_key(|c| c.0);
                    candidates.dedup_by_key(|c| c.0);
                    out[row as usize] = Some(Next::Candidates(candidates));
                }
                None => whole.push(row),
            }
        }
    } else {
        whole.extend(best);
    }
    if !whole.is_empty() {
        whole.sort_unstable();
        for (&row, values) in whole.iter().zip(rows_f32(&select(&whole)?)?) {
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
    use std::sync::Arc;

    use candle_core::{DType, Device, Tensor};
    use tokio::sync::mpsc::unbounded_channel;

    use super::{device_rows, host_rows, want, Next, Want};
    use crate::engine::constraint::OutputFormat;
    use crate::engine::sequence::Sequence;
    use crate::engine::SamplingParams;

    fn flat(rows: Vec<Option<Next>>) -> Vec<(bool, Vec<f32>)> {
        rows.into_iter()
            .map(|r| match r.expect("every row") {
                Next::Token(id) => (true, vec![id as f32]),
                Next::Logits(row) => (false, row),
                Next::Candidates(_) => panic!("no candidates asked for"),
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
                let wants: Vec<Want> = mask.iter().map(|&g| if g { Want::Argmax } else { Want::Whole }).collect();
                let host = flat(host_rows(&logits, &wants).unwrap());
                assert_eq!(host, flat(device_rows(&logits, &wants).unwrap()), "{dtype:?} {mask:?}");
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

    /// Rows asking for their best candidates get every logit at least their k-th largest and
    /// the touched ids' logits, by id, with the row's values; a row with more ties at the k-th
    /// than the output holds comes whole; the other rows are unaffected.
    #[test]
    fn best_candidates_come_with_the_touched_logits() {
        let vocab = 3000;
        let mut rows: Vec<Vec<f32>> = (0..4).map(|r| Tensor::randn(0f32, 2.0, vocab, &Device::Cpu).unwrap().to_vec1::<f32>().unwrap().into_iter().map(|v| v + r as f32).collect()).collect();
        rows[3].iter_mut().for_each(|v| *v = 1.0); // all tied: more than any cap
        let touched = vec![0u32, 7, 2999];
        let wants = vec![
            Want::Best { k: 20 + touched.len(), touched: touched.clone() },
            Want::Argmax,
            Want::Best { k: 1, touched: vec![] },
            Want::Best { k: 5, touched: vec![] },
        ];
        let logits = Tensor::new(rows.iter().flatten().copied().collect::<Vec<f32>>(), &Device::Cpu).unwrap().reshape((4, vocab)).unwrap();
        for dtype in [DType::F32, DType::BF16] {
            let logits = logits.to_dtype(dtype).unwrap();
            let values = logits.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap();
            let out = device_rows(&logits, &wants).unwrap();
            for (r, k, touched) in [(0, 23, &touched[..]), (2, 1, &[][..])] {
                let Some(Next::Candidates(got)) = &out[r] else { panic!("row {r}: candidates") };
                let mut sorted = values[r].clone();
                sorted.sort_by(|a, b| b.total_cmp(a));
                let want: Vec<(u32, f32)> =
                    (0..vocab as u32).filter(|&i| values[r][i as usize] >= sorted[k - 1] || touched.contains(&i)).map(|i| (i, values[r][i as usize])).collect();
                assert_eq!(got, &want, "{dtype:?} row {r}");
                assert!(got.len() >= k && got.len() < 100);
            }
            assert!(matches!(out[1], Some(Next::Token(_))));
            assert!(matches!(&out[3], Some(Next::Logits(row)) if row == &values[3]), "overflow: the row whole");
        }
    }

    /// Rows drawn on the device get the sampler's own draw at their `u` (on their logits as
    /// f32), beside greedy and whole rows.
    #[test]
    fn whole_vocabulary_draws_are_the_samplers() {
        let vocab = 2000;
        let logits = Tensor::randn(0f32, 2.0, (4, vocab), &Device::Cpu).unwrap();
        let wants = vec![
            Want::Draw { temperature: 0.8, min_p: 0.0, u: 0.37 },
            Want::Argmax,
            Want::Draw { temperature: 1.5, min_p: 0.05, u: 0.91 },
            Want::Whole,
        ];
        for dtype in [DType::F32, DType::BF16] {
            let logits = logits.to_dtype(dtype).unwrap();
            let rows = logits.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap();
            let out = host_rows(&logits, &wants).unwrap();
            for (r, t, min_p, u) in [(0, 0.8, 0.0, 0.37), (2, 1.5, 0.05, 0.91)] {
                let want = qwen_serve_models::draw_whole(&rows[r], qwen_serve_models::max_value(&rows[r]), t, min_p, u).unwrap();
                assert!(matches!(out[r], Some(Next::Token(id)) if id == want), "{dtype:?} row {r}");
            }
            assert!(matches!(out[1], Some(Next::Token(id)) if id == super::argmax(&rows[1])));
            assert!(matches!(&out[3], Some(Next::Logits(row)) if row == &rows[3]));
        }
    }

    #[test]
    fn merging_sorted_id_lists() {
        assert_eq!(super::merge_sorted(&[1, 4, 9], &[0, 4, 5, 9, 12]), [0, 1, 4, 5, 9, 12]);
        assert_eq!(super::merge_sorted(&[], &[2, 3]), [2, 3]);
        assert_eq!(super::merge_sorted(&[7], &[]), [7]);
    }

    fn sequence(params: SamplingParams, prompt: Vec<u32>, output: &[u32]) -> Sequence {
        let (tx, _rx) = unbounded_channel();
        let mut seq = Sequence::new(0, 0, 0, prompt, Arc::new(params), tx);
        seq.tokens.extend_from_slice(output);
        seq
    }

    #[test]
    fn what_a_row_needs_from_the_gpu() {
        let prompt = vec![5, 6, 5, 9000, 1];
        let eos = [2u32];
        let want_of = |params: SamplingParams| want(&sequence(params, prompt.clone(), &[7, 7, 3]), 0, &eos, 1000);
        assert_eq!(want_of(SamplingParams::default()), Want::Argmax);
        assert_eq!(want_of(SamplingParams { min_tokens: 10, ..Default::default() }), Want::Best { k: 2, touched: vec![2] }, "EOS suppressed");
        let sampled = SamplingParams { temperature: 0.7, top_k: 20, ..Default::default() };
        assert_eq!(want_of(sampled.clone()), Want::Best { k: 20, touched: vec![] });
        // The whole vocabulary: drawn on the device, unless something needs the row on the host.
        let draw = Want::Draw { temperature: 0.7, min_p: 0.0, u: 0.0 };
        assert_eq!(want_of(SamplingParams { top_k: 0, ..sampled.clone() }), draw);
        assert_eq!(want_of(SamplingParams { top_k: 1000, ..sampled.clone() }), draw, "top_k of the whole vocabulary");
        assert_eq!(want_of(SamplingParams { top_k: 0, min_p: 0.1, ..sampled.clone() }), Want::Draw { temperature: 0.7, min_p: 0.1, u: 0.0 });
        for (what, p) in [
            ("top-p", SamplingParams { top_k: 0, top_p: 0.9, ..sampled.clone() }),
            ("a penalty", SamplingParams { top_k: 0, repetition_penalty: 1.1, ..sampled.clone() }),
            ("a bias", SamplingParams { top_k: 0, logit_bias: vec![(3, 1.0)], ..sampled.clone() }),
            ("EOS suppressed", SamplingParams { top_k: 0, min_tokens: 10, ..sampled.clone() }),
        ] {
            assert_eq!(want_of(p), Want::Whole, "{what}");
        }
        let mut drafting = sequence(SamplingParams { top_k: 0, ..sampled.clone() }, prompt.clone(), &[7]);
        drafting.draft = vec![11];
        assert_eq!(want(&drafting, 1, &eos, 1000), Want::Whole, "a draft's rows are drawn on the host");
        assert_eq!(want_of(SamplingParams { logprobs: Some(0), ..sampled.clone() }), Want::Whole);
        assert_eq!(want_of(SamplingParams { format: OutputFormat::JsonObject, ..sampled.clone() }), Want::Whole);
        // Repetition: prompt and output ids (in the vocabulary); presence: the output's.
        let rep = SamplingParams { repetition_penalty: 1.1, logit_bias: vec![(40, 1.0)], ..sampled.clone() };
        assert_eq!(want_of(rep), Want::Best { k: 26, touched: vec![1, 3, 5, 6, 7, 40] });
        let presence = SamplingParams { presence_penalty: 0.5, ..SamplingParams::default() };
        assert_eq!(want_of(presence.clone()), Want::Best { k: 3, touched: vec![3, 7] });
        // A draft's tokens count as output for the rows after them.
        let mut seq = sequence(presence, prompt.clone(), &[7, 7, 3]);
        seq.draft = vec![11, 12, 13];
        assert_eq!(want(&seq, 2, &eos, 1000), Want::Best { k: 5, touched: vec![3, 7, 11, 12] });
        // Too many touched ids: the row whole.
        let long: Vec<u32> = (0..5000).collect();
        let many = SamplingParams { repetition_penalty: 1.1, ..sampled };
        assert_eq!(want(&sequence(many, long, &[]), 0, &eos, 10_000), Want::Whole);
    }
}
