//! The `qwen-serve` command line.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use qwen_serve::api::server::{router, serve, shutdown_signal, ServerOptions};
use qwen_serve::bench::{self, BenchConfig};
use qwen_serve::cli::{EngineArgs, ModelArgs};
use qwen_serve::engine::{EngineHandle, SamplingParams};
use qwen_serve::generate::generate;
use qwen_serve::loader;

#[derive(Parser)]
#[command(name = "qwen-serve", version, about = "An OpenAI-compatible inference server for Qwen models")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a completion for one prompt and print it to stdout (speed goes to stderr).
    Generate(GenerateArgs),
    /// Serve the OpenAI-compatible HTTP API.
    Serve(ServeArgs),
    /// Measure throughput, TTFT and time per output token at one or more concurrency levels.
    Bench(BenchArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Address to listen on; 0.0.0.0 exposes the server to the network.
    #[arg(long, env = "QWEN_SERVE_HOST", default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0 picks a free one; the chosen address is logged).
    #[arg(long, env = "QWEN_SERVE_PORT", default_value_t = 8000)]
    port: u16,
    /// Require `Authorization: Bearer <key>` on the API (not on /health and /metrics).
    #[arg(long, env = "QWEN_SERVE_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// The model id clients use and /v1/models lists (default: the model's file or repo name).
    #[arg(long)]
    served_model_name: Option<String>,
    /// Allow cross-origin requests from any origin (for browser clients).
    #[arg(long)]
    cors: bool,
    /// Largest accepted request body in bytes.
    #[arg(long, default_value_t = 32 << 20)]
    max_body_bytes: usize,
    /// Qwen3 templates: think before answering unless a request sets
    /// `chat_template_kwargs.enable_thinking`.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    enable_thinking: bool,
    /// Seconds to let running requests finish after SIGTERM / Ctrl-C.
    #[arg(long, default_value_t = 30)]
    shutdown_grace: u64,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(clap::Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt text. Special tokens written in it (such as `<|im_start|>`) are recognised.
    #[arg(long)]
    prompt: String,
    /// Wrap the prompt in the model's chat template as one user message (with the template's
    /// default system prompt) and add the assistant turn header.
    #[arg(long)]
    chat: bool,
    /// The most tokens to generate.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// Sampling temperature; 0 is greedy (deterministic).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    temperature: f32,
    /// Nucleus sampling: sample among the most likely tokens holding this probability mass.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    top_p: f32,
    /// Seed for sampling; the same seed gives the same text.
    #[arg(long)]
    seed: Option<u64>,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(clap::Args)]
struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Benchmark the OpenAI-compatible server at this URL (`http://host:port`, e.g. qwen-serve
    /// or llama.cpp's llama-server) over streamed HTTP instead of the engine in-process.
    /// --model then only supplies the tokenizer (a local .gguf file or model folder), so both
    /// servers get the same token ids; the engine flags are ignored.
    #[arg(long)]
    server: Option<String>,
    /// Concurrent streams; a comma-separated list runs one measurement per level.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 4, 16])]
    concurrency: Vec<usize>,
    /// Requests per level (default: --waves x concurrency).
    #[arg(long)]
    num_prompts: Option<usize>,
    /// Requests per level as a multiple of its concurrency, when --num-prompts is unset: 1 is
    /// one batch of equal requests (what a batched `generate` measures), 2 lets each stream
    /// start a second request as its first ends.
    #[arg(long, default_value_t = 2)]
    waves: usize,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 128)]
    prompt_len: usize,
    /// Output length in tokens (EOS is ignored so every request generates exactly this many).
    #[arg(long, default_value_t = 128)]
    output_len: usize,
    /// Sampling temperature of every request (0: greedy). Sampled requests are unseeded; on a
    /// GPU they take the sampling paths that start there (README, GPU: logits to the host).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Nucleus sampling's mass, in (0, 1] (with --temperature above 0).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Sample among the k most likely tokens only (0: off; with --temperature above 0).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Also measure prefill speed: requests with a prompt of this many tokens and max_tokens 1,
    /// one at a time (0 skips it).
    #[arg(long, default_value_t = 0)]
    prefill_len: usize,
    /// Prefill requests to time; the median is reported (fewer runs, noisier number).
    #[arg(long, default_value_t = 3)]
    prefill_runs: usize,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    #[command(flatten)]
    engine: EngineArgs,
}

/// mimalloc keeps freed memory for reuse: a step's large outputs (a decode step's logits
/// are ~600 KB a sequence on the CPU) would otherwise be mapped and unmapped by glibc every
/// step, each page faulted in again. Test GGUF, one stream, three alternating runs each:
/// 84 / 73 / 75 tok/s with glibc's allocator, 91 / 83 / 87 with mimalloc; a 64-stream step of a
/// small model with Qwen's vocabulary went from 29 to 18 ms.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json_logs = matches!(&cli.command, Command::Serve(a) if a.log_json);
    let default_level = if matches!(cli.command, Command::Serve(_)) { "info" } else { "warn" };
    qwen_serve::cli::init_logging(default_level, json_logs);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Generate(args) => run_generate(args),
        Command::Serve(args) => run_serve(args),
        Command::Bench(args) => run_bench(args),
    }
}

fn run_serve(args: ServeArgs) -> anyhow::Result<()> {
    let engine_config = args.engine.engine_config().map_err(anyhow::Error::msg)?;
    args.engine.init_threads().map_err(anyhow::Error::msg)?;
    let loaded = loader::load(&args.model.model, &args.model.load_options().map_err(anyhow::Error::msg)?)?;
    let engine_config = args.engine.for_device(engine_config, loaded.model.device());
    let engine = EngineHandle::start(loaded, engine_config)?;
    let state = qwen_serve::api::state::AppState::new(engine, args.served_model_name, args.api_key, args.enable_thinking);
    let opts = ServerOptions { max_body_bytes: args.max_body_bytes, cors: args.cors };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let addr = format!("{}:{}", args.host, args.port);
        let listener = tokio::net::TcpListener::bind(&addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr()?;
        tracing::info!(model = %state.model_name, "listening on http://{local}");
        // The line scripts wait for; with --log-json, stderr holds only JSON lines (the
        // `listening on` event above says the same).
        if !args.log_json {
            eprintln!("qwen-serve: serving {} on http://{local}", state.model_name);
        }
        let app = router(state.clone(), &opts);
        serve(listener, app, state, shutdown_signal(), std::time::Duration::from_secs(args.shutdown_grace)).await?;
        anyhow::Ok(())
    })?;
    // In-flight requests may still hold engine threads after the grace period: do not wait.
    std::process::exit(0);
}

fn run_generate(args: GenerateArgs) -> anyhow::Result<()> {
    let params = SamplingParams {
        temperature: args.temperature,
        top_p: args.top_p,
        seed: args.seed,
        max_tokens: args.max_tokens,
        ..Default::default()
    };
    // Flag names in messages: the engine's field names are the API's.
    if let Err(e) = params.validate() {
        bail!("{}", e.replace('`', "").replace("max_tokens", "--max-tokens").replace("top_p", "--top-p").replace("temperature", "--temperature"));
    }
    let engine_config = args.engine.engine_config().map_err(anyhow::Error::msg)?;
    args.engine.init_threads().map_err(anyhow::Error::msg)?;
    let loaded = loader::load(&args.model.model, &args.model.load_options().map_err(anyhow::Error::msg)?)?;
    let engine_config = args.engine.for_device(engine_config, loaded.model.device());
    let engine = EngineHandle::start(loaded, engine_config)?;
    let prompt_text = if args.chat {
        let template = engine.chat_template().context("the model has no chat template; use --prompt without --chat")?;
        let messages = [serde_json::json!({"role": "user", "content": args.prompt})];
        template.render(&messages, None, true, &serde_json::Map::new())?
    } else {
        args.prompt.clone()
    };
    let prompt = engine.tokenizer().encode(&prompt_text)?;
    let num_prompt = prompt.len();
    let stdout = std::io::stdout();
    let out = generate(&engine, prompt, params, |text| {
        let mut lock = stdout.lock();
        lock.write_all(text.as_bytes())?;
        lock.flush()
    })?;
    println!();
    let n = out.tokens.len();
    let ttft = out.time_to_first_token.as_secs_f64();
    eprintln!(
        "prompt: {num_prompt} tokens, first token after {ttft:.2}s ({:.1} tok/s); generated: {n} tokens, {:.1} tok/s after the first; finish: {}",
        num_prompt as f64 / ttft.max(1e-9),
        (n.saturating_sub(1)) as f64 / out.decode_time.as_secs_f64().max(1e-9),
        out.finish_reason.as_str(),
    );
    engine.shutdown();
    Ok(())
}

fn run_bench(args: BenchArgs) -> anyhow::Result<()> {
    let (engine, http) = match &args.server {
        Some(url) => (None, Some(bench::HttpTarget::connect(url).map_err(anyhow::Error::msg)?)),
        None => {
            let engine_config = args.engine.engine_config().map_err(anyhow::Error::msg)?;
            args.engine.init_threads().map_err(anyhow::Error::msg)?;
            let loaded = loader::load(&args.model.model, &args.model.load_options().map_err(anyhow::Error::msg)?)?;
            let engine_config = args.engine.for_device(engine_config, loaded.model.device());
            (Some(EngineHandle::start(loaded, engine_config)?), None)
        }
    };
    let (target, tokenizer): (&dyn bench::Target, _) = match (&engine, &http) {
        (Some(engine), _) => (engine, engine.tokenizer().clone()),
        (None, Some(http)) => (http, bench::load_tokenizer(&args.model.model).map_err(anyhow::Error::msg)?),
        (None, None) => unreachable!("one target is always built"),
    };
    let mut prompts = bench::Prompts::new(tokenizer);
    let mut reports = vec![];
    for &concurrency in &args.concurrency {
        let cfg = BenchConfig {
            num_prompts: args.num_prompts.unwrap_or(args.waves * concurrency),
            concurrency,
            prompt_len: args.prompt_len,
            output_len: args.output_len,
            sampling: bench::Sampling { temperature: args.temperature, top_p: args.top_p, top_k: args.top_k },
        };
        let report = bench::run(target, &mut prompts, &cfg).map_err(anyhow::Error::msg)?;
        eprintln!("concurrency {concurrency}: {:.1} output tok/s", report.output_tok_per_s);
        reports.push(report);
        // Written after every level, so a run cut short keeps what it measured.
        write_json(args.json.as_deref(), &bench::BenchResults { server: target.name(), reports: reports.clone(), prefill: None })?;
    }
    let prefill = match args.prefill_len {
        0 => None,
        len => Some(bench::prefill(target, &mut prompts, len, args.prefill_runs).map_err(anyhow::Error::msg)?),
    };
    print!("{}", bench::table(&reports, prefill.as_ref()));
    write_json(args.json.as_deref(), &bench::BenchResults { server: target.name(), reports, prefill })?;
    if let Some(engine) = engine {
        engine.shutdown();
    }
    Ok(())
}

fn write_json(path: Option<&std::path::Path>, results: &bench::BenchResults) -> anyhow::Result<()> {
    if let Some(path) = path {
        std::fs::write(path, serde_json::to_string_pretty(results)?).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
