//! The router, its middleware (request ids, auth, request counting, body limit, CORS,
//! Anthropic's error envelope on its routes) and the serve loop with graceful shutdown.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use subtle::ConstantTimeEq;
use tower_http::cors::{AllowHeaders, AllowMethods, Any, CorsLayer};
use tracing::Instrument;

use super::state::AppState;
use super::{chat, completions, embeddings, infill, llama, messages, misc, rerank, responses};
use crate::error::ApiError;

#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub max_body_bytes: usize,
    /// Allow cross-origin requests from any origin (browser clients).
    pub cors: bool,
}

pub fn router(state: AppState, opts: &ServerOptions) -> Router {
    let api = Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/v1/rerank", post(rerank::rerank))
        .route("/rerank", post(rerank::rerank))
        .route("/v2/rerank", post(rerank::rerank))
        .route("/v1/score", post(rerank::score))
        .route("/score", post(rerank::score))
        .route("/v1/responses", post(responses::create))
        .route("/v1/messages", post(messages::create))
        .route("/v1/messages/count_tokens", post(messages::count_tokens))
        .route("/v1/responses/{id}", get(responses::retrieve).delete(responses::delete))
        .route("/v1/responses/{id}/input_items", get(responses::list_input_items))
        .route("/infill", post(infill::infill))
        .route("/completion", post(llama::completion))
        .route("/completions", post(llama::completion))
        .route("/v1/models", get(misc::models))
        .route("/v1/models/{*model}", get(misc::model))
        .route("/tokenize", post(misc::tokenize))
        .route("/detokenize", post(misc::detokenize))
        .route("/openapi.json", get(misc::openapi))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_api_key));
    let mut app = Router::new()
        .route("/health", get(misc::health))
        .route("/metrics", get(misc::metrics))
        .merge(api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(opts.max_body_bytes, reject_declared_oversize))
        .layer(middleware::from_fn(anthropic_errors))
        .layer(middleware::from_fn_with_state(state.clone(), count_and_trace))
        .layer(DefaultBodyLimit::max(opts.max_body_bytes))
        .with_state(state);
    if opts.cors {
        // The preflight's requested headers and method echoed back rather than `*`: the Fetch
        // standard's wildcard does not cover `Authorization` (an `--api-key` from a browser).
        let cors = CorsLayer::new().allow_origin(Any).allow_headers(AllowHeaders::mirror_request()).allow_methods(AllowMethods::mirror_request()).expose_headers(Any);
        app = app.layer(cors);
    }
    app
}

async fn not_found(req: Request) -> ApiError {
    ApiError::with_status(StatusCode::NOT_FOUND, format!("no route for {} {}", req.method(), req.uri().path()))
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::with_status(StatusCode::METHOD_NOT_ALLOWED, format!("{} is not allowed on {}", req.method(), req.uri().path()))
}

/// A body whose declared `Content-Length` is over the limit is refused before it is read
/// (bodies without one are cut off by `DefaultBodyLimit` as they stream in).
async fn reject_declared_oversize(State(limit): State<usize>, req: Request, next: Next) -> Response {
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return ApiError::with_status(StatusCode::PAYLOAD_TOO_LARGE, format!("the request body is larger than the server accepts ({limit} bytes, --max-body-bytes)")).into_response();
    }
    next.run(req).await
}

/// The routes of Anthropic's Messages API, whose clients read errors in Anthropic's envelope.
const ANTHROPIC_ROUTES: [&str; 2] = ["/v1/messages", "/v1/messages/count_tokens"];

/// An error on one of [`ANTHROPIC_ROUTES`] (from its handler, the body extractor, the API key
/// check, the size limit or the method check) is answered in Anthropic's envelope; every other
/// route keeps OpenAI's. The error comes from the response's extensions, where
/// `ApiError::into_response` leaves it.
async fn anthropic_errors(req: Request, next: Next) -> Response {
    let anthropic = req.extensions().get::<MatchedPath>().is_some_and(|p| ANTHROPIC_ROUTES.contains(&p.as_str()));
    let response = next.run(req).await;
    match response.extensions().get::<ApiError>() {
        Some(e) if anthropic => e.clone().into_anthropic_response(),
        _ => response,
    }
}

/// `Authorization: Bearer <key>` (or `x-api-key: <key>`, as Anthropic's clients send it),
/// compared in constant time.
async fn require_api_key(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(key) = &state.api_key {
        let headers = req.headers();
        let bearer = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        let given = bearer.or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok())).unwrap_or("");
        if !bool::from(given.as_bytes().ct_eq(key.as_bytes())) {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}

static NEXT_REQUEST_ID: AtomicU64 = AtomicU64::new(1);

/// Gives each request an id (the client's `x-request-id` or a new one) on its log span and
/// response, and counts responses by endpoint and status.
async fn count_and_trace(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| format!("req-{}", NEXT_REQUEST_ID.fetch_add(1, Ordering::Relaxed)));
    let endpoint = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_else(|| "unmatched".into());
    let span = tracing::info_span!("request", id = %id, method = %req.method(), path = %req.uri().path());
    let mut response = next.run(req).instrument(span.clone()).await;
    let status = response.status();
    span.in_scope(|| tracing::info!(status = status.as_u16(), "response"));
    state.metrics.count_request(&endpoint, status.as_u16());
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

/// Serves until `shutdown` resolves, then stops accepting, lets in-flight requests finish for
/// up to `grace` (or until a second SIGINT / SIGTERM), and stops the engine. Requests still
/// running then are aborted, so each stream ends with an error event rather than a cut.
pub async fn serve(listener: tokio::net::TcpListener, app: Router, state: AppState, shutdown: impl std::future::Future<Output = ()> + Send + 'static, grace: Duration) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async move {
            let _ = stop_rx.await;
        });
    let mut server = std::pin::pin!(server.into_future());
    tokio::select! {
        r = &mut server => return r,
        _ = shutdown => {}
    }
    tracing::info!("shutting down: no new connections; waiting up to {grace:?} for requests in flight");
    // Requests still arriving on open connections get 503 from here on.
    state.engine.begin_shutdown();
    let _ = stop_tx.send(());
    let again = shutdown_signal();
    let finished = tokio::select! {
        r = tokio::time::timeout(grace, &mut server) => r.is_ok(),
        _ = again => {
            tracing::warn!("second signal: stopping now");
            false
        }
    };
    if !finished {
        // Returning ends the process; the engine thread goes with it. First the requests still
        // running end with `Abort`, which their handlers send on as an error event.
        tracing::warn!("stopping with requests still running: aborting them");
        state.engine.abort_all();
        let _ = tokio::time::timeout(ABORT_FLUSH, &mut server).await;
        return Ok(());
    }
    let engine = state.engine.clone();
    let _ = tokio::task::spawn_blocking(move || engine.shutdown()).await;
    Ok(())
}

/// How long aborted requests get to send their last events when stopping without a grace.
const ABORT_FLUSH: Duration = Duration::from_secs(2);

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
