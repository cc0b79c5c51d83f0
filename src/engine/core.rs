//! The engine thread: owns the scheduler, the model runner and every sequence.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use qwen_serve_models::{CausalLm, KvCache};
use rayon::prelude::*;

use super::block_manager::BlockManager;
use super::constraint::{OutputFormat, Vocab};
use super::outbox::{Delivery, EventTx};
use super::request::Event;
use super::runner::{ModelRunner, Next, StepLogits};
use super::sampler::{logprobs_of, Allowed, Sampled};
use super::scheduler::{Scheduler, SchedulerConfig, SchedulerOutput};
use super::sequence::Sequence;
use super::speculative::SpeculativeConfig;
use super::{Command, EngineConfig, Shared};
use crate::tokenizer::Tokenizer;

pub(super) struct EngineCore {
    scheduler: Scheduler,
    runner: ModelRunner,
    tokenizer: Arc<Tokenizer>,
    eos_token_ids: Vec<u32>,
    shared: Arc<Shared>,
    /// The vocabulary as bytes for JSON output, made when its first request comes.
    vocab: Option<Vocab>,
    prefix_caching: bool,
    speculative: Option<SpeculativeConfig>,
    /// CPU model: run each step on a thread of the rayon pool (see `run`).
    step_in_pool: bool,
    next_seq_id: u64,
    num_prompt_tokens_computed: usize,
    num_generated_tokens: usize,
    num_draft_tokens: usize,
    num_accepted_draft_tokens: usize,
    num_steps: usize,
    step_seconds: f64,
    /// Sequences' events, delivered off this thread once per step.
    delivery: Delivery,
}

impl EngineCore {
    pub(super) fn new(
        model: Box<dyn CausalLm>,
        cache: KvCache,
        config: &EngineConfig,
        tokenizer: Arc<Tokenizer>,
        eos_token_ids: Vec<u32>,
        shared: Arc<Shared>,
    ) -> Self {
        let bm = BlockManager::new(cache.num_blocks(), cache.block_size(), config.enable_prefix_caching);
        let scheduler = Scheduler::new(
            SchedulerConfig { max_num_batched_tokens: config.max_num_batched_tokens, max_num_seqs: config.max_num_seqs },
            bm,
        );
        let step_in_pool = model.device().is_cpu();
        Self {
            scheduler,
            step_in_pool,
            runner: ModelRunner::new(model, cache, config.sample_on_device),
            tokenizer,
            eos_token_ids,
            shared,
            vocab: None,
            prefix_caching: config.enable_prefix_caching,
            speculative: config.speculative,
            next_seq_id: 0,
            num_prompt_tokens_computed: 0,
            num_generated_tokens: 0,
            num_draft_tokens: 0,
            num_accepted_draft_tokens: 0,
            num_steps: 0,
            step_seconds: 0.0,
            delivery: Delivery::new(),
        }
    }

    pub(super) fn run(&mut self, rx: mpsc::Receiver<Command>) {
        // Made here, before any request waits on it: each id's bytes, for streaming.
        let _ = self.tokenizer.byte_pieces();
        let mut shutting_down = false;
        loop {
            if !self.scheduler.has_work() {
                if shutting_down {
                    break;
                }
                match rx.recv() {
                    Ok(cmd) => shutting_down |= self.handle(cmd),
                    Err(_) => break,
                }
            }
            while let Ok(cmd) = rx.try_recv() {
                shutting_down |= self.handle(cmd);
            }
            if self.step_in_pool {
                // From outside the pool every parallel op of the forward (a few hundred per
                // step) hands its work to the pool and sleeps until it is done; on a pool
                // thread the step's ops split their work between running threads instead.
                rayon::scope(|_| self.step());
            } else {
                self.step();
            }
            // Every event of the step (tokens, finishes, aborts of abandoned or rejected
            // sequences) goes out together.
            self.delivery.flush();
            self.publish_stats();
        }
        self.publish_stats();
    }

    /// Returns true for a shutdown command.
    fn handle(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Shutdown => true,
            Command::AbortAll => {
                let n = self.scheduler.abort_all();
                self.delivery.flush();
                tracing::warn!("aborted {n} sequences");
                false
            }
            Command::Submit { request_id, request, events, cached } => {
                self.shared.num_pending.fetch_sub(1, Ordering::AcqRel);
                let params = Arc::new(request.params);
                if params.format != OutputFormat::Text && self.vocab.is_none() {
                    let start = std::time::Instant::now();
                    self.vocab = Some(Vocab::new(&self.tokenizer));
                    tracing::info!("JSON mode: vocabulary as bytes in {:.0} ms", start.elapsed().as_secs_f64() * 1e3);
                }
                let n = params.n.max(1);
                let prompt_computed = (n > 1).then(|| Arc::new(AtomicBool::new(false)));
                for index in 0..n {
                    let tx = EventTx::queued(events.clone(), self.delivery.outbox());
                    let mut seq = Sequence::new(self.next_seq_id, request_id, index, request.prompt.clone(), params.clone(), tx);
                    self.next_seq_id += 1;
                    // Siblings take the first choice's prompt blocks from the prefix cache.
                    if index == 0 {
                        seq.prompt_computed = prompt_computed.clone();
                        seq.report_cached = Some(cached.clone());
                    } else if self.prefix_caching {
                        seq.wait_for_prompt = prompt_computed.clone();
                    }
                    self.scheduler.waiting.push_back(seq);
                }
                false
            }
        }
    }

    fn step(&mut self) {
        let start = std::time::Instant::now();
        self.scheduler.remove_abandoned();
        if let Some(spec) = &self.speculative {
            let eos = &self.eos_token_ids;
            self.scheduler.running.par_iter_mut().for_each(|seq| seq.draft = spec.draft(seq, eos));
        }
        let out = self.scheduler.schedule();
        if out.is_empty() {
            return;
        }
        match self.runner.execute(&out, &mut self.scheduler.running, &self.eos_token_ids) {
            Ok(logits) => self.update(&out, logits),
            Err(e) => {
                // A failed forward leaves the cache state unknown for these sequences: end them.
                tracing::error!("forward failed, aborting {} sequences: {e}", out.seqs.len());
                let mut done: Vec<usize> = out.seqs.iter().map(|s| s.running_index).collect();
                for &i in &done {
                    self.scheduler.running[i].abort();
                }
                self.scheduler.finish(&mut done);
            }
        }
        self.num_steps += 1;
        self.step_seconds += start.elapsed().as_secs_f64();
    }

    fn update(&mut self, out: &SchedulerOutput, mut logits: StepLogits) {
        for s in &out.seqs {
            let seq = &self.scheduler.running[s.running_index];
            let prompt_part = seq.num_prompt_tokens.saturating_sub(seq.num_computed_tokens).min(s.num_new_tokens);
            self.num_prompt_tokens_computed += prompt_part;
        }
        let mut finished = vec![];
        for (k, s) in out.seqs.iter().enumerate() {
            let seq = &mut self.scheduler.running[s.running_index];
            if !logits.prompt[k].is_empty() {
                record_prompt_logprobs(seq, &logits.prompt[k], s.num_new_tokens);
            }
        }
        self.scheduler.mark_computed(out);
        for (k, s) in out.seqs.iter().enumerate() {
            if let Some(values) = logits.pooled[k].take() {
                self.scheduler.running[s.running_index].finish_pooled(values);
                finished.push(s.running_index);
            }
        }
        // Sampling may read a whole vocabulary row per sequence (150k logits for Qwen); each
        // sequence has its own sampler and RNG, so they run in parallel with the same results.
        let mut rows: Vec<Option<(&Next, &[Next])>> = vec![None; self.scheduler.running.len()];
        for (k, s) in out.seqs.iter().enumerate() {
            rows[s.running_index] = logits.next[k].as_ref().map(|next| (next, &logits.after_draft[k][..]));
        }
        let eos = &self.eos_token_ids;
        let vocab = self.vocab.as_ref();
        // Per sequence: its next token, then one more after each draft token it equals (each
        // drawn as plain decoding would draw it, from its own row and RNG, in order).
        let mut sampled: Vec<Option<(Sampled, Vec<Sampled>)>> = self
            .scheduler
            .running
            .par_iter_mut()
            .zip(rows)
            .map(|(seq, rows)| {
                let (next, after_draft) = rows?;
                let first = sample_next(seq, next, eos, vocab)?;
                let mut more = Vec::with_capacity(after_draft.len());
                let num_tokens = seq.num_tokens();
                let mut last = first.token;
                for (i, row) in after_draft.iter().enumerate() {
                    if last != seq.draft[i] {
                        break;
                    }
                    // The kept token joins the output for this row's penalties (then leaves:
                    // `append` adds it below).
                    seq.tokens.push(last);
                    let next = sample_next(seq, row, eos, vocab).expect("a sequence with a draft has no output constraint");
                    last = next.token;
                    more.push(next);
                }
                seq.tokens.truncate(num_tokens);
                Some((first, more))
            })
            .collect();
        for (k, s) in out.seqs.iter().enumerate() {
            if logits.next[k].is_none() {
                continue;
            }
            let seq = &mut self.scheduler.running[s.running_index];
            let sampled = sampled[s.running_index].take();
            // EOS and special tokens add no bytes.
            let continues = match (&sampled, seq.constraint.as_mut(), &self.vocab) {
                (Some((sampled, _)), Some(constraint), Some(vocab)) => constraint.advance(vocab.token(sampled.token)),
                (sampled, _, _) => sampled.is_some(),
            };
            let Some((sampled, more)) = sampled.filter(|_| continues) else {
                tracing::warn!("sequence {}: no token continues its constrained output; ending it", seq.id);
                if let Err(e) = seq.finish_at_dead_end(&self.tokenizer) {
                    tracing::error!("detokenization failed: {e}");
                    seq.abort();
                }
                finished.push(s.running_index);
                continue;
            };
            // With a draft: one token more for each draft token the drawn ones equal; each of
            // those draft tokens is already in the cache.
            let kept = more.len();
            self.num_draft_tokens += s.num_draft_tokens;
            if let Some(spec) = &self.speculative {
                seq.draft_pace.record(s.num_draft_tokens, kept, spec.num_speculative_tokens);
            }
            let mut num_appended = 0;
            for sampled in std::iter::once(sampled).chain(more) {
                self.num_generated_tokens += 1;
                num_appended += 1;
                match seq.append(sampled, &self.tokenizer, &self.eos_token_ids) {
                    Ok(None) => {}
                    Ok(Some(_)) => {
                        finished.push(s.running_index);
                        break;
                    }
                    Err(e) => {
                        tracing::error!("detokenization failed: {e}");
                        seq.abort();
                        finished.push(s.running_index);
                        break;
                    }
                }
            }
            // The first `kept` tokens appended were draft tokens: their KV came with this step.
            let num_kept = num_appended.min(kept);
            self.num_accepted_draft_tokens += num_kept;
            self.scheduler.mark_draft_kept(s.running_index, num_kept);
        }
        self.scheduler.finish(&mut finished);
    }

    fn publish_stats(&self) {
        let bm = &self.scheduler.block_manager;
        let mut stats = self.shared.stats.lock().expect("stats lock");
        stats.num_running = self.scheduler.running.len();
        stats.num_waiting = self.scheduler.waiting.len();
        stats.num_blocks = bm.num_blocks();
        stats.num_free_blocks = bm.num_free_blocks();
        stats.kv_cache_usage = bm.usage();
        stats.num_preemptions = self.scheduler.num_preemptions_total;
        stats.num_prefix_cache_hit_tokens = bm.num_cached_prefix_tokens_served();
        stats.num_prompt_tokens_computed = self.num_prompt_tokens_computed;
        stats.num_generated_tokens = self.num_generated_tokens;
        stats.num_draft_tokens = self.num_draft_tokens;
        stats.num_accepted_draft_tokens = self.num_accepted_draft_tokens;
        stats.num_steps = self.num_steps;
        stats.forward_seconds = self.runner.forward_seconds;
        stats.logits_seconds = self.runner.logits_seconds;
        stats.step_seconds = self.step_seconds;
    }
}

/// `seq`'s next token from `row` (a token already chosen on the device, or drawn by its sampler
/// from candidates or the whole row, under its output constraint if any); `None` where the
/// constraint allows no token at all.
fn sample_next(seq: &mut Sequence, row: &Next, eos: &[u32], vocab: Option<&Vocab>) -> Option<Sampled> {
    let params = seq.params.clone();
    let (prompt, output) = seq.tokens.split_at(seq.num_prompt_tokens);
    let row = match row {
        Next::Token(token) => return Some(Sampled { token: *token, logprobs: None }),
        Next::Candidates(candidates) => {
            let suppressed = seq.suppressed(eos);
            return Some(seq.sampler.sample_candidates(candidates, &params, prompt, output, &suppressed));
        }
        Next::Logits(row) => row,
    };
    let (Some(constraint), Some(vocab)) = (seq.constraint.as_ref(), vocab) else {
        let suppressed = seq.suppressed(eos);
        return Some(seq.sampler.sample(row, &params, prompt, output, &suppressed));
    };
    // JSON output: the tokens that continue the object; once it is closed, EOS alone
    // (even before `min_tokens`).
    let bits = constraint.allowed(vocab);
    let (also, suppressed): (&[u32], _) = if constraint.is_complete() { (eos, vec![]) } else { (&[], seq.suppressed(eos)) };
    // No token continues the output (a schema nested past the parser's limit):
    // nothing is drawn, and the sequence ends below.
    if also.is_empty() && bits.iter().all(|&w| w == 0) {
        return None;
    }
    Some(seq.sampler.sample_allowed(row, &params, prompt, output, &suppressed, Some(Allowed { bits: &bits, also })))
}

/// Collects logprobs of the prompt tokens this chunk predicts; sends them once the whole
/// prompt is covered. Row `i` of `rows` is the output at new token `i`, predicting the next.
fn record_prompt_logprobs(seq: &mut Sequence, rows: &[Vec<f32>], num_new: usize) {
    let k = seq.params.prompt_logprobs.unwrap_or(0);
    let start = seq.num_computed_tokens;
    let acc = seq.prompt_logprobs.get_or_insert_with(|| vec![None]);
    // Each row is a log-softmax over the vocabulary: a long prompt's rows in parallel.
    let wanted: Vec<(usize, &Vec<f32>)> = rows
        .iter()
        .enumerate()
        .take(num_new)
        .map(|(i, row)| (start + i + 1, row))
        .filter(|&(target, _)| target < seq.num_prompt_tokens && target >= acc.len())
        .collect();
    let tokens = &seq.tokens;
    let computed: Vec<(usize, _)> = wanted.into_par_iter().map(|(target, row)| (target, logprobs_of(row, tokens[target], k))).collect();
    for (target, logprobs) in computed {
        if acc.len() == target {
            acc.push(Some(logprobs));
        }
    }
    if acc.len() == seq.num_prompt_tokens && !seq.prompt_logprobs_sent {
        seq.prompt_logprobs_sent = true;
        let all = acc.clone();
        seq.send(Event::PromptLogprobs(all));
    }
}
