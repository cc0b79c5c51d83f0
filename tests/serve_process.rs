//! `qwen-serve serve` as a process: it binds, serves, and on SIGTERM stops accepting, lets
//! the request in flight finish, and exits 0; at the end of the grace period, or on a second
//! signal, it aborts what still runs, whose streams end with an error event.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::test_gguf;

/// A server process with `--shutdown-grace grace`, and its address.
fn spawn(grace: &str) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_qwen-serve"))
        .args(["serve", "--model", test_gguf().to_str().unwrap(), "--port", "0", "--shutdown-grace", grace])
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
    (child, addr)
}

/// A streaming completion of `max_tokens`, once its first bytes have come.
fn stream(addr: &str, max_tokens: usize) -> TcpStream {
    let mut sock = TcpStream::connect(addr).unwrap();
    let body = format!(r#"{{"prompt": "Count slowly:", "max_tokens": {max_tokens}, "ignore_eos": true, "stream": true}}"#);
    write!(sock, "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
    let mut first = [0u8; 256];
    sock.read_exact(&mut first).unwrap();
    assert!(String::from_utf8_lossy(&first).starts_with("HTTP/1.1 200"));
    sock
}

fn signal(child: &Child, name: &str) {
    assert!(Command::new("kill").args([name, &child.id().to_string()]).status().unwrap().success());
}

/// The exit code, within `secs` seconds.
fn exit_code(child: &mut Child, secs: u64) -> Option<i32> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code();
        }
        assert!(Instant::now() < deadline, "server did not exit within {secs} s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigterm_lets_the_running_request_finish_then_exits_zero() {
    let (mut child, addr) = spawn("60");
    let mut sock = stream(&addr, 48);
    signal(&child, "-TERM");

    // The stream in flight completes.
    let mut rest = String::new();
    sock.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("data: [DONE]") && !rest.contains("\"error\""), "stream cut short: {rest}");
    // New connections are refused once the listener is closed.
    std::thread::sleep(Duration::from_millis(200));
    assert!(TcpStream::connect(&addr).is_err(), "still accepting after SIGTERM");
    assert_eq!(exit_code(&mut child, 60), Some(0));
}

/// A stream still running when the grace period ends, or when a second signal comes, ends with
/// an error event and `[DONE]` (not a silent cut), and the server exits at once.
#[test]
fn the_end_of_the_grace_or_a_second_signal_aborts_with_an_error_event() {
    for (grace, second) in [("1", None), ("600", Some("-INT"))] {
        let (mut child, addr) = spawn(grace);
        // Far more tokens than the test waits for.
        let mut sock = stream(&addr, 4000);
        signal(&child, "-TERM");
        if let Some(second) = second {
            std::thread::sleep(Duration::from_millis(300));
            signal(&child, second);
        }
        let mut rest = String::new();
        sock.read_to_string(&mut rest).unwrap();
        let tail: Vec<&str> = rest.lines().filter(|l| l.starts_with("data: ")).rev().take(2).collect();
        assert_eq!(tail[0], "data: [DONE]", "grace {grace}: {}", &rest[rest.len().saturating_sub(400)..]);
        assert!(tail[1].contains("\"error\"") && tail[1].contains("aborted"), "grace {grace}: {}", tail[1]);
        assert_eq!(exit_code(&mut child, 30), Some(0), "grace {grace}");
    }
}

/// `--log-json`: every line on stderr is one JSON object, the address in the `listening on`
/// event, from start to exit.
#[test]
fn log_json_writes_only_json_lines() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_qwen-serve"))
        .args(["serve", "--model", test_gguf().to_str().unwrap(), "--port", "0", "--log-json"])
        .env_remove("RUST_BACKTRACE")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("server exited before listening").unwrap();
        let event: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        if let Some(rest) = event["fields"]["message"].as_str().and_then(|m| m.strip_prefix("listening on http://")) {
            break rest.to_string();
        }
    };
    let mut sock = TcpStream::connect(&addr).unwrap();
    write!(sock, "GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut reply = String::new();
    sock.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    signal(&child, "-TERM");
    for line in lines {
        let line = line.unwrap();
        assert!(serde_json::from_str::<serde_json::Value>(&line).is_ok(), "not JSON: {line:?}");
    }
    assert_eq!(exit_code(&mut child, 60), Some(0));
}
