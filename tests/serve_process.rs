//! `qwen-serve serve` as a process: it binds, serves, and on SIGTERM stops accepting, lets
//! the request in flight finish, and exits 0.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::test_gguf;

#[test]
fn sigterm_lets_the_running_request_finish_then_exits_zero() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_qwen-serve"))
        .args(["serve", "--model", test_gguf().to_str().unwrap(), "--port", "0", "--shutdown-grace", "60"])
        .env_remove("RUST_BACKTRACE")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let addr = loop {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "server exited before listening");
        if let Some(rest) = line.trim().strip_prefix("qwen-serve: serving ") {
            break rest.rsplit("http://").next().unwrap().to_string();
        }
    };
    // Drain stderr in the background so the server never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut sink = String::new();
        let _ = stderr.read_to_string(&mut sink);
    });

    // A streaming request that takes a while.
    let mut sock = std::net::TcpStream::connect(&addr).unwrap();
    let body = r#"{"prompt": "Count slowly:", "max_tokens": 48, "ignore_eos": true, "stream": true}"#;
    write!(sock, "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
    let mut first = [0u8; 256];
    sock.read_exact(&mut first).unwrap();
    assert!(String::from_utf8_lossy(&first).starts_with("HTTP/1.1 200"));

    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());

    // The stream in flight completes.
    let mut rest = String::new();
    sock.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("data: [DONE]"), "stream cut short: {rest}");
    // New connections are refused once the listener is closed.
    std::thread::sleep(Duration::from_millis(200));
    assert!(std::net::TcpStream::connect(&addr).is_err(), "still accepting after SIGTERM");

    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "server did not exit");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
}
