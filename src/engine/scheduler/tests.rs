use std::sync::Arc;

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use super::*;
use crate::engine::request::Event;
use crate::engine::sampler::SamplingParams;

fn scheduler(num_blocks: usize, budget: usize, max_seqs: usize) -> Scheduler {
    Scheduler::new(
        SchedulerConfig { max_num_batched_tokens: budget, max_num_seqs: max_seqs },
        BlockManager::new(num_blocks, 4, true),
    )
}

/// A sequence whose prompt is `len` tokens starting at `first` (distinct prompts share nothing).
fn seq(id: u64, first: u32, len: usize) -> (Sequence, UnboundedReceiver<Event>) {
    let (tx, rx) = unbounded_channel();
    let params = Arc::new(SamplingParams { max_tokens: 100, ..Default::default() });
    (Sequence::new(id, id, 0, (first..first + len as u32).collect(), params, tx), rx)
}

/// Runs one step: schedule, mark computed, and "sample" a token for every sequence whose
/// known tokens are all computed. Returns (seq id, new tokens) per scheduled sequence.
fn step(s: &mut Scheduler) -> Vec<(u64, usize)> {
    let out = s.schedule();
    assert!(out.num_scheduled_tokens() <= s.config.max_num_batched_tokens);
    let scheduled: Vec<(u64, usize)> = out.seqs.iter().map(|x| (s.running[x.running_index].id, x.num_new_tokens)).collect();
    s.mark_computed(&out);
    for x in &out.seqs {
        let seq = &mut s.running[x.running_index];
        if seq.num_uncomputed_tokens() == 0 {
            seq.tokens.push(7);
        }
    }
    scheduled
}

#[test]
fn a_long_prompt_is_chunked_within_the_budget() {
    let mut s = scheduler(100, 16, 8);
    let (a, _ra) = seq(0, 0, 40);
    s.waiting.push_back(a);
    assert_eq!(step(&mut s), vec![(0, 16)]);
    assert_eq!(step(&mut s), vec![(0, 16)]);
    assert_eq!(step(&mut s), vec![(0, 8)]);
    // Prompt done: now one decode token per step.
    assert_eq!(step(&mut s), vec![(0, 1)]);
}

#[test]
fn decodes_go_first_then_prefill_chunks_fill_the_budget() {
    let mut s = scheduler(100, 10, 8);
    let (a, _ra) = seq(0, 0, 5);
    let (b, _rb) = seq(1, 100, 30);
    s.waiting.push_back(a);
    assert_eq!(step(&mut s), vec![(0, 5)]);
    s.waiting.push_back(b);
    // a decodes (1 token), b gets the remaining 9 of the budget.
    assert_eq!(step(&mut s), vec![(0, 1), (1, 9)]);
    assert_eq!(step(&mut s), vec![(0, 1), (1, 9)]);
}

#[test]
fn a_short_prompt_starts_while_a_long_one_is_prefilled() {
    let mut s = scheduler(100, 16, 8);
    let (long, _rl) = seq(0, 0, 100);
    s.waiting.push_back(long);
    assert_eq!(step(&mut s), vec![(0, 16)]);
    let (short, _rs) = seq(1, 1000, 3);
    s.waiting.push_back(short);
    // The long prompt leaves the short one its 3 tokens; then it decodes beside the prefill.
    assert_eq!(step(&mut s), vec![(0, 13), (1, 3)]);
    assert_eq!(step(&mut s), vec![(0, 15), (1, 1)]);
    // A waiting prompt as long as the running one's rest waits its turn; a longer one gets
    // at most half the budget.
    let (equal, _re) = seq(2, 2000, 100 - 16 - 13 - 15);
    s.waiting.push_back(equal);
    assert_eq!(step(&mut s), vec![(0, 15), (1, 1)]);
    let mut s = scheduler(100, 16, 8);
    let (a, _ra) = seq(0, 0, 100);
    let (b, _rb) = seq(1, 1000, 60);
    s.waiting.push_back(a);
    assert_eq!(step(&mut s), vec![(0, 16)]);
    s.waiting.push_back(b);
    assert_eq!(step(&mut s), vec![(0, 8), (1, 8)]);
}

#[test]
fn waiting_sequences_are_admitted_in_arrival_order_up_to_max_seqs() {
    let mut s = scheduler(100, 100, 2);
    let mut rxs = vec![];
    for i in 0..4 {
        let (q, rx) = seq(i, 1000 * i as u32, 3);
        rxs.push(rx);
        s.waiting.push_back(q);
    }
    assert_eq!(step(&mut s), vec![(0, 3), (1, 3)]);
    assert_eq!(s.waiting.iter().map(|q| q.id).collect::<Vec<_>>(), vec![2, 3]);
    let mut done = vec![0];
    s.finish(&mut done);
    assert_eq!(step(&mut s), vec![(1, 1), (2, 3)]);
}

#[test]
fn out_of_blocks_preempts_the_newest_and_requeues_it_first() {
    // 6 blocks of 4 tokens. Two sequences of 8-token prompts take 2 blocks each; growth runs
    // the pool dry and the newer one must go.
    let mut s = scheduler(6, 100, 8);
    let (a, _ra) = seq(0, 0, 8);
    let (b, _rb) = seq(1, 100, 8);
    let (c, _rc) = seq(2, 200, 3);
    s.waiting.extend([a, b]);
    assert_eq!(step(&mut s), vec![(0, 8), (1, 8)]);
    s.waiting.push_back(c);
    // Decode: a and b each need a 3rd block (tokens 9); c needs 1 block: 3 blocks, 2 free.
    let first = step(&mut s);
    assert_eq!(first, vec![(0, 1), (1, 1)]);
    assert_eq!(s.waiting.front().unwrap().id, 2, "c waits, nothing preempted yet");
    // Keep decoding until a and b outgrow the pool: the newest (b) is preempted.
    let mut preempted = false;
    for _ in 0..8 {
        let before = s.num_preemptions_total;
        step(&mut s);
        if s.num_preemptions_total > before {
            preempted = true;
            break;
        }
    }
    assert!(preempted, "growth must force a preemption");
    assert_eq!(s.running.iter().map(|q| q.id).collect::<Vec<_>>(), vec![0]);
    let front = s.waiting.front().unwrap();
    assert_eq!(front.id, 1, "the preempted sequence is first in line");
    assert_eq!((front.num_computed_tokens, front.block_table.len()), (0, 0));
    assert!(front.num_output_tokens() > 0, "it keeps its generated tokens for recomputation");
}

#[test]
fn a_repeated_prompt_starts_from_the_prefix_cache() {
    let mut s = scheduler(50, 100, 8);
    let (a, _ra) = seq(0, 0, 18);
    s.waiting.push_back(a);
    step(&mut s);
    let mut done = vec![0];
    s.finish(&mut done);
    let (b, _rb) = seq(1, 0, 18);
    s.waiting.push_back(b);
    // 18 tokens = 4 full blocks + 2: all 4 full blocks come from cache, 2 tokens are computed.
    assert_eq!(step(&mut s), vec![(1, 2)]);
    assert_eq!(s.running[0].num_cached_tokens, 16);
}

#[test]
fn abandoned_sequences_are_dropped_and_their_blocks_freed() {
    let mut s = scheduler(10, 100, 8);
    let (a, ra) = seq(0, 0, 8);
    s.waiting.push_back(a);
    step(&mut s);
    assert!(s.block_manager.num_free_blocks() < 10);
    drop(ra);
    assert_eq!(s.remove_abandoned(), 1);
    assert!(s.running.is_empty());
    assert_eq!(s.block_manager.num_free_blocks(), 10);
}

/// Drafts take what the step leaves of its budget and free blocks, after every known token
/// and admission; they count as computed only where [`Scheduler::mark_draft_kept`] says the
/// model kept them, and a draft that finds no room is dropped, never preempting anyone.
#[test]
fn drafts_take_what_the_step_leaves_and_count_when_kept() {
    let draft_plan = |out: &SchedulerOutput| -> Vec<(usize, usize, usize)> { out.seqs.iter().map(|x| (x.running_index, x.num_new_tokens, x.num_draft_tokens)).collect() };
    let mut s = scheduler(6, 64, 8);
    let (a, _ra) = seq(0, 0, 4);
    let (b, _rb) = seq(1, 100, 4);
    s.waiting.push_back(a);
    s.waiting.push_back(b);
    assert_eq!(step(&mut s), vec![(0, 4), (1, 4)]);
    // Each decodes one token (two blocks each); a's draft of 9 takes the two free blocks, b's
    // of 2 fits in its own second block.
    s.running[0].draft = (50..59).collect();
    s.running[1].draft = vec![60, 61];
    let out = s.schedule();
    assert_eq!((draft_plan(&out), out.num_preempted), (vec![(0, 10, 9), (1, 3, 2)], 0));
    assert_eq!((s.running[0].block_table.len(), s.block_manager.num_free_blocks()), (4, 0));
    s.mark_computed(&out);
    assert_eq!((s.running[0].num_computed_tokens, s.running[1].num_computed_tokens), (5, 5));
    // The model kept none of a's draft and both of b's: they join b's tokens, then each
    // sequence's next token. a's blocks past its 6 tokens go back.
    s.running[0].tokens.push(9);
    s.mark_draft_kept(0, 0);
    assert_eq!((s.running[0].block_table.len(), s.block_manager.num_free_blocks()), (2, 2));
    s.running[1].tokens.extend([60, 61, 9]);
    s.mark_draft_kept(1, 2);
    assert_eq!((s.running[1].num_computed_tokens, s.running[1].num_uncomputed_tokens()), (7, 1));
    assert!(s.running.iter().all(|x| x.draft.is_empty()));
    // a's draft is cut to the 10 slots of its own and the two free blocks, b's (its blocks
    // full after its next token, none free) is dropped, and no one is preempted.
    s.running[0].draft = (70..90).collect();
    s.running[1].draft = vec![62, 63, 64, 65];
    let out = s.schedule();
    assert_eq!((draft_plan(&out), out.num_preempted), (vec![(0, 11, 10), (1, 1, 0)], 0));
    assert!(s.running[1].draft.is_empty());

    // A draft never displaces another sequence's known token: with a budget of 8, a and b
    // decode one token each and a's draft gets the 6 left.
    let mut s = scheduler(100, 8, 8);
    let (a, _ra) = seq(0, 0, 4);
    let (b, _rb) = seq(1, 100, 4);
    s.waiting.push_back(a);
    s.waiting.push_back(b);
    step(&mut s);
    s.running[0].draft = (50..59).collect();
    s.running[1].draft = vec![60, 61];
    let out = s.schedule();
    assert_eq!(draft_plan(&out), vec![(0, 7, 6), (1, 1, 0)]);
}
