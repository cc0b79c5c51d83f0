//! The benchmark drivers end to end with tiny lengths: over HTTP against a real server on
//! loopback, and in-process against the same engine. Counts and shapes only: timings are never
//! asserted.

mod common;

use std::sync::OnceLock;

use common::server::{start, ServerConfig, TestServer};
use qwen_serve::bench::{self, BenchConfig, BenchReport, HttpTarget, Prompts, Sampling, Target};

fn server() -> &'static TestServer {
    static SERVER: OnceLock<TestServer> = OnceLock::new();
    SERVER.get_or_init(|| start(ServerConfig::default()))
}

const TINY: BenchConfig = BenchConfig {
    num_prompts: 2,
    concurrency: 2,
    prompt_len: 8,
    output_len: 4,
    sampling: Sampling { temperature: 0.0, top_p: 1.0, top_k: 0 },
};

/// Qwen's recommended sampling (its generation_config.json), with EOS still ignored.
fn sampled() -> BenchConfig {
    BenchConfig { sampling: Sampling { temperature: 0.7, top_p: 0.8, top_k: 20 }, ..TINY }
}

fn assert_sane(r: &BenchReport) {
    assert_eq!(r.num_output_tokens, TINY.num_prompts * TINY.output_len, "{r:?}");
    assert_eq!((r.num_prompts, r.concurrency, r.prompt_len, r.output_len), (2, 2, 8, 4));
    for (what, p) in [("ttft", &r.ttft_ms), ("tpot", &r.tpot_ms), ("e2e", &r.e2e_ms)] {
        for x in [p.p50, p.p90, p.p99, p.mean] {
            assert!(x.is_finite() && x >= 0.0, "{what}: {x} in {r:?}");
        }
    }
    assert!(r.ttft_ms.p50 <= r.e2e_ms.p99, "the first token comes before the last: {r:?}");
    assert!(r.duration_s.is_finite() && r.duration_s > 0.0 && r.output_tok_per_s.is_finite(), "{r:?}");
}

#[test]
fn http_driver_counts_every_token_of_every_request() {
    let server = server();
    let target = HttpTarget::connect(&server.base).expect("connect");
    assert!(target.name().starts_with("qwen-serve at http://127.0.0.1:"), "{}", target.name());
    let tokenizer = bench::load_tokenizer(common::test_gguf().to_str().unwrap()).expect("tokenizer from GGUF metadata");
    let mut prompts = Prompts::new(tokenizer);
    let report = bench::run(&target, &mut prompts, &TINY).expect("bench over HTTP");
    assert_sane(&report);
    assert_eq!(report.num_preemptions, None, "not observable over HTTP");
    let sampled_report = bench::run(&target, &mut prompts, &sampled()).expect("sampled bench over HTTP");
    assert_sane(&sampled_report);
    assert_eq!(sampled_report.sampling, sampled().sampling);

    let prefill = bench::prefill(&target, &mut prompts, 8, 1).expect("prefill over HTTP");
    assert!(prefill.ttft_ms.is_finite() && prefill.ttft_ms > 0.0 && prefill.prefill_tok_per_s.is_finite(), "{prefill:?}");

    let table = bench::table(&[report], Some(&prefill));
    assert!(table.lines().count() >= 4, "{table}");
    assert!(table.contains("| qwen-serve at http://127.0.0.1:") && table.contains("| 8/4 |"), "{table}");
    assert!(table.contains("8-token prompt"), "{table}");
}

#[test]
fn in_process_driver_counts_every_token_of_every_request() {
    let engine = &server().state.engine;
    let mut prompts = Prompts::new(engine.tokenizer().clone());
    let report = bench::run(engine, &mut prompts, &TINY).expect("bench in-process");
    assert_sane(&report);
    assert!(report.num_preemptions.is_some());
    assert_sane(&bench::run(engine, &mut prompts, &sampled()).expect("sampled bench in-process"));
    for (sampling, flag) in [(Sampling { temperature: -1.0, ..sampled().sampling }, "--temperature"), (Sampling { top_p: 0.0, ..sampled().sampling }, "--top-p")] {
        let err = bench::run(engine, &mut prompts, &BenchConfig { sampling, ..TINY }).unwrap_err();
        assert!(err.starts_with(flag), "{err}");
    }
    assert!(bench::table(&[report], None).contains("| qwen-serve in-process"));
}

#[test]
fn the_tokenizer_alone_matches_the_served_models() {
    let gguf = common::test_gguf();
    let alone = bench::load_tokenizer(gguf.to_str().unwrap()).unwrap();
    let prompt = bench::synthetic_prompt(&alone, 7, 40);
    assert_eq!(prompt.len(), 40);
    assert_eq!(prompt, bench::synthetic_prompt(server().state.engine.tokenizer(), 7, 40));
    let mut prompts = Prompts::new(alone.clone());
    let taken: Vec<Vec<u32>> = (0..12).map(|_| prompts.take(40)).collect();
    assert_eq!(taken[7], prompt, "prompt i is the i-th taken");
    for (i, a) in taken.iter().enumerate() {
        for b in &taken[i + 1..] {
            // Never a whole 16-token prefix-cache block in common.
            let shared = a.iter().zip(b).take_while(|(x, y)| x == y).count();
            assert!(shared < 4, "prompts share {shared} leading tokens: {a:?} {b:?}");
        }
    }
    let err = bench::load_tokenizer("no/such-model.gguf").map(drop).unwrap_err();
    assert!(err.contains("--model must be a local"), "{err}");
}
