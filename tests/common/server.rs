//! A real server on an ephemeral loopback port, in-process, over the real test model.
#![allow(dead_code)]

use std::io::Read;
use std::time::Duration;

use qwen_serve::api::server::{router, serve, ServerOptions};
use qwen_serve::api::state::AppState;
use qwen_serve::engine::{EngineConfig, EngineHandle};
use qwen_serve::loader::{self, LoadOptions};
use serde_json::Value;

pub struct TestServer {
    pub base: String,
    pub state: AppState,
}

pub struct ServerConfig {
    pub engine: EngineConfig,
    pub api_key: Option<String>,
    pub max_body_bytes: usize,
    pub chat_template: Option<std::path::PathBuf>,
    /// What `--model` names; the test GGUF when `None`.
    pub model: Option<std::path::PathBuf>,
    pub cors: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self { engine: EngineConfig::default(), api_key: None, max_body_bytes: 1 << 20, chat_template: None, model: None, cors: false }
    }
}

/// Starts the server on its own runtime thread; it lives as long as the test process.
pub fn start(config: ServerConfig) -> TestServer {
    let opts = LoadOptions { chat_template: config.chat_template.clone(), ..Default::default() };
    let model = config.model.clone().unwrap_or_else(super::test_gguf);
    let loaded = loader::load(model.to_str().unwrap(), &opts).unwrap_or_else(|e| panic!("load {}: {e}", model.display()));
    let engine = EngineHandle::start(loaded, config.engine).expect("start engine");
    let state = AppState::new(engine, Some("qwen-test".into()), config.api_key, true);
    let app = router(state.clone(), &ServerOptions { max_body_bytes: config.max_body_bytes, cors: config.cors });
    let (tx, rx) = std::sync::mpsc::channel();
    let serve_state = state.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            serve(listener, app, serve_state, std::future::pending(), Duration::from_secs(1)).await.unwrap();
        });
    });
    let addr = rx.recv().unwrap();
    TestServer { base: format!("http://{addr}"), state }
}

pub struct Reply {
    pub status: u16,
    pub body: String,
    /// Names lowercased.
    pub headers: Vec<(String, String)>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// Asserts an OpenAI error body with this status; returns the error object.
    pub fn error(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "body: {}", self.body);
        let v = self.json();
        let e = v["error"].clone();
        assert!(e["message"].is_string() && e["type"].is_string(), "not an OpenAI error body: {}", self.body);
        e
    }

    /// `data:` payloads of an SSE body, in order.
    pub fn sse_data(&self) -> Vec<String> {
        self.body.lines().filter_map(|l| l.strip_prefix("data: ")).map(str::to_string).collect()
    }

    /// `(event name, data)` of each named SSE event, in order.
    pub fn sse_events(&self) -> Vec<(String, Value)> {
        self.body
            .split("\n\n")
            .filter_map(|block| {
                let name = block.lines().find_map(|l| l.strip_prefix("event: "))?;
                let data = block.lines().find_map(|l| l.strip_prefix("data: "))?;
                Some((name.to_string(), serde_json::from_str(data).unwrap_or_else(|e| panic!("{e}: {data}"))))
            })
            .collect()
    }
}

fn finish(r: Result<ureq::Response, ureq::Error>) -> Reply {
    let headers = |resp: &ureq::Response| resp.headers_names().into_iter().map(|n| (n.to_lowercase(), resp.header(&n).unwrap_or_default().to_string())).collect();
    match r {
        Ok(resp) => Reply { status: resp.status(), headers: headers(&resp), body: resp.into_string().unwrap() },
        Err(ureq::Error::Status(status, resp)) => Reply { status, headers: headers(&resp), body: resp.into_string().unwrap_or_default() },
        Err(e) => panic!("transport error: {e}"),
    }
}

impl TestServer {
    pub fn post(&self, path: &str, body: &str) -> Reply {
        self.post_with(path, body, &[])
    }

    pub fn post_with(&self, path: &str, body: &str, headers: &[(&str, &str)]) -> Reply {
        let mut req = ureq::post(&format!("{}{path}", self.base)).timeout(Duration::from_secs(300)).set("Content-Type", "application/json");
        for (k, v) in headers {
            req = req.set(k, v);
        }
        finish(req.send_string(body))
    }

    pub fn options_with(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.call_with("OPTIONS", path, headers)
    }

    pub fn delete(&self, path: &str) -> Reply {
        finish(ureq::delete(&format!("{}{path}", self.base)).timeout(Duration::from_secs(60)).call())
    }

    pub fn get(&self, path: &str) -> Reply {
        self.get_with(path, &[])
    }

    pub fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.call_with("GET", path, headers)
    }

    /// A bodiless request.
    fn call_with(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut req = ureq::request(method, &format!("{}{path}", self.base)).timeout(Duration::from_secs(60));
        for (k, v) in headers {
            req = req.set(k, v);
        }
        finish(req.call())
    }

    /// Starts a streaming request and reads until `n` bytes of body arrived, then drops the
    /// connection.
    pub fn read_some_then_disconnect(&self, path: &str, body: &str, n: usize) {
        let resp = ureq::post(&format!("{}{path}", self.base)).set("Content-Type", "application/json").send_string(body).unwrap();
        let mut reader = resp.into_reader();
        let mut buf = vec![0u8; n];
        reader.read_exact(&mut buf).unwrap();
    }

    /// Sends only the headers of a keep-alive POST whose `Content-Length` is `len` and reads
    /// the answer to the connection's end (a server must refuse an oversized body without
    /// reading it, and then close the connection).
    pub fn raw_post_declaring_length(&self, path: &str, len: usize) -> (u16, String) {
        use std::io::Write;
        let addr = self.base.trim_start_matches("http://");
        let mut sock = std::net::TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(sock, "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n").unwrap();
        let mut out = Vec::new();
        let _ = sock.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out).to_string();
        let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        (status, text)
    }

    /// A Prometheus gauge or counter value from /metrics.
    pub fn metric(&self, name: &str) -> f64 {
        let text = self.get("/metrics").body;
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("metric {name} not found in:\n{text}"))
    }
}
