//! The continuous-batching engine on the real test model: batch invariance, preemption,
//! prefix caching, cancellation and the request-level sampling features.

mod common;

use std::collections::HashMap;

use common::test_gguf;
use qwen_serve::engine::{EngineConfig, EngineHandle, EngineRequest, Event, FinishReason, RequestStream, SamplingParams, StopReason, SubmitError, Usage};
use qwen_serve::loader::{self, LoadOptions};

fn engine(config: EngineConfig) -> EngineHandle {
    let loaded = loader::load(test_gguf().to_str().unwrap(), &LoadOptions::default()).expect("load test GGUF");
    EngineHandle::start(loaded, config).expect("start engine")
}

/// What one choice produced.
#[derive(Debug, Clone, Default)]
struct Choice {
    tokens: Vec<u32>,
    text: String,
    reason: Option<FinishReason>,
    stop_reason: Option<StopReason>,
    usage: Usage,
    logprobs: Vec<Option<qwen_serve::engine::sampler::Logprobs>>,
    /// An embedding request's hidden state.
    hidden: Option<Vec<f32>>,
}

fn collect(mut stream: RequestStream) -> (HashMap<usize, Choice>, Option<Vec<Option<qwen_serve::engine::sampler::Logprobs>>>) {
    let mut choices: HashMap<usize, Choice> = HashMap::new();
    let mut prompt_logprobs = None;
    while let Some(event) = stream.blocking_recv() {
        match event {
            Event::PromptLogprobs(p) => prompt_logprobs = Some(p),
            Event::Pooled { index, values: hidden } => choices.entry(index).or_default().hidden = Some(hidden),
            Event::Token { index, token, text, logprobs } => {
                let c = choices.entry(index).or_default();
                c.tokens.push(token);
                c.text.push_str(&text);
                c.logprobs.push(logprobs);
            }
            Event::Finished { index, reason, stop_reason, text, usage } => {
                let c = choices.entry(index).or_default();
                c.text.push_str(&text);
                c.reason = Some(reason);
                c.stop_reason = stop_reason;
                c.usage = usage;
            }
        }
    }
    (choices, prompt_logprobs)
}

/// Stats once the engine has gone idle (the last step's stats are published just after its
/// events are sent, so a caller that has read every event may be a moment early).
fn idle_stats(engine: &EngineHandle) -> qwen_serve::engine::EngineStats {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let s = engine.stats();
        if s.num_running == 0 && s.num_waiting == 0 && s.num_free_blocks == s.num_blocks {
            return s;
        }
        assert!(std::time::Instant::now() < deadline, "engine did not go idle with all blocks free: {s:?}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn greedy(max_tokens: usize) -> SamplingParams {
    SamplingParams { max_tokens, ignore_eos: true, ..Default::default() }
}

fn prompts(engine: &EngineHandle) -> Vec<Vec<u32>> {
    let subjects = [
        "def quicksort(arr):", "The capital of France is", "fn main() {", "SELECT name FROM", "# A short poem about the sea\n",
        "import numpy as np\n", "Once upon a time", "class Stack:\n", "The three primary colors are", "<!DOCTYPE html>\n<html>",
        "def is_prime(n):", "Rust ownership means", "const express = require(", "The derivative of x^2 is", "git commit -m \"", "#include <stdio.h>\n",
    ];
    subjects.iter().map(|s| engine.tokenizer().encode(s).unwrap()).collect()
}

fn run_all(engine: &EngineHandle, prompts: &[Vec<u32>], params: &SamplingParams) -> Vec<Vec<u32>> {
    let streams: Vec<RequestStream> =
        prompts.iter().map(|p| engine.submit(EngineRequest { prompt: p.clone(), params: params.clone() }).unwrap()).collect();
    streams.into_iter().map(|s| collect(s).0.remove(&0).unwrap().tokens).collect()
}

fn run_alone(engine: &EngineHandle, prompts: &[Vec<u32>], params: &SamplingParams) -> Vec<Vec<u32>> {
    prompts.iter().map(|p| run_all(engine, std::slice::from_ref(p), params).remove(0)).collect()
}

/// 16 different prompts at once give exactly the greedy tokens each gives alone; the same holds
/// when the KV cache is so small that sequences are preempted and recomputed; and every block
/// is free at the end.
#[test]
fn batch_invariance_with_and_without_preemption() {
    let e = engine(EngineConfig { enable_prefix_caching: false, ..Default::default() });
    let ps = prompts(&e);
    let params = greedy(24);
    let alone = run_alone(&e, &ps, &params);
    let together = run_all(&e, &ps, &params);
    for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(a, t, "prompt {i}: batched tokens differ from alone");
    }
    idle_stats(&e);
    e.shutdown();

    // 24 blocks of 16 tokens = 384 slots for 16 sequences of ~30 tokens (~480 needed).
    let bytes_per_block = 2 * 24 * 16 * 2 * 64 * 4;
    let small = engine(EngineConfig { kv_cache_bytes: 24 * bytes_per_block, enable_prefix_caching: false, ..Default::default() });
    assert_eq!(small.stats().num_blocks, 24);
    let squeezed = run_all(&small, &ps, &params);
    let stats = idle_stats(&small);
    assert!(stats.num_preemptions > 0, "the small cache must have forced preemption");
    for (i, (a, s)) in alone.iter().zip(&squeezed).enumerate() {
        assert_eq!(a, s, "prompt {i}: tokens changed by preemption");
    }
    small.shutdown();
}

/// An f16 KV cache (`--kv-cache-dtype f16`) holds twice the blocks of an f32 one in the same
/// bytes, and batched sequences still get the tokens they get alone.
#[test]
fn f16_kv_cache_holds_twice_the_tokens_and_keeps_batches_exact() {
    let f32_block = 2 * 24 * 16 * 2 * 64 * 4;
    let e = engine(EngineConfig { kv_cache_bytes: 40 * f32_block, kv_cache_dtype: Some(candle_core::DType::F16), ..Default::default() });
    assert_eq!(e.stats().num_blocks, 80);
    let ps = prompts(&e);
    let params = greedy(16);
    let alone = run_alone(&e, &ps[..6], &params);
    let together = run_all(&e, &ps[..6], &params);
    for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(a, t, "prompt {i}: batched tokens differ from alone");
    }
    e.shutdown();
}

/// A repeated long prompt is served with its prefix from the cache, with the same output.
#[test]
fn repeated_prompt_uses_the_prefix_cache() {
    let e = engine(EngineConfig::default());
    let prompt = e.tokenizer().encode(&"Prefix caching should make this long shared preamble free the second time. ".repeat(12)).unwrap();
    assert!(prompt.len() > 100);
    let params = greedy(8);
    let before = idle_stats(&e);
    let first = collect(e.submit(EngineRequest { prompt: prompt.clone(), params: params.clone() }).unwrap()).0.remove(&0).unwrap();
    let mid = idle_stats(&e);
    let second = collect(e.submit(EngineRequest { prompt: prompt.clone(), params }).unwrap()).0.remove(&0).unwrap();
    let after = idle_stats(&e);
    assert_eq!(first.tokens, second.tokens);
    assert_eq!(first.usage.num_cached_tokens, 0);
    let full_blocks = (prompt.len() - 1) / 16 * 16;
    assert_eq!(second.usage.num_cached_tokens, full_blocks);
    assert_eq!(mid.num_prompt_tokens_computed - before.num_prompt_tokens_computed, prompt.len());
    assert_eq!(after.num_prompt_tokens_computed - mid.num_prompt_tokens_computed, prompt.len() - full_blocks);
    assert_eq!(after.num_prefix_cache_hit_tokens - mid.num_prefix_cache_hit_tokens, full_blocks);
    e.shutdown();
}

/// Seeded sampling gives the same tokens alone and among other requests; n > 1 choices with
/// a seed are reproducible; stop strings end a choice without being emitted; dropping a stream
/// frees its blocks; overload and impossible requests are rejected up front.
#[test]
fn sampling_features_cancellation_and_admission() {
    let e = engine(EngineConfig { max_waiting: 64, ..Default::default() });
    let ps = prompts(&e);
    let seeded = SamplingParams { temperature: 0.9, top_p: 0.95, seed: Some(1234), max_tokens: 12, ignore_eos: true, ..Default::default() };
    let alone = run_alone(&e, &ps[..1], &seeded);
    let mut mixed = ps[..6].to_vec();
    mixed.rotate_left(3);
    let together = run_all(&e, &mixed, &seeded);
    assert_eq!(alone[0], together[3], "a seeded sequence must not depend on its neighbours");

    let n3 = SamplingParams { n: 3, ..seeded.clone() };
    let (a, _) = collect(e.submit(EngineRequest { prompt: ps[1].clone(), params: n3.clone() }).unwrap());
    let (b, _) = collect(e.submit(EngineRequest { prompt: ps[1].clone(), params: n3 }).unwrap());
    assert_eq!(a.len(), 3);
    for i in 0..3 {
        assert_eq!(a[&i].tokens, b[&i].tokens, "choice {i} not reproducible");
        assert_eq!(a[&i].usage.num_output_tokens, 12);
    }
    assert!(a[&0].tokens != a[&1].tokens || a[&1].tokens != a[&2].tokens, "choices should differ");

    // Greedy "def quicksort(arr):" continues with "\n    if len(arr) <= 1:" (see gguf_reference.json).
    let quick = e.tokenizer().encode("def quicksort(arr):").unwrap();
    let stop = SamplingParams { stop: vec!["len(".into()], ..greedy(30) };
    let (c, _) = collect(e.submit(EngineRequest { prompt: quick.clone(), params: stop }).unwrap());
    assert_eq!(c[&0].reason, Some(FinishReason::Stop));
    assert_eq!(c[&0].stop_reason, Some(StopReason::String("len(".into())));
    assert_eq!(c[&0].text, "\n    if ");

    // Logprobs and prompt logprobs.
    let lp = SamplingParams { logprobs: Some(3), prompt_logprobs: Some(2), ..greedy(4) };
    let (c, prompt_lp) = collect(e.submit(EngineRequest { prompt: quick.clone(), params: lp }).unwrap());
    let prompt_lp = prompt_lp.expect("prompt logprobs requested");
    assert_eq!(prompt_lp.len(), quick.len());
    assert!(prompt_lp[0].is_none() && prompt_lp[1..].iter().all(|p| p.as_ref().is_some_and(|p| p.top.len() == 2 && p.token_logprob <= 0.0)));
    for l in &c[&0].logprobs {
        let l = l.as_ref().expect("logprobs requested");
        assert_eq!(l.top.len(), 3);
        // Greedy: the sampled token is the most likely one.
        assert!((l.token_logprob - l.top[0].1).abs() < 1e-6);
    }

    // Cancellation: drop a long request mid-way; its blocks come back.
    let stream = e.submit(EngineRequest { prompt: quick.clone(), params: greedy(500) }).unwrap();
    let mut stream = stream;
    let mut seen = 0;
    while let Some(ev) = stream.blocking_recv() {
        if matches!(ev, Event::Token { .. }) {
            seen += 1;
            if seen == 3 {
                break;
            }
        }
    }
    drop(stream);
    idle_stats(&e);
    // Aborting everything (a shutdown's grace period over): each choice ends with `Abort`,
    // and the blocks come back.
    let mut streams: Vec<RequestStream> = (0..2).map(|_| e.submit(EngineRequest { prompt: quick.clone(), params: SamplingParams { n: 2, ..greedy(500) } }).unwrap()).collect();
    while !matches!(streams[0].blocking_recv(), Some(Event::Token { .. })) {}
    e.abort_all();
    for stream in &mut streams {
        let mut aborted = 0;
        while let Some(ev) = stream.blocking_recv() {
            if let Event::Finished { reason, usage, .. } = ev {
                assert_eq!(reason, FinishReason::Abort);
                assert!(usage.num_output_tokens < 500);
                aborted += 1;
            }
        }
        assert_eq!(aborted, 2);
    }
    idle_stats(&e);

    // Admission: impossible and invalid requests fail at submit.
    let too_long = e.submit(EngineRequest { prompt: quick.clone(), params: greedy(40_000) }).map(|_| ()).unwrap_err();
    assert!(matches!(too_long, SubmitError::TooLong { context: 32768, .. }), "{too_long:?}");
    let bad = e.submit(EngineRequest { prompt: quick.clone(), params: SamplingParams { top_p: 0.0, ..greedy(4) } }).map(|_| ()).unwrap_err();
    assert!(bad.to_string().contains("top_p"), "{bad}");
    let empty = e.submit(EngineRequest { prompt: vec![], params: greedy(4) }).map(|_| ()).unwrap_err();
    assert!(matches!(empty, SubmitError::Invalid(_)));
    e.shutdown();

    // `--max-model-len`: a shorter context is the one requests are held to; a longer one than
    // the model's is refused at start.
    let short = engine(EngineConfig { max_model_len: Some(100), kv_cache_bytes: 4 << 20, ..Default::default() });
    assert_eq!((short.max_context(), short.max_sequence_tokens()), (100, 100));
    let too_long = short.submit(EngineRequest { prompt: quick.clone(), params: greedy(100) }).map(|_| ()).unwrap_err();
    assert!(matches!(too_long, SubmitError::TooLong { context: 100, max_tokens: 100, .. }), "{too_long:?}");
    short.shutdown();
    let loaded = loader::load(test_gguf().to_str().unwrap(), &LoadOptions::default()).unwrap();
    let err = EngineHandle::start(loaded, EngineConfig { max_model_len: Some(32769), ..Default::default() }).map(|_| ()).unwrap_err().to_string();
    assert!(err.contains("`--max-model-len` 32769 must be in [1, 32768]"), "{err}");

    let tiny = engine(EngineConfig { kv_cache_bytes: 4 * 2 * 24 * 16 * 2 * 64 * 4, ..Default::default() });
    // A cache smaller than the context bounds the longest sequence (chat's default max_tokens).
    assert_eq!((tiny.max_context(), tiny.max_sequence_tokens()), (32768, 64));
    let cannot = tiny.submit(EngineRequest { prompt: quick.clone(), params: greedy(100) }).map(|_| ()).unwrap_err();
    assert!(matches!(cannot, SubmitError::CannotFit { num_blocks: 4, .. }), "{cannot:?}");
    tiny.shutdown();
}

/// A bounded queue: beyond `max_waiting` queued requests, submit says QueueFull (HTTP 429).
#[test]
fn a_full_queue_rejects_new_requests() {
    let e = engine(EngineConfig { max_waiting: 2, max_num_seqs: 1, ..Default::default() });
    let p = e.tokenizer().encode("hello").unwrap();
    let mut streams = vec![];
    let mut rejected = 0;
    for _ in 0..12 {
        match e.submit(EngineRequest { prompt: p.clone(), params: greedy(64) }) {
            Ok(s) => streams.push(s),
            Err(SubmitError::QueueFull(2)) => rejected += 1,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert!(rejected > 0, "12 requests into 1 running slot + 2 waiting must overflow");
    drop(streams);
    e.shutdown();
}

/// Speculative decoding by prompt lookup (`--speculative-config`) gives every greedy sequence
/// exactly the tokens, text and finish of plain decoding: alone, batched, under preemption, at
/// a stop string and at `max_tokens`; on a prompt that repeats itself it takes fewer steps; a
/// request served afterwards from the prefix cache over blocks that kept draft tokens gets the
/// plain engine's tokens too. Seeded sampled requests and ones with penalties and logprobs
/// draft as well and get plain decoding's tokens and logprobs.
#[test]
fn speculative_decoding_keeps_the_greedy_tokens() {
    use qwen_serve::engine::speculative::SpeculativeConfig;
    let spec = Some(SpeculativeConfig { num_speculative_tokens: 4, prompt_lookup_max: 3, prompt_lookup_min: 1 });
    let plain = engine(EngineConfig::default());
    let fast = engine(EngineConfig { speculative: spec, ..Default::default() });
    let run = |e: &EngineHandle, prompt: &[u32], params: &SamplingParams| collect(e.submit(EngineRequest { prompt: prompt.to_vec(), params: params.clone() }).unwrap()).0.remove(&0).unwrap();
    let same = |a: &Choice, b: &Choice, what: &str| {
        assert_eq!(a.tokens, b.tokens, "{what}: tokens");
        assert_eq!((&a.text, a.reason, &a.stop_reason), (&b.text, b.reason, &b.stop_reason), "{what}: text and finish");
        assert_eq!(a.usage.num_output_tokens, b.usage.num_output_tokens, "{what}: usage");
    };

    // Code that repeats: the model copies the function and the lookup guesses the copy.
    let src = "def area(width, height):\n    \"\"\"The area of a rectangle.\"\"\"\n    return width * height\n\n\n";
    let repeat = plain.tokenizer().encode(&format!("{src}# The same function again:\n{src}# And once more:\n")).unwrap();
    let params = greedy(40);
    let (p0, f0) = (idle_stats(&plain), idle_stats(&fast));
    let want = run(&plain, &repeat, &params);
    let got = run(&fast, &repeat, &params);
    let (p1, f1) = (idle_stats(&plain), idle_stats(&fast));
    same(&got, &want, "repeating prompt");
    let accepted = f1.num_accepted_draft_tokens - f0.num_accepted_draft_tokens;
    assert!(accepted >= 10, "the copy should keep many draft tokens: {accepted} of {}", f1.num_draft_tokens - f0.num_draft_tokens);
    assert!(f1.num_steps - f0.num_steps < p1.num_steps - p0.num_steps, "fewer steps with drafts: {f1:?} vs {p1:?}");
    assert_eq!(f1.num_generated_tokens - f0.num_generated_tokens, 40);

    // The same prompt followed by its output, from the prefix cache (blocks holding kept drafts).
    let longer: Vec<u32> = repeat.iter().chain(&got.tokens).copied().collect();
    same(&run(&fast, &longer, &greedy(12)), &run(&plain, &longer, &greedy(12)), "prefix-cached continuation");

    // A stop string inside a stretch the drafts cover, and max_tokens that cut a draft short.
    for (i, params) in [SamplingParams { stop: vec!["height\n".into()], ..greedy(40) }, greedy(3), greedy(1)].iter().enumerate() {
        same(&run(&fast, &repeat, params), &run(&plain, &repeat, params), &format!("case {i}"));
    }

    // 16 prompts at once, with a repeating one and a sampled one among them.
    let mut ps = prompts(&plain);
    ps.push(repeat.clone());
    let params = greedy(24);
    let want: Vec<Vec<u32>> = run_alone(&plain, &ps, &params);
    let got = run_all(&fast, &ps, &params);
    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
        assert_eq!(a, b, "prompt {i}: batched with drafts");
    }

    // Sampled requests draft too, drawing each token as plain decoding does: a seeded one gets
    // plain decoding's tokens (its RNG used alike), alone and batched, and keeps drafts on the
    // repeating prompt; with penalties and logprobs the logprobs are plain decoding's as well.
    let seeded = SamplingParams { temperature: 0.7, top_p: 0.9, seed: Some(7), max_tokens: 40, ignore_eos: true, ..Default::default() };
    let before = idle_stats(&fast);
    let want_seeded = run(&plain, &repeat, &seeded);
    same(&run(&fast, &repeat, &seeded), &want_seeded, "seeded sampling");
    let kept = idle_stats(&fast).num_accepted_draft_tokens - before.num_accepted_draft_tokens;
    assert!(kept >= 5, "a sampled copy keeps drafts too: {kept}");
    let tuned = SamplingParams { logprobs: Some(2), frequency_penalty: 0.3, repetition_penalty: 1.1, ..greedy(24) };
    let (a, b) = (run(&fast, &repeat, &tuned), run(&plain, &repeat, &tuned));
    same(&a, &b, "penalties and logprobs");
    assert_eq!(format!("{:?}", a.logprobs), format!("{:?}", b.logprobs), "logprobs");
    let streams: Vec<RequestStream> = [(&repeat, &seeded), (&repeat, &params), (&ps[0], &seeded)]
        .iter()
        .map(|(p, s)| fast.submit(EngineRequest { prompt: p.to_vec(), params: (*s).clone() }).unwrap())
        .collect();
    let got: Vec<Vec<u32>> = streams.into_iter().map(|s| collect(s).0.remove(&0).unwrap().tokens).collect();
    assert_eq!(got, vec![want_seeded.tokens, want[ps.len() - 1].clone(), run(&plain, &ps[0], &seeded).tokens]);
    idle_stats(&fast);
    plain.shutdown();
    fast.shutdown();

    // A cache so small that sequences are preempted: drafts give way, tokens do not change.
    let bytes_per_block = 2 * 24 * 16 * 2 * 64 * 4;
    let small = engine(EngineConfig { kv_cache_bytes: 24 * bytes_per_block, enable_prefix_caching: false, speculative: spec, ..Default::default() });
    let squeezed = run_all(&small, &ps, &params);
    let stats = idle_stats(&small);
    assert!(stats.num_preemptions > 0 && stats.num_accepted_draft_tokens > 0, "{stats:?}");
    for (i, (a, b)) in squeezed.iter().zip(&want).enumerate() {
        assert_eq!(a, b, "prompt {i}: preempted with drafts");
    }
    small.shutdown();
}

/// On a GPU sampling starts where the logits are: rows that need only their top k reach the
/// sampler as their best candidates, and plain whole-vocabulary draws are made there with the
/// sequence's RNG. Run that way here (`sample_on_device`), every kind of request gets the tokens
/// of whole rows on the host: seeded top-k sampling with a repetition penalty, greedy with
/// presence penalty and bias, greedy with a penalty that lifts the prompt's tokens, EOS
/// suppressed until `min_tokens`, seeded whole-vocabulary draws (with min-p too) and plain
/// greedy beside them in one batch, and with speculative decoding (rows after draft tokens).
#[test]
fn sampling_on_the_device_gives_the_hosts_tokens() {
    use qwen_serve::engine::speculative::SpeculativeConfig;
    let whole = engine(EngineConfig { sample_on_device: Some(false), ..Default::default() });
    let best = engine(EngineConfig { sample_on_device: Some(true), ..Default::default() });
    let spec = Some(SpeculativeConfig { num_speculative_tokens: 4, prompt_lookup_max: 3, prompt_lookup_min: 1 });
    let best_spec = engine(EngineConfig { sample_on_device: Some(true), speculative: spec, ..Default::default() });
    let ps = prompts(&whole);
    let src = "def area(width, height):\n    \"\"\"The area of a rectangle.\"\"\"\n    return width * height\n\n\n";
    let repeat = whole.tokenizer().encode(&format!("{src}# The same function again:\n{src}# And once more:\n")).unwrap();
    let requests: Vec<(Vec<u32>, SamplingParams)> = vec![
        (ps[0].clone(), SamplingParams { temperature: 0.7, top_p: 0.8, top_k: 20, repetition_penalty: 1.05, seed: Some(3), ..greedy(24) }),
        (ps[1].clone(), SamplingParams { presence_penalty: 1.2, logit_bias: vec![(13, 3.0), (11, -5.0)], ..greedy(24) }),
        (ps[2].clone(), SamplingParams { min_tokens: 12, max_tokens: 20, ignore_eos: false, ..Default::default() }),
        (ps[3].clone(), SamplingParams { temperature: 1.0, seed: Some(5), ..greedy(24) }),
        (ps[6].clone(), SamplingParams { temperature: 0.6, min_p: 0.05, seed: Some(8), ..greedy(24) }),
        (ps[4].clone(), greedy(24)),
        // A penalty below 1 lifts the prompt's tokens: from outside the best candidates too.
        (ps[5].clone(), SamplingParams { repetition_penalty: 0.6, ..greedy(24) }),
        (repeat.clone(), SamplingParams { temperature: 0.8, top_k: 5, frequency_penalty: 0.4, seed: Some(9), ..greedy(40) }),
    ];
    let run = |e: &EngineHandle| -> Vec<Choice> {
        let streams: Vec<RequestStream> = requests.iter().map(|(p, s)| e.submit(EngineRequest { prompt: p.clone(), params: s.clone() }).unwrap()).collect();
        streams.into_iter().map(|s| collect(s).0.remove(&0).unwrap()).collect()
    };
    let want = run(&whole);
    for (name, e) in [("on the device", &best), ("on the device, with drafts", &best_spec)] {
        for (i, (got, want)) in run(e).iter().zip(&want).enumerate() {
            assert_eq!((&got.tokens, got.reason), (&want.tokens, want.reason), "{name}: request {i} ({:?})", requests[i].1);
        }
    }
    assert!(idle_stats(&best_spec).num_accepted_draft_tokens > 0, "rows after draft tokens were sampled");
    for e in [whole, best, best_spec] {
        e.shutdown();
    }
}

fn embed(engine: &EngineHandle, prompt: &[u32]) -> RequestStream {
    let params = SamplingParams { embed: true, max_tokens: 0, ..Default::default() };
    engine.submit(EngineRequest { prompt: prompt.to_vec(), params }).unwrap()
}

/// The largest difference between two states, relative to the first's largest value.
fn relative_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// An embedding request ends after its prompt with the last token's hidden state and no
/// output; the state does not depend on what runs beside it (generation, other embeddings),
/// on how the prompt is chunked, or on its prefix coming from the cache; generation params
/// on an embedding are refused.
#[test]
fn embeddings_are_the_last_hidden_state_whatever_runs_beside_them() {
    let e = engine(EngineConfig::default());
    let prompts = prompts(&e);
    let hidden_size = e.hidden_size();
    let alone: Vec<Vec<f32>> = prompts
        .iter()
        .map(|p| {
            let mut choices = collect(embed(&e, p)).0;
            let c = choices.remove(&0).unwrap();
            assert_eq!(c.reason, Some(FinishReason::Stop));
            assert!(c.tokens.is_empty() && c.text.is_empty(), "an embedding generates nothing");
            assert_eq!((c.usage.num_prompt_tokens, c.usage.num_output_tokens), (p.len(), 0));
            let hidden = c.hidden.expect("the hidden state comes before the finish");
            assert_eq!(hidden.len(), hidden_size);
            assert!(hidden.iter().all(|v| v.is_finite()) && hidden.iter().any(|&v| v != 0.0));
            hidden
        })
        .collect();
    // Different prompts, different states.
    assert!(relative_diff(&alone[0], &alone[1]) > 0.1);
    // All at once, among generating requests.
    let generating: Vec<RequestStream> = prompts[..4].iter().map(|p| e.submit(EngineRequest { prompt: p.clone(), params: greedy(24) }).unwrap()).collect();
    let together: Vec<RequestStream> = prompts.iter().map(|p| embed(&e, p)).collect();
    for (i, stream) in together.into_iter().enumerate() {
        let hidden = collect(stream).0.remove(&0).unwrap().hidden.unwrap();
        assert!(relative_diff(&alone[i], &hidden) < 1e-3, "prompt {i}: {}", relative_diff(&alone[i], &hidden));
    }
    for stream in generating {
        assert_eq!(collect(stream).0.remove(&0).unwrap().tokens.len(), 24);
    }
    // A long prompt, then again from the prefix cache.
    let long = e.tokenizer().encode(&"Embeddings of long inputs are computed in chunks like any prefill. ".repeat(10)).unwrap();
    let whole = collect(embed(&e, &long)).0.remove(&0).unwrap();
    let cached = collect(embed(&e, &long)).0.remove(&0).unwrap();
    assert_eq!(cached.usage.num_cached_tokens, (long.len() - 1) / 16 * 16);
    assert!(relative_diff(whole.hidden.as_ref().unwrap(), cached.hidden.as_ref().unwrap()) < 1e-3);
    idle_stats(&e);
    e.shutdown();
    // Chunked by a 32-token budget, in steps shared with prompt logprobs (every prompt row),
    // drafted decoding (rows after draft tokens), a score and other embeddings.
    use qwen_serve::engine::speculative::SpeculativeConfig;
    let spec = Some(SpeculativeConfig { num_speculative_tokens: 4, prompt_lookup_max: 3, prompt_lookup_min: 1 });
    let chunked = engine(EngineConfig { max_num_batched_tokens: 32, enable_prefix_caching: false, speculative: spec, ..Default::default() });
    let hidden = collect(embed(&chunked, &long)).0.remove(&0).unwrap().hidden.unwrap();
    assert!(relative_diff(whole.hidden.as_ref().unwrap(), &hidden) < 1e-3, "{}", relative_diff(whole.hidden.as_ref().unwrap(), &hidden));
    let repeat = chunked.tokenizer().encode(&"a b c d e f g ".repeat(6)).unwrap();
    let scored = SamplingParams { prompt_logprobs: Some(2), ..greedy(4) };
    let submit = |prompt: &[u32], params: &SamplingParams| chunked.submit(EngineRequest { prompt: prompt.to_vec(), params: params.clone() }).unwrap();
    let (drafted_alone, scored_alone) = (collect(submit(&repeat, &greedy(24))).0.remove(&0).unwrap(), collect(submit(&long, &scored)));
    // A score request (named tokens' logits): the gap between the two likeliest next tokens
    // is the gap between their logprobs.
    let top = collect(submit(&prompts[2], &SamplingParams { logprobs: Some(2), ..greedy(1) })).0.remove(&0).unwrap().logprobs[0].clone().unwrap().top;
    let score_params = SamplingParams { embed: true, max_tokens: 0, score_tokens: vec![top[0].0, top[1].0], ..Default::default() };
    let score_alone = collect(submit(&prompts[2], &score_params)).0.remove(&0).unwrap().hidden.unwrap();
    assert_eq!(score_alone.len(), 2);
    assert!(((score_alone[0] - score_alone[1]) - (top[0].1 - top[1].1)).abs() < 1e-3, "{score_alone:?} vs logprobs {top:?}");
    let drafted = submit(&repeat, &greedy(24));
    let with_scores = submit(&long, &scored);
    let score_mixed = submit(&prompts[2], &score_params);
    let embeddings: Vec<RequestStream> = [&long, &prompts[0], &prompts[1]].into_iter().map(|p| embed(&chunked, p)).collect();
    for (stream, want) in embeddings.into_iter().zip([whole.hidden.as_ref().unwrap(), &alone[0], &alone[1]]) {
        let hidden = collect(stream).0.remove(&0).unwrap().hidden.unwrap();
        assert!(relative_diff(want, &hidden) < 1e-3, "{}", relative_diff(want, &hidden));
    }
    let mixed = collect(score_mixed).0.remove(&0).unwrap().hidden.unwrap();
    assert!(mixed.iter().zip(&score_alone).all(|(a, b)| (a - b).abs() < 1e-3), "{mixed:?} vs {score_alone:?} alone");
    assert_eq!(collect(drafted).0.remove(&0).unwrap().tokens, drafted_alone.tokens);
    let (mut choices, prompt_logprobs) = collect(with_scores);
    assert_eq!(choices.remove(&0).unwrap().tokens, scored_alone.0[&0].tokens);
    assert_eq!(prompt_logprobs.map(|p| p.len()), scored_alone.1.map(|p| p.len()));
    assert!(idle_stats(&chunked).num_accepted_draft_tokens > 0, "drafts ran beside the embeddings");
    for params in [
        SamplingParams { embed: true, max_tokens: 1, ..Default::default() },
        SamplingParams { embed: true, max_tokens: 0, n: 2, ..Default::default() },
        SamplingParams { embed: true, max_tokens: 0, prompt_logprobs: Some(1), ..Default::default() },
        SamplingParams { embed: true, max_tokens: 0, logprobs: Some(0), ..Default::default() },
        SamplingParams { score_tokens: vec![1], ..greedy(1) },
        SamplingParams { embed: true, max_tokens: 0, score_tokens: vec![1, 1 << 20], ..Default::default() },
    ] {
        let refused = chunked.submit(EngineRequest { prompt: long.clone(), params });
        assert!(matches!(refused, Err(SubmitError::Invalid(_))));
    }
    chunked.shutdown();
}
