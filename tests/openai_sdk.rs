//! The official `openai` (and `anthropic`) Python SDKs (pinned in tests/openai_sdk/requirements.txt, installed
//! into a venv by scripts/test.sh, which exports QWEN_SERVE_SDK_PYTHON) against a real
//! `qwen-serve serve` process: chat plain and streamed with usage, completions with echo and
//! logprobs, structured output parsed into pydantic models (`chat.completions.parse`: `$defs`,
//! formats, bounds, a dict, a discriminated union), vLLM's `structured_outputs` through
//! `extra_body`, the Responses API (whole, streamed, continued, retrieved, with logprobs), Anthropic's SDK
//! on `/v1/messages`, models list, and errors surfacing as the SDK's typed exceptions.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};

use common::test_gguf;

#[test]
fn openai_python_sdk_works_against_the_server() {
    let python = std::env::var("QWEN_SERVE_SDK_PYTHON")
        .expect("QWEN_SERVE_SDK_PYTHON is not set: run the suite with scripts/test.sh, which creates the SDK venv");
    let mut server = Command::new(env!("CARGO_BIN_EXE_qwen-serve"))
        .args(["serve", "--model", test_gguf().to_str().unwrap(), "--port", "0", "--served-model-name", "qwen-test", "--api-key", "test-key"])
        .env_remove("RUST_BACKTRACE")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(server.stderr.take().unwrap());
    let base = loop {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "server exited before listening");
        if let Some(rest) = line.trim().strip_prefix("qwen-serve: serving ") {
            break format!("http://{}", rest.rsplit("http://").next().unwrap());
        }
    };
    std::thread::spawn(move || {
        let mut sink = String::new();
        let _ = stderr.read_to_string(&mut sink);
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openai_sdk/check_sdk.py");
    let out = Command::new(&python).args([script, &base]).output().expect("run the SDK check");
    let _ = server.kill();
    let _ = server.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "SDK check failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("passed, 0 failed"), "{stdout}");
}
