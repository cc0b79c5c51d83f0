//! The `qwen-serve` command line.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use qwen_serve::cli::ModelArgs;
use qwen_serve::engine::sampler::SamplingParams;
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    qwen_serve::cli::init_logging();
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
    }
}

fn run_generate(args: GenerateArgs) -> anyhow::Result<()> {
    if !(args.temperature >= 0.0 && args.temperature.is_finite()) {
        bail!("--temperature must be a finite number >= 0, got {}", args.temperature);
    }
    if !(args.top_p > 0.0 && args.top_p <= 1.0) {
        bail!("--top-p must be in (0, 1], got {}", args.top_p);
    }
    if args.max_tokens == 0 {
        bail!("--max-tokens must be at least 1");
    }
    let loaded = loader::load(&args.model.model, &args.model.load_options())?;
    let prompt_text = if args.chat {
        let template = loaded.chat_template.as_ref().context("the model has no chat template; use --prompt without --chat")?;
        let messages = [serde_json::json!({"role": "user", "content": args.prompt})];
        template.render(&messages, None, true, &serde_json::Map::new())?
    } else {
        args.prompt.clone()
    };
    let prompt = loaded.tokenizer.encode(&prompt_text)?;
    let sampling = SamplingParams { temperature: args.temperature, top_p: args.top_p, seed: args.seed };
    let stdout = std::io::stdout();
    let out = generate(&loaded, &prompt, args.max_tokens, &sampling, |text| {
        let mut lock = stdout.lock();
        lock.write_all(text.as_bytes())?;
        lock.flush()
    })?;
    println!();
    let n = out.tokens.len();
    eprintln!(
        "prompt: {} tokens in {:.2}s ({:.1} tok/s); generated: {n} tokens in {:.2}s ({:.1} tok/s); finish: {:?}",
        prompt.len(),
        out.prefill_time.as_secs_f64(),
        prompt.len() as f64 / out.prefill_time.as_secs_f64(),
        out.decode_time.as_secs_f64(),
        n as f64 / out.decode_time.as_secs_f64().max(1e-9),
        out.finish_reason,
    );
    Ok(())
}
