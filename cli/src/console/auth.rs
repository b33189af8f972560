//! Who is asking, and whether an action may run.
//!
//! - [`authenticate`]: with `[auth]` configured, every request needs
//!   `Authorization: Bearer <token>` (user `token`) or basic auth (the
//!   user's name); without it (loopback only, see
//!   [`ConsoleConfig::listen_addr`](super::config::ConsoleConfig::listen_addr))
//!   the user is `local`.
//! - [`host_allowed`] (in [`authenticate`], before anything else): the
//!   `Host` header must name this console: `127.0.0.1`, `localhost` or
//!   `[::1]` with the listen port, or with authentication one of `[auth]
//!   allowed_hosts` (default: the listen address). A page of another name
//!   that DNS-rebinds to 127.0.0.1 is same-origin for the browser, so this
//!   is what keeps it from reading pages and their CSRF token. An action
//!   without a `Host` is refused.
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

/// The `Host` headers a console listening on `listen` answers to, lowercase:
/// the loopback names with its port, and with authentication `[auth]
/// allowed_hosts` (default: the listen address).
pub fn allowed_hosts(auth: &AuthConfig, listen: std::net::SocketAddr) -> Vec<String> {
    let port = listen.port();
    let mut hosts = vec![
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
    ];
    if auth.is_set() {
        if auth.allowed_hosts.is_empty() {
            hosts.push(listen.to_string());
        } else {
            hosts.extend(auth.allowed_hosts.iter().map(|h| h.trim().to_owned()));
        }
    }
    for h in &mut hosts {
        h.make_ascii_lowercase();
    }
    hosts
}

/// Whether a request for `host` (its `Host` header, or the URI's authority)
/// may be answered: one of `allowed` (an entry without a port allows any
/// port of that name). A request without one is refused when it is an
/// action (`action`), and answered otherwise (no browser sends one).
pub fn host_allowed(
    allowed: &[String],
    host: Option<&str>,
    action: bool,
) -> Result<(), ConsoleError> {
    let Some(host) = host else {
        return if action {
            Err(ConsoleError::ForeignHost("(none)".into()))
        } else {
            Ok(())
        };
    };
    let host = host.trim().to_ascii_lowercase();
    // The name without its port: `[::1]:80` → `[::1]`, `a:80` → `a`.
    let name = match host.rsplit_once(':') {
        Some((n, p))
            if p.bytes().all(|b| b.is_ascii_digit())
                && !n.is_empty()
                && (n.starts_with('[') || !n.contains(':')) =>
        {
            n
        }
        _ => host.as_str(),
    };
    let ok = allowed.iter().any(|a| {
        *a == host
            || (!a.ends_with(']') && !a.contains(':') && *a == name)
            || (a.starts_with('[') && a.ends_with(']') && *a == name)
    });
    if ok {
        Ok(())
    } else {
        Err(ConsoleError::ForeignHost(host))
    }
}

/// Authenticates every request (see the module docs), after checking its
/// `Host` ([`host_allowed`]).
pub async fn authenticate(
    State(console): State<Arc<Console>>,
    mut request: Request,
    next: Next,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| request.uri().authority().map(|a| a.as_str().to_owned()));
    let action = !matches!(*request.method(), Method::GET | Method::HEAD);
    if let Err(e) = host_allowed(&console.hosts, host.as_deref(), action) {
        return e.into_response();
    }
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
    // An index walk: the handler refuses RabbitMQ's read-only (it takes and
    // puts back every letter); Kafka's only reads.
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
            allowed_hosts: Vec::new(),
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

    #[test]
    fn only_this_consoles_names_are_answered() {
        let listen: std::net::SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let open = allowed_hosts(&AuthConfig::default(), listen);
        for ok in [
            "127.0.0.1:8080",
            "localhost:8080",
            "LOCALHOST:8080",
            "[::1]:8080",
        ] {
            assert!(host_allowed(&open, Some(ok), true).is_ok(), "{ok}");
        }
        for bad in [
            "evil.example:8080",
            "localhost:9090",
            "127.0.0.1",
            "localhost.evil.example:8080",
        ] {
            assert!(host_allowed(&open, Some(bad), false).is_err(), "{bad}");
        }
        assert!(
            host_allowed(&open, None, true).is_err(),
            "an action without a Host"
        );
        assert!(host_allowed(&open, None, false).is_ok());
        let auth = AuthConfig {
            token: Some("t".into()),
            allowed_hosts: vec!["dlq.example.com".into(), "ops.example.com:443".into()],
            ..AuthConfig::default()
        };
        let hosts = allowed_hosts(&auth, "0.0.0.0:8080".parse().unwrap());
        assert!(host_allowed(&hosts, Some("dlq.example.com"), true).is_ok());
        assert!(host_allowed(&hosts, Some("dlq.example.com:8080"), true).is_ok());
        assert!(host_allowed(&hosts, Some("ops.example.com:443"), true).is_ok());
        assert!(host_allowed(&hosts, Some("ops.example.com:80"), true).is_err());
        assert!(host_allowed(&hosts, Some("evil.example:8080"), true).is_err());
        // The default: the listen address.
        let token = AuthConfig {
            token: Some("t".into()),
            ..AuthConfig::default()
        };
        let hosts = allowed_hosts(&token, "10.0.0.5:8080".parse().unwrap());
        assert!(host_allowed(&hosts, Some("10.0.0.5:8080"), true).is_ok());
        assert!(host_allowed(&hosts, Some("evil.example:8080"), true).is_err());
    }
}
