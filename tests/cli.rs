//! The `qwen-serve` binary: real output on stdout only, and a one-line error with a non-zero
//! exit (never a panic) for every bad input.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use common::test_gguf;

fn qwen_serve(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_qwen-serve"));
    cmd.args(args);
    // Backtraces are what a user asks for with RUST_BACKTRACE; the default is one line.
    cmd.env_remove("RUST_BACKTRACE").env_remove("RUST_LIB_BACKTRACE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run qwen-serve")
}

/// Runs `generate` on `model` and returns its single stderr line, asserting the failure shape.
fn generate_error(model: &str, env: &[(&str, &str)]) -> String {
    let out = qwen_serve(&["generate", "--model", model, "--prompt", "hi", "--max-tokens", "1"], env);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "expected failure for {model}, stderr: {stderr}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty(), "stdout must stay empty on error");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    lines[0].to_string()
}

#[test]
fn missing_file_is_named() {
    let e = generate_error("/nonexistent/model.gguf", &[]);
    assert!(e.contains("/nonexistent/model.gguf") && e.contains("no such file"), "{e}");
}

#[test]
fn a_file_of_the_wrong_format_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, "just some text, not weights").unwrap();
    let e = generate_error(path.to_str().unwrap(), &[]);
    assert!(e.contains("not a GGUF file"), "{e}");
}

#[test]
fn a_folder_without_config_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let e = generate_error(dir.path().to_str().unwrap(), &[]);
    assert!(e.contains("no config.json"), "{e}");
}

#[test]
fn unsupported_architecture_in_a_folder_lists_the_supported_ones() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), r#"{"model_type": "llama", "hidden_size": 64}"#).unwrap();
    let e = generate_error(dir.path().to_str().unwrap(), &[]);
    assert!(e.contains("unsupported architecture `llama`") && e.contains("qwen2, qwen3"), "{e}");
}

/// A well-formed GGUF (written with candle's writer) whose architecture we do not serve.
#[test]
fn unsupported_architecture_in_a_gguf_lists_the_supported_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("llama.gguf");
    let t = QTensor::quantize(&Tensor::zeros((4, 32), candle_core::DType::F32, &Device::Cpu).unwrap(), GgmlDType::F32).unwrap();
    let arch = Value::String("llama".into());
    let mut f = std::fs::File::create(&path).unwrap();
    gguf_file::write(&mut f, &[("general.architecture", &arch)], &[("token_embd.weight", &t)]).unwrap();
    drop(f);
    let e = generate_error(path.to_str().unwrap(), &[]);
    assert!(e.contains("unsupported architecture `llama`") && e.contains("qwen2, qwen3"), "{e}");
}

#[test]
fn corrupt_gguf_header_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corrupt.gguf");
    let mut bytes = b"GGUF".to_vec();
    bytes.extend((0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8));
    std::fs::write(&path, bytes).unwrap();
    let e = generate_error(path.to_str().unwrap(), &[]);
    assert!(e.contains("corrupt GGUF header"), "{e}");
}

#[test]
fn truncated_gguf_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("truncated.gguf");
    let mut bytes = std::fs::read(test_gguf()).unwrap();
    bytes.truncate(20 << 20);
    std::fs::write(&path, bytes).unwrap();
    let e = generate_error(path.to_str().unwrap(), &[]);
    assert!(e.contains("truncated"), "{e}");
}

#[test]
fn unreachable_hub_names_the_offline_alternatives() {
    let home = tempfile::tempdir().unwrap();
    let hf_home = home.path().to_str().unwrap();
    // Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
    let e = generate_error("Qwen/Qwen2.5-0.5B-Instruct", &[("HF_HOME", hf_home), ("HF_ENDPOINT", "http://127.0.0.1:9")]);
    assert!(e.contains("Qwen/Qwen2.5-0.5B-Instruct") && e.contains("offline alternatives"), "{e}");
    let e = generate_error("Qwen/Qwen2.5-0.5B-Instruct", &[("HF_HOME", hf_home), ("HF_HUB_OFFLINE", "1")]);
    assert!(e.contains("not in the Hugging Face cache") && e.contains("offline alternatives"), "{e}");
}

#[test]
fn out_of_range_sampling_flags_are_rejected() {
    let model = test_gguf();
    let model = model.to_str().unwrap();
    for (flag, value, message) in [("--top-p", "0", "--top-p"), ("--temperature", "-1", "--temperature"), ("--max-tokens", "0", "--max-tokens")] {
        let out = qwen_serve(&["generate", "--model", model, "--prompt", "hi", flag, value], &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(message) && !stderr.contains("panicked"), "{flag}: {stderr}");
    }
}

#[test]
fn generate_prints_only_the_text_on_stdout() {
    let model = test_gguf();
    // transformers' greedy continuation of this prompt (gguf_reference.json) starts "\n    if len(arr) <= 1:".
    let out = qwen_serve(&["generate", "--model", model.to_str().unwrap(), "--prompt", "def quicksort(arr):", "--max-tokens", "8"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.starts_with("\n    if len(arr) <="), "{stdout:?}");
    assert!(!stdout.contains("tok/s"), "{stdout:?}");
    assert!(stderr.contains("tok/s"), "{stderr}");
}

/// `owner/name:TAG` picks a GGUF file of a Hub repository by its quantization, here from a
/// Hugging Face cache laid out as hf-hub writes it (`HF_HUB_OFFLINE=1`: no network); without a
/// tag, or with one no file carries, the error lists the quantizations there are.
#[test]
fn a_hub_gguf_is_picked_by_its_quantization() {
    let home = tempfile::tempdir().unwrap();
    let repo = home.path().join("hub/models--qwen-serve--Test-Coder-GGUF");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123abcd").unwrap();
    let snapshot = repo.join("snapshots/0123abcd");
    std::fs::create_dir_all(snapshot.join("Q8_0")).unwrap();
    std::os::unix::fs::symlink(test_gguf(), snapshot.join("test-coder-q4_k_m.gguf")).unwrap();
    std::fs::write(snapshot.join("Q8_0/test-coder-Q8_0-00001-of-00002.gguf"), b"not read").unwrap();
    std::fs::write(snapshot.join("README.md"), b"#").unwrap();
    let env = [("HF_HOME", home.path().to_str().unwrap()), ("HF_HUB_OFFLINE", "1")];

    let out = qwen_serve(&["generate", "--model", "qwen-serve/Test-Coder-GGUF:Q4_K_M", "--prompt", "def quicksort(arr):", "--max-tokens", "8"], &env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(String::from_utf8(out.stdout).unwrap().starts_with("\n    if len(arr) <="), "{stderr}");

    let e = generate_error("qwen-serve/Test-Coder-GGUF", &env);
    assert!(e.contains("holds GGUF files") && e.contains("`qwen-serve/Test-Coder-GGUF:Q4_K_M`") && e.contains("available: Q4_K_M, Q8_0"), "{e}");
    let e = generate_error("qwen-serve/Test-Coder-GGUF:Q5_K_M", &env);
    assert!(e.contains("no GGUF file for `Q5_K_M`; available: Q4_K_M, Q8_0"), "{e}");
    let e = generate_error("qwen-serve/Missing-GGUF:Q4_K_M", &env);
    assert!(e.contains("not in the Hugging Face cache"), "{e}");
}

#[test]
fn chat_flag_applies_the_template() {
    let model = test_gguf();
    let out = qwen_serve(&["generate", "--model", model.to_str().unwrap(), "--chat", "--prompt", "Say hello.", "--max-tokens", "12"], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    // Without the template the model continues the raw text; with it, it answers.
    assert!(stdout.to_lowercase().contains("hello"), "{stdout:?}");
    assert!(!stdout.contains("<|im_start|>") && !Path::new(&stdout).exists());
}

/// `qwen-serve <subcommand> ARGS` that must fail before loading anything: a non-zero exit, no
/// panic, stdout empty; returns stderr.
fn flag_error(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = qwen_serve(args, env);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "expected failure for {args:?}, stderr: {stderr}");
    assert!(out.stdout.is_empty() && !stderr.contains("panicked"), "{stderr}");
    stderr
}

#[cfg(not(feature = "cuda"))]
#[test]
fn a_cpu_build_refuses_cuda_and_says_how_to_build_one() {
    let model = test_gguf();
    let model = model.to_str().unwrap();
    for device in ["cuda", "cuda:1"] {
        let e = generate_error_with(&["--model", model, "--device", device], &[]);
        assert!(e.contains("--device cuda:") && e.contains("without CUDA support") && e.contains("scripts/build-cuda.sh"), "{e}");
    }
    // The environment variable is the same flag.
    let e = generate_error(model, &[("QWEN_SERVE_DEVICE", "cuda")]);
    assert!(e.contains("without CUDA support"), "{e}");
    for args in [&["serve", "--model", model, "--device", "cuda", "--port", "0"][..], &["bench", "--model", model, "--device", "cuda"]] {
        let stderr = flag_error(args, &[]);
        assert!(stderr.contains("without CUDA support"), "{args:?}: {stderr}");
    }
}

/// `generate --prompt hi --max-tokens 1 ARGS`, asserting one `error:` line and exit code 1.
fn generate_error_with(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut all = vec!["generate", "--prompt", "hi", "--max-tokens", "1"];
    all.extend_from_slice(args);
    let stderr = flag_error(&all, env);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    lines[0].to_string()
}

#[test]
fn bad_device_names_are_rejected_naming_the_flag() {
    let model = test_gguf();
    for device in ["gpu", "cuda:x", "cuda:", "CPU"] {
        let stderr = flag_error(&["generate", "--model", model.to_str().unwrap(), "--prompt", "hi", "--device", device], &[]);
        assert!(stderr.contains("invalid value") && stderr.contains("--device") && stderr.contains("cuda:N"), "{device}: {stderr}");
    }
}

#[test]
fn unknown_kv_cache_dtypes_are_rejected_naming_the_flag() {
    let model = test_gguf();
    for dtype in ["f8", "fp16", "F16"] {
        let stderr = flag_error(&["generate", "--model", model.to_str().unwrap(), "--prompt", "hi", "--kv-cache-dtype", dtype], &[]);
        assert!(stderr.contains("invalid value") && stderr.contains("--kv-cache-dtype") && stderr.contains("bf16"), "{dtype}: {stderr}");
    }
}

#[test]
fn unknown_generation_config_values_are_rejected_naming_the_flag() {
    let model = test_gguf();
    let stderr = flag_error(&["serve", "--model", model.to_str().unwrap(), "--generation-config", "model"], &[]);
    assert!(stderr.contains("invalid value") && stderr.contains("--generation-config") && stderr.contains("auto") && stderr.contains("vllm"), "{stderr}");
}

#[test]
fn out_of_range_memory_flags_are_rejected_naming_the_flag() {
    let model = test_gguf();
    let model = model.to_str().unwrap();
    for value in ["0", "1.5", "-0.2", "nan"] {
        let e = generate_error_with(&["--model", model, "--gpu-memory-utilization", value], &[]);
        assert!(e.contains("--gpu-memory-utilization must be in (0, 1]"), "{value}: {e}");
    }
    for value in ["0", "-1"] {
        let e = generate_error_with(&["--model", model, "--kv-cache-memory", value], &[]);
        assert!(e.contains("--kv-cache-memory must be a positive number"), "{value}: {e}");
    }
    // More than the machine has: refused at startup, not an abort or a cache that grows into
    // the OOM killer.
    for value in ["100000", "1e9"] {
        let e = generate_error_with(&["--model", model, "--kv-cache-memory", value], &[]);
        assert!(e.contains("does not fit in the") && e.contains("lower --kv-cache-memory"), "{value}: {e}");
    }
}

#[test]
fn bad_rope_scaling_is_rejected_naming_the_flag() {
    let model = test_gguf();
    let model = model.to_str().unwrap();
    for (value, message) in [
        ("yarn", "--rope-scaling is not JSON"),
        ("[1]", "--rope-scaling must be a JSON object"),
        (r#"{"rope_type": "dynamic", "factor": 2}"#, "invalid model config: --rope-scaling: `rope_scaling`: rope type `dynamic` is not supported"),
        (r#"{"rope_type": "yarn", "factor": 0.5}"#, "`factor` must be at least 1"),
    ] {
        let e = generate_error_with(&["--model", model, "--rope-scaling", value], &[]);
        assert!(e.contains(message), "{value}: {e}");
    }
}

#[test]
fn device_cpu_runs_on_the_cpu() {
    let model = test_gguf();
    let out = qwen_serve(&["generate", "--model", model.to_str().unwrap(), "--device", "cpu", "--prompt", "def quicksort(arr):", "--max-tokens", "3"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(String::from_utf8(out.stdout).unwrap().starts_with("\n    if"), "{stderr}");
}

#[test]
fn every_model_subcommand_takes_the_device_flags() {
    for sub in ["serve", "generate", "bench"] {
        let out = qwen_serve(&[sub, "--help"], &[]);
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{sub}");
        for flag in ["--device <DEVICE>", "--gpu-memory-utilization", "--kv-cache-memory", "--kv-cache-dtype"] {
            assert!(help.contains(flag), "{sub} --help lacks {flag}");
        }
    }
}

#[test]
fn bad_speculative_configs_are_rejected_naming_the_flag() {
    let model = test_gguf();
    let model = model.to_str().unwrap();
    for (value, message) in [
        ("ngram", "--speculative-config is not JSON"),
        (r#"{"method": "draft_model", "num_speculative_tokens": 3}"#, "method \"draft_model\" is not supported"),
        (r#"{"method": "ngram"}"#, "\"num_speculative_tokens\" is required"),
        (r#"{"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 0}"#, "prompt_lookup_min"),
    ] {
        let e = generate_error_with(&["--model", model, "--speculative-config", value], &[]);
        assert!(e.contains(message), "{value}: {e}");
    }
}

/// `generate --speculative-config` prints what plain `generate` prints.
#[test]
fn speculative_generate_prints_the_plain_output() {
    let model = test_gguf();
    let prompt = "def add(a, b):\n    return a + b\n\n\ndef add(a, b):\n";
    let run = |extra: &[&str]| {
        let mut args = vec!["generate", "--model", model.to_str().unwrap(), "--prompt", prompt, "--max-tokens", "24"];
        args.extend_from_slice(extra);
        let out = qwen_serve(&args, &[]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let plain = run(&[]);
    assert!(!plain.is_empty());
    assert_eq!(run(&["--speculative-config", r#"{"method": "ngram", "num_speculative_tokens": 4}"#]), plain);
}
