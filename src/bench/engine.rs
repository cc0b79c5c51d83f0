//! The in-process target: requests go straight to the engine, no HTTP.

use std::time::Instant;

use super::{Sampling, Target, Timing};
use crate::engine::{EngineHandle, EngineRequest, Event, SamplingParams};

impl Target for EngineHandle {
    fn name(&self) -> String {
        format!("qwen-serve in-process ({})", self.model_name())
    }

    fn run_one(&self, prompt: &[u32], output_len: usize, sampling: &Sampling) -> Result<Timing, String> {
        let params = SamplingParams {
            max_tokens: output_len,
            ignore_eos: true,
            temperature: sampling.temperature,
            top_p: sampling.top_p,
            top_k: sampling.top_k,
            ..Default::default()
        };
        let start = Instant::now();
        let mut stream = self.submit(EngineRequest { prompt: prompt.to_vec(), params }).map_err(|e| e.to_string())?;
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
                Event::PromptLogprobs(_) | Event::Pooled { .. } => {}
            }
        }
        Timing::new(start, first, last, n)
    }

    fn num_preemptions(&self) -> Option<usize> {
        Some(self.stats().num_preemptions)
    }

    fn step_counters(&self) -> Option<(usize, f64, f64, f64)> {
        let s = self.stats();
        Some((s.num_steps, s.forward_seconds, s.logits_seconds, s.step_seconds))
    }

    fn phase_totals(&self) -> Option<super::PhaseTotals> {
        qwen_serve_models::phase_times::enabled().then(qwen_serve_models::phase_times::totals)
    }
}
