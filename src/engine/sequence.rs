//! One generation stream: its tokens, how many of them the KV cache holds, its blocks, and
//! the per-sequence state that turns sampled tokens into text (sampler RNG, detokenizer,
//! stop-string matcher).
//!
//! Invariant: `num_computed_tokens <= tokens.len()`; the first `num_computed_tokens` tokens
//! have their K/V in the slots named by `block_table`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use super::block_manager::BlockId;
use super::constraint::Constraint;
use super::outbox::EventTx;
use super::request::{Event, FinishReason, RequestId, StopReason, Usage};
use super::sampler::{Sampled, Sampler, SamplingParams};
use super::stop::{StopMatcher, StopStatus};
use crate::tokenizer::{IncrementalDecoder, Tokenizer, TokenizerError};

pub type SeqId = u64;

pub struct Sequence {
    pub id: SeqId,
    pub request_id: RequestId,
    /// Choice index within the request (`n > 1`).
    pub index: usize,
    /// Prompt followed by the generated tokens.
    pub tokens: Vec<u32>,
    pub num_prompt_tokens: usize,
    pub num_computed_tokens: usize,
    /// Prompt tokens served from the prefix cache at first admission (for usage).
    pub num_cached_tokens: usize,
    /// Where `num_cached_tokens` is told to the request's stream (the first choice's), so it
    /// is known before the usage at the end (`RequestStream::num_cached_tokens`).
    pub report_cached: Option<Arc<AtomicUsize>>,
    pub block_table: Vec<BlockId>,
    pub params: Arc<SamplingParams>,
    pub sampler: Sampler,
    decoder: IncrementalDecoder,
    stop: StopMatcher,
    events: EventTx,
    /// Siblings of an `n > 1` request wait until the first choice has computed the prompt, so
    /// they take its full blocks from the prefix cache instead of recomputing them.
    pub wait_for_prompt: Option<Arc<AtomicBool>>,
    /// Set once this sequence's prompt is in the cache (siblings wait on it).
    pub prompt_computed: Option<Arc<AtomicBool>>,
    /// Whether this sequence was ever preempted (recomputed), for statistics.
    pub num_preemptions: usize,
    /// Prompt logprobs gathered chunk by chunk (`prompt_logprobs` requests).
    pub prompt_logprobs: Option<Vec<Option<super::sampler::Logprobs>>>,
    pub prompt_logprobs_sent: bool,
    /// A JSON `response_format`: where the output's parse stands.
    pub constraint: Option<Constraint>,
    /// Draft tokens to check after the last token this step (speculative decoding): guesses,
    /// not part of `tokens` until the model agrees.
    pub draft: Vec<u32>,
    pub draft_pace: super::speculative::DraftPace,
    /// The prompt's distinct ids, sorted: made on first use (see [`Self::distinct_prompt_ids`]).
    distinct_prompt_ids: std::sync::OnceLock<Vec<u32>>,
}

impl Sequence {
    pub fn new(
        id: SeqId,
        request_id: RequestId,
        index: usize,
        prompt: Vec<u32>,
        params: Arc<SamplingParams>,
        events: impl Into<EventTx>,
    ) -> Self {
        let seed = params.seed.map(|s| s.wrapping_add(index as u64));
        let constraint = if params.think_first { params.format.start_after_thinking() } else { params.format.start() };
        Self {
            id,
            request_id,
            index,
            num_prompt_tokens: prompt.len(),
            tokens: prompt,
            num_computed_tokens: 0,
            num_cached_tokens: 0,
            report_cached: None,
            block_table: vec![],
            sampler: Sampler::new(seed),
            decoder: IncrementalDecoder::new(params.skip_special_tokens),
            stop: StopMatcher::new(&params.stop, params.include_stop_str),
            params,
            events: events.into(),
            wait_for_prompt: None,
            prompt_computed: None,
            num_preemptions: 0,
            prompt_logprobs: None,
            prompt_logprobs_sent: false,
            constraint,
            draft: vec![],
            draft_pace: Default::default(),
            distinct_prompt_ids: Default::default(),
        }
    }

    /// The prompt's distinct token ids, sorted; computed once (a GPU step asks for them every
    /// step of a sequence with a repetition penalty).
    pub fn distinct_prompt_ids(&self) -> &[u32] {
        self.distinct_prompt_ids.get_or_init(|| {
            let mut ids = self.tokens[..self.num_prompt_tokens].to_vec();
            ids.sort_unstable();
            ids.dedup();
            ids
        })
    }

    pub fn num_tokens(&self) -> usize {
        self.tokens.len()
    }

    pub fn output(&self) -> &[u32] {
        &self.tokens[self.num_prompt_tokens..]
    }

    pub fn num_output_tokens(&self) -> usize {
        self.tokens.len() - self.num_prompt_tokens
    }

    /// Tokens known but not yet in the cache.
    pub fn num_uncomputed_tokens(&self) -> usize {
        self.tokens.len() - self.num_computed_tokens
    }

    /// The client dropped its stream.
    pub fn is_abandoned(&self) -> bool {
        self.events.is_closed()
    }

    /// May this waiting sequence be admitted yet?
    pub fn is_ready(&self) -> bool {
        self.wait_for_prompt.as_ref().is_none_or(|f| f.load(Ordering::Acquire))
    }

    pub fn mark_prompt_computed(&self) {
        if let Some(flag) = &self.prompt_computed {
            if self.num_computed_tokens >= self.num_prompt_tokens {
                flag.store(true, Ordering::Release);
            }
        }
    }

    /// Token ids that must not be sampled now: EOS and stop ids before `min_tokens`.
    pub fn suppressed(&self, eos_token_ids: &[u32]) -> Vec<u32> {
        if self.num_output_tokens() >= self.params.min_tokens {
            return vec![];
        }
        let mut ids = self.params.stop_token_ids.clone();
        if !self.params.ignore_eos {
            ids.extend_from_slice(eos_token_ids);
        }
        ids
    }

    /// Whether the last token's text may complete a stop string: as vLLM, not while the output
    /// (that token included) is at most `min_tokens` long, so a stop string, like a stop token
    /// id (see [`Self::suppressed`]), can end the output no earlier than its `min_tokens + 1`th token.
    fn may_stop_on_string(&self) -> bool {
        self.num_output_tokens() > self.params.min_tokens
    }

    pub fn send(&self, event: Event) -> bool {
        self.events.send(event)
    }

    fn usage(&self) -> Usage {
        Usage {
            num_prompt_tokens: self.num_prompt_tokens,
            num_output_tokens: self.num_output_tokens(),
            num_cached_tokens: self.num_cached_tokens,
        }
    }

    /// Appends a sampled token, emits its text, and says whether the sequence is finished.
    /// Returns `Err` only if the tokenizer fails; a closed stream shows as `Abort`.
    pub fn append(&mut self, sampled: Sampled, tokenizer: &Tokenizer, eos_token_ids: &[u32]) -> Result<Option<FinishReason>, TokenizerError> {
        let token = sampled.token;
        self.tokens.push(token);
        let mut stop_reason = None;
        let mut text = String::new();
        if !self.params.ignore_eos && eos_token_ids.contains(&token) {
            stop_reason = Some(StopReason::Eos(token));
        } else if self.params.stop_token_ids.contains(&token) {
            stop_reason = Some(StopReason::TokenId(token));
        } else {
            let delta = self.decoder.push(tokenizer, token)?;
            let (emit, status) = self.stop.push_checked(&delta, self.may_stop_on_string());
            text = emit;
            if let StopStatus::Stopped = status {
                stop_reason = Some(StopReason::String(self.stop.matched().unwrap_or_default().to_string()));
            }
        }
        if !self.send(Event::Token { index: self.index, token, text, logprobs: sampled.logprobs }) {
            return Ok(Some(FinishReason::Abort));
        }
        let reason = match stop_reason {
            Some(_) => FinishReason::Stop,
            None if self.num_output_tokens() >= self.params.max_tokens => FinishReason::Length,
            None => return Ok(None),
        };
        // Release what the detokenizer and the stop matcher held back, unless a stop cut it.
        let rest = if stop_reason.is_none() {
            let tail = self.decoder.finish(tokenizer)?;
            let (mut emit, _) = self.stop.push_checked(&tail, self.may_stop_on_string());
            emit.push_str(&self.stop.flush());
            emit
        } else {
            String::new()
        };
        self.send(Event::Finished { index: self.index, reason, stop_reason, text: rest, usage: self.usage() });
        Ok(Some(reason))
    }

    /// Ends a pooling sequence (an embedding or a score), its prompt computed: its result (the
    /// last token's hidden state, or its scored tokens' logits), then the finish.
    pub fn finish_pooled(&self, values: Vec<f32>) {
        self.send(Event::Pooled { index: self.index, values });
        self.send(Event::Finished { index: self.index, reason: FinishReason::Stop, stop_reason: None, text: String::new(), usage: self.usage() });
    }

    /// Ends the sequence where its output constraint allows no token at all: as at
    /// `max_tokens`, with what it has written, the start of a valid object. A guard: the
    /// parsers start no value they could not finish, so no test reaches it.
    pub fn finish_at_dead_end(&mut self, tokenizer: &Tokenizer) -> Result<(), TokenizerError> {
        let tail = self.decoder.finish(tokenizer)?;
        let (mut text, _) = self.stop.push(&tail);
        text.push_str(&self.stop.flush());
        self.send(Event::Finished { index: self.index, reason: FinishReason::Length, stop_reason: None, text, usage: self.usage() });
        Ok(())
    }

    /// Ends the sequence without a normal finish (client gone, shutdown).
    pub fn abort(&self) {
        // Siblings waiting on this prompt must not wait forever.
        if let Some(flag) = &self.prompt_computed {
            flag.store(true, Ordering::Release);
        }
        self.send(Event::Finished { index: self.index, reason: FinishReason::Abort, stop_reason: None, text: String::new(), usage: self.usage() });
    }

    /// Forgets the cache state so the sequence is recomputed from its tokens later.
    pub fn reset_for_recompute(&mut self) {
        self.num_computed_tokens = 0;
        self.block_table.clear();
        self.draft.clear();
        self.num_preemptions += 1;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tokio::sync::mpsc::unbounded_channel;

    /// A byte-level BPE tokenizer for decoding only: `vocab` maps byte-level pieces (GPT-2's
    /// byte-to-char alphabet: `Ġ` is a space) to ids; there are no merges.
    pub(crate) fn byte_level_tokenizer(vocab: serde_json::Value) -> Tokenizer {
        let byte_level = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false});
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null, "pre_tokenizer": byte_level, "post_processor": byte_level, "decoder": byte_level,
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
                "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": vocab, "merges": []},
        });
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), json.to_string()).unwrap();
        Tokenizer::from_file(file.path()).unwrap()
    }

    /// Appends `output` until the sequence finishes: (the text, the stop reason, tokens used).
    fn generate(min_tokens: usize, output: &[u32]) -> (String, Option<StopReason>, usize) {
        let tokenizer = byte_level_tokenizer(serde_json::json!({"Hello": 0, "!": 1, "Ġworld": 2}));
        let (tx, mut rx) = unbounded_channel();
        let params = SamplingParams { min_tokens, max_tokens: 16, stop: vec!["!".into()], ..Default::default() };
        let mut seq = Sequence::new(0, 0, 0, vec![0], Arc::new(params), tx);
        for &token in output {
            if seq.append(Sampled { token, logprobs: None }, &tokenizer, &[]).unwrap().is_some() {
                break;
            }
        }
        let (mut text, mut stop) = (String::new(), None);
        while let Ok(event) = rx.try_recv() {
            match event {
                Event::Token { text: t, .. } => text.push_str(&t),
                Event::Finished { text: t, stop_reason, .. } => {
                    text.push_str(&t);
                    stop = stop_reason;
                }
                _ => {}
            }
        }
        (text, stop, seq.num_output_tokens())
    }

    #[test]
    fn min_tokens_holds_back_stop_strings() {
        let output = [0, 1, 2, 1, 2];
        assert_eq!(generate(0, &output), ("Hello".into(), Some(StopReason::String("!".into())), 2));
        // As the stop ids: a stop string may end the output at its `min_tokens + 1`th token.
        assert_eq!(generate(2, &output), ("Hello! world".into(), Some(StopReason::String("!".into())), 4));
        assert_eq!(generate(3, &output), ("Hello! world".into(), Some(StopReason::String("!".into())), 4));
        assert_eq!(generate(4, &output[..4]), ("Hello! world!".into(), None, 4), "the stream ran out, unstopped");
    }
}
