//! Server-sent events: a producer task writes JSON chunks into a channel; the response body
//! reads them. A client that disconnects (hyper reads the end of its connection) drops the
//! body, and the producer is dropped with it, dropping the engine stream (which aborts the
//! request and frees its blocks), also while it has nothing to send (a queued request, a long
//! prompt's prefill).

use std::convert::Infallible;
use std::future::Future;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use serde::Serialize;
use tokio::sync::mpsc;

pub struct SseSender(mpsc::Sender<Event>);

impl SseSender {
    /// Sends one `data: <json>` event; false when the client has gone.
    pub async fn json<T: Serialize>(&self, value: &T) -> bool {
        let data = serde_json::to_string(value).expect("wire types serialise");
        self.0.send(Event::default().data(data)).await.is_ok()
    }

    /// Sends one `event: <name>` with `data: <json>` (the Responses API's typed events).
    pub async fn event<T: Serialize>(&self, name: &str, value: &T) -> bool {
        let data = serde_json::to_string(value).expect("wire types serialise");
        self.0.send(Event::default().event(name).data(data)).await.is_ok()
    }

    /// A failure mid-stream: an `{"error": ...}` event, then `[DONE]` (as vLLM ends such a
    /// stream), so a client sees why the stream ended early rather than a cut.
    pub async fn fail(&self, message: &str) -> bool {
        self.json(&serde_json::json!({"error": {"message": message, "type": "server_error", "param": null, "code": null}})).await && self.done().await
    }

    /// The terminating `data: [DONE]`.
    pub async fn done(&self) -> bool {
        self.0.send(Event::default().data("[DONE]")).await.is_ok()
    }
}

/// Runs `producer` on its own task and streams what it sends; the producer is dropped as soon
/// as the response body is (the client has gone).
pub fn sse_response<F, Fut>(producer: F) -> Response
where
    F: FnOnce(SseSender) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(64);
    let gone = tx.clone();
    let producer = producer(SseSender(tx));
    tokio::spawn(async move {
        tokio::select! {
            () = producer => {}
            () = gone.closed() => {}
        }
    });
    let body = stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx)) });
    Sse::new(body).keep_alive(KeepAlive::default()).into_response()
}
