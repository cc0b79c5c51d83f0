//! Prometheus metrics (`GET /metrics`): request counts by endpoint and status, latency
//! histograms, and the engine's gauges read at scrape time.

use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::engine::EngineStats;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: String,
    status: u16,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    ttft: Histogram,
    tpot: Histogram,
    e2e: Histogram,
    running: Gauge,
    waiting: Gauge,
    kv_usage: Gauge<f64, AtomicU64>,
    free_blocks: Gauge,
    prefix_hit_tokens: Counter,
    preemptions: Counter,
    prompt_tokens: Counter,
    generated_tokens: Counter,
    draft_tokens: Counter,
    accepted_draft_tokens: Counter,
    /// Brings the counters up to the engine's totals one scrape at a time (two at once would
    /// both add the same difference).
    scrape: Mutex<()>,
}

fn seconds_buckets() -> impl Iterator<Item = f64> {
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0].into_iter()
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("qwen_serve");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("requests", "HTTP requests by endpoint and status", requests.clone());
        let ttft = Histogram::new(seconds_buckets());
        registry.register("time_to_first_token_seconds", "Time from request arrival to the first generated token", ttft.clone());
        let tpot = Histogram::new(seconds_buckets());
        registry.register("time_per_output_token_seconds", "Mean time between generated tokens of a request", tpot.clone());
        let e2e = Histogram::new(seconds_buckets());
        registry.register("e2e_request_latency_seconds", "Time from request arrival to its last token", e2e.clone());
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let running = gauge(&mut registry, "num_requests_running", "Sequences running in the engine");
        let waiting = gauge(&mut registry, "num_requests_waiting", "Sequences waiting for admission");
        let kv_usage = Gauge::<f64, AtomicU64>::default();
        registry.register("kv_cache_usage_ratio", "Fraction of KV blocks held by sequences", kv_usage.clone());
        let free_blocks = gauge(&mut registry, "kv_cache_free_blocks", "KV blocks free or reclaimable");
        // Totals since start are counters (exposed with `_total`), named as vLLM names them.
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let prefix_hit_tokens = counter(&mut registry, "prefix_cache_hits", "Prompt tokens served from the prefix cache");
        let preemptions = counter(&mut registry, "num_preemptions", "Sequences preempted for lack of KV blocks");
        let prompt_tokens = counter(&mut registry, "prompt_tokens", "Prompt tokens computed (not those served from the prefix cache)");
        let generated_tokens = counter(&mut registry, "generation_tokens", "Tokens generated");
        let draft_tokens = counter(&mut registry, "spec_decode_num_draft_tokens", "Draft tokens checked by speculative decoding");
        let accepted_draft_tokens = counter(&mut registry, "spec_decode_num_accepted_tokens", "Draft tokens the model kept");
        Self {
            registry,
            requests,
            ttft,
            tpot,
            e2e,
            running,
            waiting,
            kv_usage,
            free_blocks,
            prefix_hit_tokens,
            preemptions,
            prompt_tokens,
            generated_tokens,
            draft_tokens,
            accepted_draft_tokens,
            scrape: Mutex::new(()),
        }
    }
}

impl Metrics {
    pub fn count_request(&self, endpoint: &str, status: u16) {
        self.requests.get_or_create(&RequestLabels { endpoint: endpoint.to_string(), status }).inc();
    }

    /// Latencies of one finished generation.
    pub fn observe_generation(&self, ttft: Option<Duration>, tpot: Option<Duration>, e2e: Duration) {
        if let Some(t) = ttft {
            self.ttft.observe(t.as_secs_f64());
        }
        if let Some(t) = tpot {
            self.tpot.observe(t.as_secs_f64());
        }
        self.e2e.observe(e2e.as_secs_f64());
    }

    /// The exposition text, with the engine gauges as of now.
    pub fn render(&self, stats: &EngineStats) -> String {
        let _one_at_a_time = self.scrape.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        self.running.set(stats.num_running as i64);
        self.waiting.set(stats.num_waiting as i64);
        self.kv_usage.set(stats.kv_cache_usage as f64);
        self.free_blocks.set(stats.num_free_blocks as i64);
        for (counter, total) in [
            (&self.prefix_hit_tokens, stats.num_prefix_cache_hit_tokens),
            (&self.preemptions, stats.num_preemptions),
            (&self.prompt_tokens, stats.num_prompt_tokens_computed),
            (&self.generated_tokens, stats.num_generated_tokens),
            (&self.draft_tokens, stats.num_draft_tokens),
            (&self.accepted_draft_tokens, stats.num_accepted_draft_tokens),
        ] {
            counter.inc_by((total as u64).saturating_sub(counter.get()));
        }
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
