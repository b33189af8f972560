//! Who is asking, and whether an action may run.
//!
//! - [`authenticate`]: with `[auth]` configured, every request needs
//!   `Authorization: Bearer <token>` (user `token`) or basic auth (the
//!   user's name); without it (loopback only, see
//!   [`ConsoleConfig::listen_addr`](super::config::ConsoleConfig::listen_addr))
//!   the user is `local`.
//! - [`guard`]: every request that is not a GET (an action) is refused in
//!   read-only mode, when it comes from another site (`Sec-Fetch-Site:
//!   cross-site`, or an `Origin` that is not this host), or without the
//!   console's CSRF token (a random value per process, in every form and
//!   in htmx's `X-CSRF-Token` header), compared in constant time.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;

use super::config::AuthConfig;
use super::error::ConsoleError;
use super::state::Console;

/// The user a request was authenticated as (`local` without authentication).
#[derive(Debug, Clone)]
pub struct User(pub String);

/// The largest form an action may post.
const MAX_FORM: usize = 1 << 20;

/// `a == b`, in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn user_of(auth: &AuthConfig, headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    if let (Some(given), Some(token)) = (value.strip_prefix("Bearer "), &auth.token)
        && same(given.trim().as_bytes(), token.as_bytes())
    {
        return Some("token".into());
    }
    let basic = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(basic.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    let (want_user, want_password) = (auth.user.as_ref()?, auth.password.as_ref()?);
    // Both compared, whatever the first gives.
    let ok = same(user.as_bytes(), want_user.as_bytes())
        & same(password.as_bytes(), want_password.as_bytes());
    ok.then(|| user.to_owned())
}

/// Authenticates every request (see the module docs).
pub async fn authenticate(
    State(console): State<Arc<Console>>,
    mut request: Request,
    next: Next,
) -> Response {
    let auth = &console.config.auth;
    let user = if auth.is_set() {
        user_of(auth, request.headers())
    } else {
        Some("local".to_owned())
    };
    match user {
        Some(user) => {
            request.extensions_mut().insert(User(user));
            next.run(request).await
        }
        None => (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                "Basic realm=\"backstop console\", charset=\"UTF-8\"",
            )],
            "authentication required: basic auth or Authorization: Bearer <token>\n",
        )
            .into_response(),
    }
}

fn same_site(headers: &HeaderMap) -> Result<(), ConsoleError> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if get("sec-fetch-site") == Some("cross-site") {
        return Err(ConsoleError::Csrf(
            "refused a request from another site".into(),
        ));
    }
    if let (Some(origin), Some(host)) = (get("origin"), get("host")) {
        let origin_host = url::Url::parse(origin).ok().map(|u| {
            let h = u.host_str().unwrap_or_default().to_owned();
            u.port().map_or(h.clone(), |p| format!("{h}:{p}"))
        });
        if origin_host.as_deref() != Some(host) {
            return Err(ConsoleError::Csrf(format!(
                "refused a request from another origin ({origin})"
            )));
        }
    }
    Ok(())
}

/// Guards every action (see the module docs); GET and HEAD pass.
pub async fn guard(
    State(console): State<Arc<Console>>,
    request: Request,
    next: Next,
) -> Result<Response, ConsoleError> {
    if matches!(*request.method(), Method::GET | Method::HEAD) {
        return Ok(next.run(request).await);
    }
    // Walking a queue to index it changes no letter: allowed read-only.
    if console.read_only && !request.uri().path().ends_with("/reindex") {
        return Err(ConsoleError::ReadOnly);
    }
    same_site(request.headers())?;
    let (parts, body) = request.into_parts();
    let bytes: Bytes = axum::body::to_bytes(body, MAX_FORM)
        .await
        .map_err(|_| ConsoleError::BadRequest(format!("a form larger than {MAX_FORM} bytes")))?;
    let from_header = parts
        .headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let token = from_header.or_else(|| {
        url::form_urlencoded::parse(&bytes)
            .find(|(k, _)| k == "csrf")
            .map(|(_, v)| v.into_owned())
    });
    match token {
        Some(t) if same(t.as_bytes(), console.csrf.as_bytes()) => {}
        Some(_) => {
            return Err(ConsoleError::Csrf(
                "the form's CSRF token is not this console's (it restarted?)".into(),
            ));
        }
        None => return Err(ConsoleError::Csrf("the form carries no CSRF token".into())),
    }
    Ok(next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_and_basic_are_checked() {
        let auth = AuthConfig {
            token: Some("t".into()),
            user: Some("ops".into()),
            password: Some("pw".into()),
        };
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, v.parse().unwrap());
            user_of(&auth, &h)
        };
        assert_eq!(with("Bearer t"), Some("token".into()));
        assert_eq!(with("Bearer x"), None);
        let basic = |s: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            )
        };
        assert_eq!(with(&basic("ops:pw")), Some("ops".into()));
        assert_eq!(with(&basic("ops:no")), None);
        assert_eq!(user_of(&auth, &HeaderMap::new()), None);
    }
}
