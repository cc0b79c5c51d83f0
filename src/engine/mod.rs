//! The serving engine: continuous batching over a paged KV cache.
//!
//! One engine thread owns the model, the KV cache and every sequence; callers reach it through
//! a cheap-to-clone [`EngineHandle`]. Each step reads as three calls: `schedule` (which
//! sequences run on how many tokens), `execute` (one forward over all of them), `update`
//! (sample, detokenize, stop, stream events, free finished sequences).

pub mod block_manager;
pub mod constraint;
mod core;
pub mod json_object;
pub mod json_schema;
pub mod kv_budget;
pub mod outbox;
pub mod grammar;
pub mod regex_format;
pub mod request;
pub mod runner;
pub mod sampler;
pub mod sampling_defaults;
pub mod scheduler;
pub mod sequence;
pub mod speculative;
pub mod stop;
pub mod thinking;
pub mod tool_calls;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use qwen_serve_models::{KvCache, ModelError};
use thiserror::Error;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

pub use request::{EngineRequest, Event, FinishReason, RequestId, StopReason, Usage};
pub use sampler::SamplingParams;

use crate::loader::LoadedModel;
use crate::tokenizer::{ChatTemplate, Tokenizer};

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Tokens per KV block.
    pub block_size: usize,
    /// Bytes of KV cache (keys and values of all layers): on the CPU, and on a GPU when
    /// `gpu_memory_utilization` is `None`.
    pub kv_cache_bytes: usize,
    /// On a GPU, size the KV cache from the memory left after loading: this fraction of the
    /// whole GPU minus what is in use (see [`kv_budget::gpu_kv_cache_bytes`]).
    pub gpu_memory_utilization: Option<f64>,
    /// Token budget of one step, shared by decodes and prefill chunks.
    pub max_num_batched_tokens: usize,
    /// Most sequences running at once.
    pub max_num_seqs: usize,
    /// Most requests waiting for admission; beyond it `submit` fails with `QueueFull` (429).
    pub max_waiting: usize,
    pub enable_prefix_caching: bool,
    /// The KV cache's dtype; the model's activation dtype when `None`.
    pub kv_cache_dtype: Option<candle_core::DType>,
    /// The longest sequence (prompt + output) served: the model's context length when `None`,
    /// at most that.
    pub max_model_len: Option<usize>,
    /// Speculative decoding by prompt lookup (`--speculative-config`); off when `None`.
    pub speculative: Option<speculative::SpeculativeConfig>,
    /// Whether sampling starts where the logits are: a row whose draw needs only its top k
    /// (greedy after penalties or bias, top-k sampling) reaches the sampler as its best
    /// candidates, and a plain whole-vocabulary draw (temperature, min-p) is made there with the
    /// sequence's own RNG. `None`: on a GPU only (it saves a vocabulary-sized copy to the host
    /// per row; on the CPU the row is read in place). The tokens are the same either way (on
    /// a GPU up to `expf`'s last bits); `Some(true)` runs the GPU's way on the CPU (tests).
    pub sample_on_device: Option<bool>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            block_size: 16,
            kv_cache_bytes: 2 << 30,
            gpu_memory_utilization: None,
            max_num_batched_tokens: 512,
            max_num_seqs: 64,
            max_waiting: 1024,
            enable_prefix_caching: true,
            kv_cache_dtype: None,
            max_model_len: None,
            speculative: None,
            sample_on_device: None,
        }
    }
}

#[derive(Debug, Error, Clone, PartialEq)]
pub enum SubmitError {
    #[error("{0}")]
    Invalid(String),
    /// Worded as vLLM and OpenAI word it ("maximum context length"), which clients match on.
    #[error("This model's maximum context length is {context} tokens. However, you requested {} tokens ({prompt} in the prompt, {max_tokens} for max_tokens). Please reduce the length of the prompt or max_tokens.", .prompt + .max_tokens)]
    TooLong { prompt: usize, max_tokens: usize, context: usize },
    #[error("prompt ({prompt} tokens) + max_tokens ({max_tokens}) needs {blocks_needed} KV blocks; the cache has {num_blocks} (raise --kv-cache-memory, or --gpu-memory-utilization on a GPU)")]
    CannotFit { prompt: usize, max_tokens: usize, blocks_needed: usize, num_blocks: usize },
    #[error("the waiting queue is full ({0} requests); retry later")]
    QueueFull(usize),
    #[error("the engine is shutting down")]
    ShuttingDown,
}

#[derive(Debug, Error)]
pub enum EngineError {
    #[error("KV cache of {bytes} bytes holds no block of {block_bytes} bytes (raise --kv-cache-memory)")]
    CacheTooSmall { bytes: usize, block_bytes: usize },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("invalid engine config: {0}")]
    Config(String),
    #[error(
        "no room for the KV cache: --gpu-memory-utilization {util} allows {allowed_gib:.2} GiB of the GPU's \
         {total_gib:.2} GiB and {used_gib:.2} GiB in use already (weights, CUDA runtime, other processes); \
         raise --gpu-memory-utilization or set --kv-cache-memory"
    )]
    NoRoomForKvCache { util: f64, allowed_gib: f64, total_gib: f64, used_gib: f64 },
    #[error("{0}")]
    Device(String),
    #[error("--kv-cache-memory {gib:.2} GiB does not fit in the {room_gib:.2} GiB of memory left after loading the model; lower --kv-cache-memory")]
    KvCacheTooLarge { gib: f64, room_gib: f64 },
}

/// A snapshot of the engine's counters (for metrics and tests).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineStats {
    pub num_running: usize,
    pub num_waiting: usize,
    pub num_blocks: usize,
    pub num_free_blocks: usize,
    pub kv_cache_usage: f32,
    pub num_preemptions: usize,
    pub num_prefix_cache_hit_tokens: usize,
    pub num_prompt_tokens_computed: usize,
    pub num_generated_tokens: usize,
    /// Draft tokens checked by speculative decoding, and how many of them the model kept.
    pub num_draft_tokens: usize,
    pub num_accepted_draft_tokens: usize,
    pub num_steps: usize,
    /// Seconds, summed over steps: issuing the model's forward (on a GPU, launching its
    /// kernels; on the CPU, running it) ...
    pub forward_seconds: f64,
    /// ... then waiting for its logits (on a GPU, the device finishing the launched work) ...
    pub logits_seconds: f64,
    /// ... and whole steps, scheduling and sampling included.
    pub step_seconds: f64,
}

pub(crate) enum Command {
    Submit { request_id: RequestId, request: EngineRequest, events: tokio::sync::mpsc::UnboundedSender<Event>, cached: Arc<AtomicUsize> },
    /// End every request now (`Event::Finished` with `FinishReason::Abort`).
    AbortAll,
    Shutdown,
}

struct Shared {
    stats: Mutex<EngineStats>,
    /// Submitted but not yet taken into the scheduler's queue.
    num_pending: AtomicUsize,
    shutting_down: AtomicBool,
    next_request_id: AtomicU64,
}

/// Events of one request (all its choices). Dropping it aborts the request at the next step
/// and frees its blocks.
pub struct RequestStream {
    pub request_id: RequestId,
    pub num_prompt_tokens: usize,
    rx: UnboundedReceiver<Event>,
    /// The first choice's prompt tokens found in the prefix cache, set at its admission.
    cached: Arc<AtomicUsize>,
}

impl RequestStream {
    /// Prompt tokens served from the prefix cache: known once the request is admitted, so by
    /// its first event (0 before). `Usage::num_cached_tokens` gives the final count.
    pub fn num_cached_tokens(&self) -> usize {
        self.cached.load(Ordering::Acquire)
    }

    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// For synchronous callers (CLI, benchmark, tests).
    pub fn blocking_recv(&mut self) -> Option<Event> {
        self.rx.blocking_recv()
    }
}

#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
    tokenizer: Arc<Tokenizer>,
    chat_template: Option<Arc<ChatTemplate>>,
    model_name: String,
    sampling_defaults: sampling_defaults::SamplingDefaults,
    max_context: usize,
    vocab_size: usize,
    hidden_size: usize,
    num_blocks: usize,
    config: EngineConfig,
}

impl EngineHandle {
    /// Sizes the KV cache, moves the model onto the engine thread and starts it.
    pub fn start(loaded: LoadedModel, config: EngineConfig) -> Result<Self, EngineError> {
        if config.block_size == 0 || config.max_num_batched_tokens == 0 || config.max_num_seqs == 0 {
            return Err(EngineError::Config("block size, token budget and max sequences must be positive".into()));
        }
        let model = loaded.model;
        let cfg = model.config().clone();
        let context = cfg.context_length();
        let max_context = match config.max_model_len {
            None => context,
            Some(n) if n == 0 || n > context => {
                return Err(EngineError::Config(format!(
                    "`--max-model-len` {n} must be in [1, {context}], the model's context length (`max_position_embeddings`, stretched by its rope scaling)"
                )))
            }
            Some(n) => n,
        };
        let kv_dtype = config.kv_cache_dtype.unwrap_or(model.dtype());
        let block_bytes = KvCache::bytes_per_block(&cfg, config.block_size, kv_dtype);
        let (kv_cache_bytes, why) = kv_budget::kv_cache_bytes(&config, model.device(), block_bytes)?;
        let num_blocks = kv_cache_bytes / block_bytes;
        if num_blocks == 0 {
            return Err(EngineError::CacheTooSmall { bytes: kv_cache_bytes, block_bytes });
        }
        let cache = KvCache::new(&cfg, num_blocks, config.block_size, kv_dtype, model.device())?;
        tracing::info!(
            "KV cache: {num_blocks} blocks of {} tokens ({} tokens, {:?}): {why}",
            config.block_size,
            num_blocks * config.block_size,
            kv_dtype,
        );
        if num_blocks * config.block_size < max_context {
            tracing::warn!(
                "the KV cache holds {} tokens, fewer than the {max_context}-token context: longer requests are refused and chat's default max_tokens stops there (raise --kv-cache-memory, or set --max-model-len)",
                num_blocks * config.block_size
            );
        }
        // Decode steps of up to QWEN_SERVE_CUDA_GRAPHS (default 64; 0: none) sequences as CUDA graphs, on a GPU.
        let model = qwen_serve_models::with_cuda_graphs(model, qwen_serve_models::max_graph_batch().map_err(EngineError::Config)?)?;
        // Weights and cache were written from this thread; the engine thread reads them.
        model.device().synchronize().map_err(ModelError::from)?;
        let shared = Arc::new(Shared {
            stats: Mutex::new(EngineStats { num_blocks, num_free_blocks: num_blocks, ..Default::default() }),
            num_pending: AtomicUsize::new(0),
            shutting_down: AtomicBool::new(false),
            next_request_id: AtomicU64::new(0),
        });
        let tokenizer = Arc::new(loaded.tokenizer);
        let chat_template = loaded.chat_template.map(Arc::new);
        let model_name = loaded.name;
        let sampling_defaults = loaded.sampling_defaults;
        let (tx, rx) = mpsc::channel();
        let mut core = core::EngineCore::new(model, cache, &config, tokenizer.clone(), loaded.eos_token_ids, shared.clone());
        let thread = std::thread::Builder::new()
            .name("qwen-serve-engine".into())
            .spawn(move || core.run(rx))
            .expect("spawn engine thread");
        Ok(Self {
            tx,
            shared,
            thread: Arc::new(Mutex::new(Some(thread))),
            tokenizer,
            chat_template,
            model_name,
            sampling_defaults,
            max_context,
            vocab_size: cfg.vocab_size,
            hidden_size: cfg.hidden_size,
            num_blocks,
            config,
        })
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_deref()
    }

    pub fn model_name(&self) -> &str {
        &self.model_name
    }

    /// What a request that leaves a sampling field out gets (the model's generation config).
    pub fn sampling_defaults(&self) -> &sampling_defaults::SamplingDefaults {
        &self.sampling_defaults
    }

    /// The width of the model's hidden states (an embedding's length).
    pub fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    /// Token ids a prompt may hold: `0..vocab_size`.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn max_context(&self) -> usize {
        self.max_context
    }

    /// The longest sequence a request can have now: the context, or fewer tokens where the KV
    /// cache holds fewer (a 4x YaRN context can outgrow it).
    pub fn max_sequence_tokens(&self) -> usize {
        self.max_context.min(self.num_blocks * self.config.block_size)
    }

    /// `max_tokens` for a request that leaves it out where the API has no default of its own:
    /// as long as the sequence can grow (at least 1, so a prompt that already fills it is
    /// refused as too long).
    pub fn default_max_tokens(&self, prompt_len: usize) -> usize {
        self.max_sequence_tokens().saturating_sub(prompt_len).max(1)
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn stats(&self) -> EngineStats {
        self.shared.stats.lock().expect("stats lock").clone()
    }

    /// Refuses a request of `num_prompts` prompts of `n` choices each that could never be
    /// queued, even on an idle engine (see [`fits_waiting_queue`]). Callers submitting several
    /// prompts check this first; `submit` checks its own `n`.
    pub fn check_fits_waiting_queue(&self, num_prompts: usize, n: usize) -> Result<(), SubmitError> {
        fits_waiting_queue(num_prompts, n, self.config.max_waiting)
    }

    /// Checks the request against the model and the cache, then queues it.
    pub fn submit(&self, request: EngineRequest) -> Result<RequestStream, SubmitError> {
        if self.shared.shutting_down.load(Ordering::Acquire) {
            return Err(SubmitError::ShuttingDown);
        }
        request.params.validate().map_err(SubmitError::Invalid)?;
        self.check_fits_waiting_queue(1, request.params.n.max(1))?;
        let prompt = request.prompt.len();
        if prompt == 0 {
            return Err(SubmitError::Invalid("the prompt is empty".into()));
        }
        if let Some(id) = request.prompt.iter().chain(&request.params.score_tokens).find(|&&id| id as usize >= self.vocab_size) {
            return Err(SubmitError::Invalid(format!("token id {id} is outside the vocabulary (0..{})", self.vocab_size)));
        }
        let max_tokens = request.params.max_tokens;
        if prompt + max_tokens > self.max_context {
            return Err(SubmitError::TooLong { prompt, max_tokens, context: self.max_context });
        }
        let blocks_needed = (prompt + max_tokens).div_ceil(self.config.block_size);
        if blocks_needed > self.num_blocks {
            return Err(SubmitError::CannotFit { prompt, max_tokens, blocks_needed, num_blocks: self.num_blocks });
        }
        let queued = self.shared.num_pending.load(Ordering::Acquire) + self.stats().num_waiting;
        if queued >= self.config.max_waiting {
            return Err(SubmitError::QueueFull(self.config.max_waiting));
        }
        let request_id = self.shared.next_request_id.fetch_add(1, Ordering::Relaxed);
        let (events, rx) = unbounded_channel();
        self.shared.num_pending.fetch_add(1, Ordering::AcqRel);
        let cached = Arc::new(AtomicUsize::new(0));
        self.tx.send(Command::Submit { request_id, request, events, cached: cached.clone() }).map_err(|_| SubmitError::ShuttingDown)?;
        Ok(RequestStream { request_id, num_prompt_tokens: prompt, rx, cached })
    }

    /// From now on `submit` fails with `ShuttingDown`; running requests go on.
    pub fn begin_shutdown(&self) {
        self.shared.shutting_down.store(true, Ordering::Release);
    }

    /// Ends every running and waiting request now: each gets its `Finished` event with
    /// `FinishReason::Abort` (a shutdown whose grace period is over, so clients see why their
    /// output ends).
    pub fn abort_all(&self) {
        let _ = self.tx.send(Command::AbortAll);
    }

    /// Stops accepting requests, lets the running ones finish, and waits for the engine thread.
    pub fn shutdown(&self) {
        self.begin_shutdown();
        let _ = self.tx.send(Command::Shutdown);
        if let Some(t) = self.thread.lock().expect("thread lock").take() {
            let _ = t.join();
        }
    }
}

/// Each choice of each prompt waits as one sequence, so a request of more than `max_waiting` of
/// them meets a full queue on an idle engine too: that is the request's fault (a 400 naming
/// `prompt` or `n`), not a 429 a client would retry forever. One that fits may still meet a
/// queue that others fill (429).
fn fits_waiting_queue(num_prompts: usize, n: usize, max_waiting: usize) -> Result<(), SubmitError> {
    let sequences = num_prompts.saturating_mul(n);
    if sequences <= max_waiting {
        return Ok(());
    }
    Err(SubmitError::Invalid(if num_prompts <= 1 || n > max_waiting {
        format!("`n` must be at most {max_waiting}, the waiting queue's size (--max-waiting), got {n}")
    } else {
        let most = match max_waiting / n {
            1 => "one prompt".to_string(),
            m => format!("{m} prompts"),
        };
        format!("`prompt` holds {num_prompts} prompts of n = {n} choices, {sequences} sequences; the waiting queue holds at most {max_waiting} (--max-waiting): send at most {most} per request")
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_larger_than_the_waiting_queue_is_invalid() {
        assert_eq!(fits_waiting_queue(1024, 1, 1024), Ok(()));
        assert_eq!(fits_waiting_queue(512, 2, 1024), Ok(()));
        let too_many = fits_waiting_queue(1100, 1, 1024).unwrap_err();
        let SubmitError::Invalid(message) = &too_many else { panic!("{too_many:?}") };
        assert!(message.starts_with("`prompt` holds 1100 prompts") && message.contains("at most 1024") && message.ends_with("send at most 1024 prompts per request"), "{message}");
        let e = fits_waiting_queue(2, 600, 1024).unwrap_err();
        assert!(e.to_string().starts_with("`prompt` holds 2 prompts") && e.to_string().ends_with("send at most one prompt per request"), "{e}");
        for (prompts, n) in [(1, 1025), (3, 2000)] {
            let e = fits_waiting_queue(prompts, n, 1024).unwrap_err();
            assert!(e.to_string().starts_with("`n` must be at most 1024"), "{e}");
        }
        // The 400's `param` comes from the leading name.
        let api: crate::error::ApiError = too_many.into();
        assert_eq!((api.status.as_u16(), api.param.as_deref()), (400, Some("prompt")));
    }
}
