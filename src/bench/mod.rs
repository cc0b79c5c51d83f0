//! `qwen-serve bench`: fixed-length requests at a given concurrency, against the engine
//! in-process or any OpenAI-compatible server over HTTP, reporting throughput, time to first
//! token (TTFT) and time per output token (TPOT) percentiles, and a prefill measurement.
//!
//! The workload is the same for every target: prompts are token ids from our tokenizer (so two
//! servers given the same model see identical inputs), EOS is ignored so every request
//! generates exactly `output_len` tokens, and a warm-up request is excluded.

mod engine;
mod http;
mod prompt;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

pub use http::HttpTarget;
pub use prompt::{load_tokenizer, synthetic_prompt, Prompts};

/// Something that serves requests: the in-process engine or a server over HTTP.
pub trait Target: Sync {
    /// Names the server in reports.
    fn name(&self) -> String;
    /// Runs one request that ignores EOS to completion and times its tokens.
    fn run_one(&self, prompt: &[u32], output_len: usize, sampling: &Sampling) -> Result<Timing, String>;
    /// Preemptions so far, where the target can tell.
    fn num_preemptions(&self) -> Option<usize> {
        None
    }
    /// The engine's step counters (in-process only): `(steps, forward s, logits s, step s)`.
    fn step_counters(&self) -> Option<(usize, f64, f64, f64)> {
        None
    }
    /// Seconds per forward phase so far (in-process, with `QWEN_SERVE_PHASE_TIMES=1`; see
    /// `qwen_serve_models::phase_times`).
    fn phase_totals(&self) -> Option<PhaseTotals> {
        None
    }
}

pub type PhaseTotals = [f64; qwen_serve_models::phase_times::PHASES.len()];

/// One forward phase's share of an average step.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseTime {
    pub phase: &'static str,
    pub ms: f64,
}

/// Where an average engine step of one level went, in ms (the in-process target only).
#[derive(Debug, Clone, Serialize)]
pub struct StepTimes {
    pub num_steps: usize,
    /// Issuing the forward: on a GPU the host's kernel-launch work, on the CPU the forward itself.
    pub forward_ms: f64,
    /// Waiting for the logits after that: on a GPU, device work not hidden behind the launches.
    pub logits_ms: f64,
    /// The rest of the step: scheduling, sampling, detokenizing.
    pub other_ms: f64,
    /// The forward by phase, each ended by a wait for the device (`QWEN_SERVE_PHASE_TIMES=1`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phases: Option<Vec<PhaseTime>>,
}

impl StepTimes {
    fn between(before: (usize, f64, f64, f64), after: (usize, f64, f64, f64), phases: Option<(PhaseTotals, PhaseTotals)>) -> Option<Self> {
        let steps = after.0.checked_sub(before.0).filter(|&n| n > 0)?;
        let per_step = |a: f64, b: f64| (a - b) * 1e3 / steps as f64;
        let (forward_ms, logits_ms) = (per_step(after.1, before.1), per_step(after.2, before.2));
        let phases = phases.map(|(before, after)| {
            qwen_serve_models::phase_times::PHASES
                .iter()
                .enumerate()
                .map(|(i, p)| PhaseTime { phase: p.name(), ms: per_step(after[i], before[i]) })
                .collect()
        });
        Some(Self { num_steps: steps, forward_ms, logits_ms, other_ms: per_step(after.3, before.3) - forward_ms - logits_ms, phases })
    }
}

#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub num_prompts: usize,
    pub concurrency: usize,
    pub prompt_len: usize,
    pub output_len: usize,
    pub sampling: Sampling,
}

/// How every request of a level draws its tokens: greedy by default, or sampled (each request
/// unseeded), which on a GPU takes the runner's sampling paths (best candidates, draws on the
/// device, or whole rows to the host) where greedy takes the argmax there.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sampling {
    pub temperature: f32,
    pub top_p: f32,
    /// 0: off.
    pub top_k: usize,
}

impl Default for Sampling {
    fn default() -> Self {
        Self { temperature: 0.0, top_p: 1.0, top_k: 0 }
    }
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
    /// Which server was measured (`Target::name`).
    pub server: String,
    pub num_prompts: usize,
    pub concurrency: usize,
    pub prompt_len: usize,
    pub output_len: usize,
    pub sampling: Sampling,
    pub duration_s: f64,
    /// Generated tokens, all requests together.
    pub num_output_tokens: usize,
    /// Generated tokens per second over the whole run, all streams together.
    pub output_tok_per_s: f64,
    /// Prompt + generated tokens per second.
    pub total_tok_per_s: f64,
    pub ttft_ms: Percentiles,
    /// (last token - first token) / (tokens - 1), per request.
    pub tpot_ms: Percentiles,
    pub e2e_ms: Percentiles,
    /// `None` where the target cannot tell (a server over HTTP).
    pub num_preemptions: Option<usize>,
    pub step_times: Option<StepTimes>,
}

/// Prompt processing speed: one request at a time, `max_tokens` 1.
#[derive(Debug, Clone, Serialize)]
pub struct PrefillReport {
    pub server: String,
    pub prompt_len: usize,
    pub num_runs: usize,
    /// Median time to the one generated token.
    pub ttft_ms: f64,
    /// `prompt_len` / median TTFT.
    pub prefill_tok_per_s: f64,
}

/// The token times of one request.
#[derive(Debug, Clone)]
pub struct Timing {
    pub ttft_ms: f64,
    pub tpot_ms: Option<f64>,
    pub e2e_ms: f64,
    pub num_output: usize,
}

impl Timing {
    /// From the request's start, its first and last token, and the number of tokens (which
    /// may exceed the number of arrivals when a server sends several tokens at once).
    pub fn new(start: Instant, first: Option<Instant>, last: Instant, num_output: usize) -> Result<Self, String> {
        let first = first.ok_or("no token was generated")?;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        Ok(Self {
            ttft_ms: ms(first - start),
            tpot_ms: (num_output > 1).then(|| ms(last - first) / (num_output - 1) as f64),
            e2e_ms: ms(last - start),
            num_output,
        })
    }
}

/// First-touch allocations and page faults of the weights, excluded from every measurement.
fn warm_up<T: Target + ?Sized>(target: &T, prompts: &mut Prompts, prompt_len: usize) -> Result<(), String> {
    target.run_one(&prompts.take(prompt_len.min(16)), 2, &Sampling::default()).map(drop)
}

pub fn run<T: Target + ?Sized>(target: &T, prompts: &mut Prompts, cfg: &BenchConfig) -> Result<BenchReport, String> {
    if cfg.num_prompts == 0 || cfg.concurrency == 0 || cfg.prompt_len == 0 || cfg.output_len == 0 {
        return Err("--num-prompts (--waves), --concurrency, --prompt-len and --output-len must be positive".into());
    }
    let Sampling { temperature, top_p, .. } = cfg.sampling;
    if !(temperature.is_finite() && temperature >= 0.0) {
        return Err(format!("--temperature must be a finite number >= 0, got {temperature}"));
    }
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(format!("--top-p must be in (0, 1], got {top_p}"));
    }
    warm_up(target, prompts, cfg.prompt_len)?;
    let prompts: Vec<Vec<u32>> = (0..cfg.num_prompts).map(|_| prompts.take(cfg.prompt_len)).collect();
    let preemptions_before = target.num_preemptions();
    let counters_before = target.step_counters();
    let phases_before = target.phase_totals();
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
                match target.run_one(&prompts[i], cfg.output_len, &cfg.sampling) {
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
        server: target.name(),
        num_prompts: cfg.num_prompts,
        concurrency: cfg.concurrency,
        prompt_len: cfg.prompt_len,
        output_len: cfg.output_len,
        sampling: cfg.sampling.clone(),
        duration_s: duration,
        num_output_tokens: num_output,
        output_tok_per_s: num_output as f64 / duration,
        total_tok_per_s: (num_output + cfg.num_prompts * cfg.prompt_len) as f64 / duration,
        ttft_ms: Percentiles::of(timings.iter().map(|t| t.ttft_ms).collect()),
        tpot_ms: Percentiles::of(timings.iter().filter_map(|t| t.tpot_ms).collect()),
        e2e_ms: Percentiles::of(timings.iter().map(|t| t.e2e_ms).collect()),
        num_preemptions: target.num_preemptions().zip(preemptions_before).map(|(after, before)| after - before),
        step_times: counters_before
            .zip(target.step_counters())
            .and_then(|(before, after)| StepTimes::between(before, after, phases_before.zip(target.phase_totals()))),
    })
}

/// `num_runs` requests of `prompt_len` tokens (fresh prompts: nothing comes from a prefix
/// cache) and `max_tokens` 1, one after another.
pub fn prefill<T: Target + ?Sized>(target: &T, prompts: &mut Prompts, prompt_len: usize, num_runs: usize) -> Result<PrefillReport, String> {
    if prompt_len == 0 || num_runs == 0 {
        return Err("--prefill-len and --prefill-runs must be positive".into());
    }
    warm_up(target, prompts, prompt_len)?;
    let mut ttfts = Vec::with_capacity(num_runs);
    for _ in 0..num_runs {
        ttfts.push(target.run_one(&prompts.take(prompt_len), 1, &Sampling::default())?.ttft_ms);
    }
    let ttft_ms = Percentiles::of(ttfts).p50;
    Ok(PrefillReport { server: target.name(), prompt_len, num_runs, ttft_ms, prefill_tok_per_s: prompt_len as f64 / (ttft_ms / 1e3) })
}

/// The human-readable table, one row per concurrency level (and one line for prefill).
pub fn table(reports: &[BenchReport], prefill: Option<&PrefillReport>) -> String {
    let mut s = String::from(
        "| server | concurrency | prompts | prompt/output len | output tok/s | total tok/s | TTFT p50 / p99 (ms) | TPOT p50 / p99 (ms) | preemptions |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in reports {
        let preemptions = r.num_preemptions.map_or("-".to_string(), |n| n.to_string());
        s.push_str(&format!(
            "| {} | {} | {} | {}/{} | {:.1} | {:.1} | {:.0} / {:.0} | {:.1} / {:.1} | {} |\n",
            r.server, r.concurrency, r.num_prompts, r.prompt_len, r.output_len, r.output_tok_per_s, r.total_tok_per_s,
            r.ttft_ms.p50, r.ttft_ms.p99, r.tpot_ms.p50, r.tpot_ms.p99, preemptions
        ));
    }
    if let Some(r) = reports.iter().find(|r| r.sampling.temperature > 0.0) {
        let Sampling { temperature, top_p, top_k } = r.sampling;
        s.push_str(&format!("\nsampled: temperature {temperature}, top-p {top_p}, top-k {top_k} (0: off)\n"));
    }
    let steps: Vec<_> = reports.iter().filter_map(|r| Some((r.concurrency, r.step_times.as_ref()?))).collect();
    if !steps.is_empty() {
        s.push_str("\nmean engine step (ms): concurrency: forward issued + waiting for logits + rest = step (steps)\n");
        for (c, t) in steps {
            s.push_str(&format!(
                "  {c}: {:.2} + {:.2} + {:.2} = {:.2} ({})\n",
                t.forward_ms, t.logits_ms, t.other_ms, t.forward_ms + t.logits_ms + t.other_ms, t.num_steps
            ));
            if let Some(phases) = &t.phases {
                let parts: Vec<String> = phases.iter().map(|p| format!("{} {:.2}", p.phase, p.ms)).collect();
                s.push_str(&format!("     phases, each waited for: {}\n", parts.join(", ")));
            }
        }
    }
    if let Some(p) = prefill {
        s.push_str(&format!(
            "\nprefill ({}): {}-token prompt, median TTFT of {} = {:.0} ms -> {:.1} tok/s\n",
            p.server, p.prompt_len, p.num_runs, p.ttft_ms, p.prefill_tok_per_s
        ));
    }
    s
}

/// What `--json` writes.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResults {
    pub server: String,
    pub reports: Vec<BenchReport>,
    pub prefill: Option<PrefillReport>,
}
