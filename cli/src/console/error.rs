//! [`ConsoleError`]: why the console did not start or a request failed, in
//! words an operator can act on.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::error::CliError;

/// A failure of the console: at start-up (configuration, listen address) or
/// in a request (shown as an error page; no credential is ever in it).
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The configuration file is missing, unreadable or invalid.
    #[error("console configuration {path}: {reason}")]
    Config {
        /// The file.
        path: String,
        /// What is wrong, and where.
        reason: String,
    },
    /// A non-loopback listen address without authentication.
    #[error(
        "refusing to listen on {0} without authentication: set [auth] token or user and password in the configuration (or BACKSTOP_CONSOLE_TOKEN / BACKSTOP_CONSOLE_USER and BACKSTOP_CONSOLE_PASSWORD), or listen on 127.0.0.1"
    )]
    Unauthenticated(String),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source} (is another console or program using it?)")]
    Listen {
        /// The address.
        addr: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The console's own state (index, jobs, audit) could not be used.
    #[error("console state in {path}: {reason} (check the directory's permissions and free space)")]
    State {
        /// The file or directory.
        path: String,
        /// What failed.
        reason: String,
    },
    /// A request names a DLQ the console does not manage.
    #[error("no DLQ {dlq:?} on {cluster:?} (the overview lists the DLQs this console manages)")]
    UnknownDlq {
        /// The cluster's name.
        cluster: String,
        /// The DLQ's name.
        dlq: String,
    },
    /// A request names a letter the index does not hold.
    #[error(
        "no letter {0} in this DLQ's index (it may have been redriven or purged; go back to the list)"
    )]
    UnknownLetter(i64),
    /// A form field is not usable.
    #[error("{0}")]
    BadRequest(String),
    /// An action while the console runs read-only.
    #[error(
        "the console is read-only (read_only in its configuration or --read-only): no action is allowed"
    )]
    ReadOnly,
    /// A RabbitMQ index walk while the console runs read-only.
    #[error(
        "the console is read-only: walking a RabbitMQ queue to index it takes and puts back every letter, so it is not done read-only (start the console without --read-only to build the index)"
    )]
    ReadOnlyWalk,
    /// A request whose `Host` is not one the console answers to (a
    /// DNS-rebinding page, or a proxy that does not pass the name on).
    #[error(
        "refused a request for host {0:?}: this console answers only to 127.0.0.1, localhost and [::1] on its port, and with authentication to [auth] allowed_hosts (default: the listen address)"
    )]
    ForeignHost(String),
    /// A job that is not running (to cancel).
    #[error("job {0} is not running (it finished, failed or was cancelled already)")]
    NotRunning(i64),
    /// An action without a valid CSRF token or from another site.
    #[error("{0}: reload the page and try again")]
    Csrf(String),
    /// A DLQ library call failed.
    #[error(transparent)]
    Dlq(#[from] CliError),
}

impl ConsoleError {
    /// The HTTP status a request failing this way answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            ConsoleError::UnknownDlq { .. } | ConsoleError::UnknownLetter(_) => {
                StatusCode::NOT_FOUND
            }
            ConsoleError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ConsoleError::ReadOnly
            | ConsoleError::ReadOnlyWalk
            | ConsoleError::Csrf(_)
            | ConsoleError::ForeignHost(_) => StatusCode::FORBIDDEN,
            ConsoleError::NotRunning(_) => StatusCode::CONFLICT,
            ConsoleError::Dlq(CliError::Usage(_)) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A state failure of `path`.
    pub fn state(path: impl std::fmt::Display) -> impl FnOnce(rusqlite::Error) -> Self {
        let path = path.to_string();
        move |e| ConsoleError::State {
            path,
            reason: e.to_string(),
        }
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        // The last guard: no password of a URL in what is shown.
        let text = crate::redact::redact_all(&self.to_string());
        (self.status(), super::templates::error_page(&text)).into_response()
    }
}
