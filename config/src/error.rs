//! [`ConfigError`]: what is wrong, with which key, and where it came from.
//! No error ever quotes a configured value, so none can show a secret.

use std::path::PathBuf;

use figment::error::{Actual, Kind};

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file named with `--config` cannot be read.
    #[error("cannot read the configuration file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{path}:{line}:{column}: not valid TOML: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// What the parser says (it does not quote the line).
        message: String,
    },
    /// A key has a value that cannot be used, or is not known.
    #[error("{key}: {problem} (in {origin})")]
    Key {
        /// The key, dotted (`store.lease_ms`).
        key: String,
        /// Where it was set: the file's path, `environment variable X`, `flag --x`.
        origin: String,
        /// What is wrong, without the value.
        problem: String,
    },
    /// A secret file named by the configuration cannot be read.
    #[error("{key}: cannot read the secret file {path}: {source}")]
    SecretFile {
        /// The key naming the file.
        key: String,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Two keys that exclude each other are both set.
    #[error("{0}")]
    Conflict(String),
}

/// What kind of value `actual` is, without the value.
fn kind_of(actual: &Actual) -> &'static str {
    match actual {
        Actual::Bool(_) => "a boolean",
        Actual::Unsigned(_) | Actual::Signed(_) | Actual::Float(_) => "a number",
        Actual::Char(_) | Actual::Str(_) => "a text",
        Actual::Bytes(_) => "bytes",
        Actual::Unit | Actual::Option => "nothing",
        Actual::Seq => "a list",
        Actual::Map => "a table",
        _ => "another kind of value",
    }
}

/// The key path of `error` and what is wrong with it.
pub(crate) fn describe(error: &figment::Error) -> (String, String) {
    let mut key = error.path.join(".");
    let problem = match &error.kind {
        Kind::Message(message) => message.clone(),
        Kind::InvalidType(actual, expected) => {
            format!("expected {expected}, found {}", kind_of(actual))
        }
        Kind::InvalidValue(actual, expected) => {
            format!("expected {expected}, found another {}", kind_of(actual))
        }
        Kind::InvalidLength(len, expected) => format!("expected {expected}, found {len} items"),
        Kind::UnknownVariant(_, expected) => {
            format!("unknown value; expected one of: {}", expected.join(", "))
        }
        Kind::UnknownField(field, expected) => {
            // figment's path may already end with the field.
            if error.path.last() != Some(field) {
                key = if key.is_empty() {
                    field.clone()
                } else {
                    format!("{key}.{field}")
                };
            }
            format!("unknown key; expected one of: {}", expected.join(", "))
        }
        Kind::MissingField(field) => format!("missing key {field}"),
        Kind::DuplicateField(field) => format!("{field} is set twice"),
        Kind::ISizeOutOfRange(_) | Kind::USizeOutOfRange(_) => "number out of range".to_owned(),
        Kind::Unsupported(actual) => format!("{} cannot be used here", kind_of(actual)),
        Kind::UnsupportedKey(actual, _) => format!("{} cannot be a key", kind_of(actual)),
    };
    (key, problem)
}
