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

async fn htmx() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=86400"),
        ],
        HTMX,
    )
}

async fn css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=86400"),
        ],
        CSS,
    )
}

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
            "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
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
        .route("/dlq/{cluster}/{name}", get(routes::dlq))
        .route("/dlq/{cluster}/{name}/export", get(routes::export))
        .route("/dlq/{cluster}/{name}/letters/{seq}", get(routes::letter))
        .route("/dlq/{cluster}/{name}/preview", post(post::preview))
        .route("/dlq/{cluster}/{name}/redrive", post(post::redrive))
        .route("/dlq/{cluster}/{name}/purge", post(post::purge))
        .route("/dlq/{cluster}/{name}/reindex", post(post::reindex))
        .route("/assets/htmx.min.js", get(htmx))
        .route("/assets/console.css", get(css))
        .layer(from_fn_with_state(Arc::clone(&console), auth::guard))
        .layer(from_fn_with_state(Arc::clone(&console), auth::authenticate))
        .layer(axum::middleware::from_fn(secure_headers))
        .with_state(console)
}
