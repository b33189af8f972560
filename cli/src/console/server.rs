//! The router and the server: pages, actions behind the guard, the
//! assets embedded in the binary.

use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::middleware::from_fn_with_state;
use axum::response::IntoResponse;
use axum::routing::{get, post};

use super::state::Console;
use super::{auth, post, routes};

const HTMX: &str = include_str!("assets/htmx.min.js");
const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

/// An embedded asset of content type `kind`.
fn asset(kind: &'static str, text: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        text,
    )
}

const SCRIPT: &str = "text/javascript; charset=utf-8";

/// Headers on every answer: no framing, no sniffing, scripts only from here.
async fn secure_headers(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; frame-ancestors 'none'; form-action 'self'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::X_FRAME_OPTIONS,
        header::HeaderValue::from_static("DENY"),
    );
    h.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("same-origin"),
    );
    response
}

/// The console's routes over `console`.
pub fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route("/", get(routes::overview))
        .route("/audit", get(routes::audit))
        .route("/jobs/{id}", get(routes::job))
        .route("/jobs/{id}/progress", get(routes::job_progress))
        .route("/jobs/{id}/cancel", post(post::cancel))
        .route("/dlq/{cluster}/{name}", get(routes::dlq))
        .route("/dlq/{cluster}/{name}/export", get(routes::export))
        .route("/dlq/{cluster}/{name}/letters/{seq}", get(routes::letter))
        .route("/dlq/{cluster}/{name}/preview", post(post::preview))
        .route("/dlq/{cluster}/{name}/redrive", post(post::redrive))
        .route("/dlq/{cluster}/{name}/purge", post(post::purge))
        .route("/dlq/{cluster}/{name}/reindex", post(post::reindex))
        .route("/assets/htmx.min.js", get(|| async { asset(SCRIPT, HTMX) }))
        .route("/assets/console.js", get(|| async { asset(SCRIPT, JS) }))
        .route(
            "/assets/console.css",
            get(|| async { asset("text/css; charset=utf-8", CSS) }),
        )
        .layer(from_fn_with_state(Arc::clone(&console), auth::guard))
        .layer(from_fn_with_state(Arc::clone(&console), auth::authenticate))
        .layer(axum::middleware::from_fn(secure_headers))
        .with_state(console)
}
