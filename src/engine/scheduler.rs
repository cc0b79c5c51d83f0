//! Decides, each step, which sequences run and on how many tokens.
//!
//! Scheduling is by tokens, not phases: a step has a budget of `max_num_batched_tokens`
//! shared by decodes (1 token each) and prefill chunks, so a long prompt is spread over
//! several steps instead of stalling everyone (chunked prefill). Running sequences go first,
//! in admission order; then waiting ones are admitted first-come first-served. When blocks
//! run out, the most recently admitted running sequence is preempted: its blocks are freed
//! and it goes back to the front of the queue to be recomputed later.
//!
//! The scheduler sees block ids and token counts, never tensors.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use super::block_manager::BlockManager;
use super::sequence::Sequence;

#[derive(Debug, Clone, Copy)]
pub struct SchedulerConfig {
    pub max_num_batched_tokens: usize,
    pub max_num_seqs: usize,
}

/// One scheduled sequence: an index into `Scheduler::running` and its new tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduledSeq {
    pub running_index: usize,
    /// Tokens computed this step, draft tokens included.
    pub num_new_tokens: usize,
    /// The last `num_draft_tokens` of them are the sequence's draft (speculative decoding).
    pub num_draft_tokens: usize,
}

#[derive(Debug, Default)]
pub struct SchedulerOutput {
    pub seqs: Vec<ScheduledSeq>,
    pub num_preempted: usize,
}

impl SchedulerOutput {
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    pub fn num_scheduled_tokens(&self) -> usize {
        self.seqs.iter().map(|s| s.num_new_tokens).sum()
    }
}

pub struct Scheduler {
    pub config: SchedulerConfig,
    pub block_manager: BlockManager,
    pub waiting: VecDeque<Sequence>,
    /// In admission order: the last one is the first to be preempted.
    pub running: Vec<Sequence>,
    pub num_preemptions_total: usize,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig, block_manager: BlockManager) -> Self {
        Self { config, block_manager, waiting: VecDeque::new(), running: vec![], num_preemptions_total: 0 }
    }

    pub fn has_work(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty()
    }

    /// Frees the newest running sequence's blocks and requeues it at the front.
    fn preempt_newest(&mut self) {
        let mut victim = self.running.pop().expect("caller checked");
        self.block_manager.free(&victim.block_table);
        victim.reset_for_recompute();
        self.waiting.push_front(victim);
        self.num_preemptions_total += 1;
    }

    /// The first waiting sequence's prompt length and the step's budget kept for it while running
    /// prompts longer than that are computed: a short prompt that arrives during a long one's
    /// prefill starts now, not once that prefill is done (minutes on a CPU for a long prompt).
    /// Up to half the budget; nothing when that sequence cannot be admitted (equal prompts
    /// arriving together are computed in arrival order).
    fn admission_reserve(&self, budget: usize) -> (usize, usize) {
        match self.waiting.front() {
            Some(next) if next.is_ready() && self.running.len() < self.config.max_num_seqs => {
                let len = next.num_uncomputed_tokens();
                (len, len.min(budget / 2))
            }
            _ => (usize::MAX, 0),
        }
    }

    pub fn schedule(&mut self) -> SchedulerOutput {
        let mut out = SchedulerOutput::default();
        let mut budget = self.config.max_num_batched_tokens;
        let (waiting_len, reserve) = self.admission_reserve(budget);
        // A prefill chunk leaves a token for each decode after it (and the reserve, where its
        // prompt is the longer): a sequence admitted after a long prompt keeps decoding while
        // that prompt is computed.
        let mut decodes_after = self.running.iter().filter(|s| s.num_uncomputed_tokens() == 1).count();
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let uncomputed = self.running[i].num_uncomputed_tokens();
            let held = if uncomputed == 1 {
                decodes_after = decodes_after.saturating_sub(1);
                0
            } else {
                decodes_after + if uncomputed > waiting_len { reserve } else { 0 }
            };
            let num_new = uncomputed.min(budget.saturating_sub(held));
            if num_new == 0 {
                i += 1;
                continue;
            }
            let target = self.running[i].num_computed_tokens + num_new;
            let ok = loop {
                let seq = &mut self.running[i];
                if self.block_manager.allocate(&mut seq.block_table, target) {
                    break true;
                }
                // Out of blocks: preempt from the back. If this sequence is itself the newest,
                // it is the one to go.
                let is_last = i + 1 == self.running.len();
                self.preempt_newest();
                out.num_preempted += 1;
                if is_last {
                    break false;
                }
            };
            if !ok {
                break;
            }
            out.seqs.push(ScheduledSeq { running_index: i, num_new_tokens: num_new, num_draft_tokens: 0 });
            budget -= num_new;
            i += 1;
        }
        // Admit waiting sequences only when nothing was preempted this step: the freed blocks
        // belong to the preempted, who are first in line.
        while out.num_preempted == 0 && budget > 0 && self.running.len() < self.config.max_num_seqs {
            let Some(seq) = self.waiting.front_mut() else { break };
            if !seq.is_ready() {
                break;
            }
            if seq.block_table.is_empty() && seq.num_computed_tokens == 0 && seq.params.prompt_logprobs.is_none() {
                let (blocks, num_cached) = self.block_manager.acquire_cached_prefix(&seq.tokens);
                seq.block_table = blocks;
                seq.num_computed_tokens = num_cached;
                if seq.num_preemptions == 0 {
                    seq.num_cached_tokens = num_cached;
                    if let Some(report) = &seq.report_cached {
                        report.store(num_cached, Ordering::Release);
                    }
                }
            }
            let num_new = seq.num_uncomputed_tokens().min(budget);
            let target = seq.num_computed_tokens + num_new;
            if !self.block_manager.allocate(&mut seq.block_table, target) {
                // Give the prefix references back; the sequence stays first in line.
                self.block_manager.free(&seq.block_table);
                seq.block_table.clear();
                seq.num_computed_tokens = 0;
                break;
            }
            let seq = self.waiting.pop_front().expect("front exists");
            self.running.push(seq);
            out.seqs.push(ScheduledSeq { running_index: self.running.len() - 1, num_new_tokens: num_new, num_draft_tokens: 0 });
            budget -= num_new;
        }
        // Blocks a preemption freed belong to the preempted sequences, as for admissions.
        if out.num_preempted == 0 {
            self.add_drafts(&mut out, budget);
        } else {
            self.running.iter_mut().for_each(|seq| seq.draft.clear());
        }
        out
    }

    /// Speculative decoding's draft tokens, last, in what the step has left of its budget and
    /// of the free blocks that hold no cached prefix: a draft never displaces a known token,
    /// delays an admission, evicts a cached prefix or preempts anyone (its blocks go back in
    /// [`Self::mark_draft_kept`]). A draft follows all of its sequence's known tokens or is dropped.
    fn add_drafts(&mut self, out: &mut SchedulerOutput, mut budget: usize) {
        let block_size = self.block_manager.block_size();
        for s in out.seqs.iter_mut() {
            let seq = &mut self.running[s.running_index];
            let known_end = seq.num_computed_tokens + s.num_new_tokens;
            let slots = (seq.block_table.len() + self.block_manager.num_free_uncached_blocks()) * block_size;
            let room = if known_end == seq.num_tokens() { budget.min(slots.saturating_sub(known_end)) } else { 0 };
            seq.draft.truncate(room);
            if seq.draft.is_empty() || !self.block_manager.allocate(&mut seq.block_table, known_end + seq.draft.len()) {
                seq.draft.clear();
                continue;
            }
            s.num_draft_tokens = seq.draft.len();
            s.num_new_tokens += s.num_draft_tokens;
            budget -= s.num_draft_tokens;
        }
    }

    /// Records that the scheduled tokens are now in the cache, and registers full blocks
    /// for prefix sharing. Draft tokens are not counted: the engine counts those the model
    /// kept as it appends them ([`Self::mark_draft_kept`]).
    pub fn mark_computed(&mut self, out: &SchedulerOutput) {
        for s in &out.seqs {
            let seq = &mut self.running[s.running_index];
            seq.num_computed_tokens += s.num_new_tokens - s.num_draft_tokens;
            self.block_manager.cache_blocks(&seq.block_table, &seq.tokens, seq.num_computed_tokens);
            seq.mark_prompt_computed();
        }
    }

    /// Records that the sequence at `index` kept `num_kept` tokens of its draft, now appended
    /// to its tokens and already in the cache from this step, and registers the blocks they
    /// fill for prefix sharing. Blocks past its tokens (taken for rejected draft tokens, never
    /// registered) go back to the pool.
    pub fn mark_draft_kept(&mut self, index: usize, num_kept: usize) {
        let seq = &mut self.running[index];
        seq.draft.clear();
        if num_kept > 0 {
            seq.num_computed_tokens += num_kept;
            self.block_manager.cache_blocks(&seq.block_table, &seq.tokens, seq.num_computed_tokens);
        }
        let needed = seq.num_tokens().div_ceil(self.block_manager.block_size());
        if seq.block_table.len() > needed {
            let rejected = seq.block_table.split_off(needed);
            self.block_manager.free(&rejected);
        }
    }

    /// Removes the running sequences at `indices` (any order) and frees their blocks.
    pub fn finish(&mut self, indices: &mut Vec<usize>) {
        indices.sort_unstable();
        indices.dedup();
        for &i in indices.iter().rev() {
            let seq = self.running.remove(i);
            self.block_manager.free(&seq.block_table);
        }
        indices.clear();
    }

    /// Ends every waiting and running sequence ([`Sequence::abort`]), freeing its blocks;
    /// returns how many there were.
    pub fn abort_all(&mut self) -> usize {
        let n = self.waiting.len() + self.running.len();
        for seq in self.waiting.drain(..).chain(self.running.drain(..)) {
            seq.abort();
            self.block_manager.free(&seq.block_table);
        }
        n
    }

    /// Drops every waiting or running sequence whose client has gone, freeing its blocks.
    pub fn remove_abandoned(&mut self) -> usize {
        let before = self.waiting.len() + self.running.len();
        let bm = &mut self.block_manager;
        self.running.retain(|s| {
            if s.is_abandoned() {
                bm.free(&s.block_table);
                false
            } else {
                true
            }
        });
        self.waiting.retain(|s| {
            if s.is_abandoned() {
                bm.free(&s.block_table);
                false
            } else {
                true
            }
        });
        before - self.waiting.len() - self.running.len()
    }
}

#[cfg(test)]
mod tests;
