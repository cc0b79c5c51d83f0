//! `qwen-serve bench`: drives the engine in-process with fixed-length requests at a given
//! concurrency and reports throughput, time to first token (TTFT) and time per output token
//! (TPOT) percentiles.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::engine::{EngineHandle, EngineRequest, Event, SamplingParams};

#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub num_prompts: usize,
    pub concurrency: usize,
    pub prompt_len: usize,
    pub output_len: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub mean: f64,
}

impl Percentiles {
    fn of(mut xs: Vec<f64>) -> Self {
        if xs.is_empty() {
            return Self { p50: 0.0, p90: 0.0, p99: 0.0, mean: 0.0 };
        }
        xs.sort_by(f64::total_cmp);
        let at = |q: f64| xs[((xs.len() - 1) as f64 * q).round() as usize];
        Self { p50: at(0.5), p90: at(0.9), p99: at(0.99), mean: xs.iter().sum::<f64>() / xs.len() as f64 }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub num_prompts: usize,
    pub concurrency: usize,
    pub prompt_len: usize,
    pub output_len: usize,
    pub duration_s: f64,
    /// Generated tokens per second over the whole run, all streams together.
    pub output_tok_per_s: f64,
    /// Prompt + generated tokens per second.
    pub total_tok_per_s: f64,
    pub ttft_ms: Percentiles,
    /// (last token - first token) / (tokens - 1), per request.
    pub tpot_ms: Percentiles,
    pub e2e_ms: Percentiles,
    pub num_preemptions: usize,
}

/// `len` tokens of English-like text, different from the very first token for each `i` so
/// that no two prompts share a cached prefix.
pub fn synthetic_prompt(engine: &EngineHandle, i: usize, len: usize) -> Vec<u32> {
    let mut text = format!("Request {i}. ");
    let mut ids = vec![];
    while ids.len() < len {
        text.push_str("The quick brown fox jumps over the lazy dog while the engineers measure how fast the server can answer. ");
        ids = engine.tokenizer().encode(&text).expect("encoding plain text");
    }
    ids.truncate(len);
    ids
}

struct Timing {
    ttft: f64,
    tpot: Option<f64>,
    e2e: f64,
    num_output: usize,
}

fn run_one(engine: &EngineHandle, prompt: Vec<u32>, output_len: usize) -> Result<Timing, String> {
    let params = SamplingParams { max_tokens: output_len, ignore_eos: true, ..Default::default() };
    let start = Instant::now();
    let mut stream = engine.submit(EngineRequest { prompt, params }).map_err(|e| e.to_string())?;
    let (mut first, mut last, mut n) = (None, start, 0);
    while let Some(event) = stream.blocking_recv() {
        match event {
            Event::Token { .. } => {
                let now = Instant::now();
                first.get_or_insert(now);
                last = now;
                n += 1;
            }
            Event::Finished { .. } => break,
            Event::PromptLogprobs(_) => {}
        }
    }
    let first = first.ok_or("no token was generated")?;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    Ok(Timing {
        ttft: ms(first - start),
        tpot: (n > 1).then(|| ms(last - first) / (n - 1) as f64),
        e2e: ms(last - start),
        num_output: n,
    })
}

pub fn run(engine: &EngineHandle, cfg: &BenchConfig) -> Result<BenchReport, String> {
    if cfg.num_prompts == 0 || cfg.concurrency == 0 || cfg.prompt_len == 0 || cfg.output_len == 0 {
        return Err("--num-prompts, --concurrency, --prompt-len and --output-len must be positive".into());
    }
    // Warm-up (excluded): first-touch allocations and page faults of the weights.
    run_one(engine, synthetic_prompt(engine, usize::MAX, cfg.prompt_len.min(16)), 2)?;
    let prompts: Vec<Vec<u32>> = (0..cfg.num_prompts).map(|i| synthetic_prompt(engine, i, cfg.prompt_len)).collect();
    let preemptions_before = engine.stats().num_preemptions;
    let next = AtomicUsize::new(0);
    let timings = Mutex::new(Vec::with_capacity(cfg.num_prompts));
    let errors = Mutex::new(vec![]);
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..cfg.concurrency.min(cfg.num_prompts) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= prompts.len() {
                    break;
                }
                match run_one(engine, prompts[i].clone(), cfg.output_len) {
                    Ok(t) => timings.lock().unwrap().push(t),
                    Err(e) => errors.lock().unwrap().push(e),
                }
            });
        }
    });
    let duration = start.elapsed().as_secs_f64();
    if let Some(e) = errors.into_inner().unwrap().into_iter().next() {
        return Err(e);
    }
    let timings = timings.into_inner().unwrap();
    let num_output: usize = timings.iter().map(|t| t.num_output).sum();
    Ok(BenchReport {
        num_prompts: cfg.num_prompts,
        concurrency: cfg.concurrency,
        prompt_len: cfg.prompt_len,
        output_len: cfg.output_len,
        duration_s: duration,
        output_tok_per_s: num_output as f64 / duration,
        total_tok_per_s: (num_output + cfg.num_prompts * cfg.prompt_len) as f64 / duration,
        ttft_ms: Percentiles::of(timings.iter().map(|t| t.ttft).collect()),
        tpot_ms: Percentiles::of(timings.iter().filter_map(|t| t.tpot).collect()),
        e2e_ms: Percentiles::of(timings.iter().map(|t| t.e2e).collect()),
        num_preemptions: engine.stats().num_preemptions - preemptions_before,
    })
}

/// The human-readable table.
pub fn table(reports: &[BenchReport]) -> String {
    let mut s = String::from(
        "| concurrency | prompts | prompt/output len | output tok/s | total tok/s | TTFT p50 / p99 (ms) | TPOT p50 / p99 (ms) | preemptions |\n|---|---|---|---|---|---|---|---|\n",
    );
    for r in reports {
        s.push_str(&format!(
            "| {} | {} | {}/{} | {:.1} | {:.1} | {:.0} / {:.0} | {:.1} / {:.1} | {} |\n",
            r.concurrency, r.num_prompts, r.prompt_len, r.output_len, r.output_tok_per_s, r.total_tok_per_s,
            r.ttft_ms.p50, r.ttft_ms.p99, r.tpot_ms.p50, r.tpot_ms.p99, r.num_preemptions
        ));
    }
    s
}
