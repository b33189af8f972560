//! The JSON form of a dead letter, for `list --json`, `show --json` and `export`.
//!
//! One object per letter (one line per letter in an export):
//!
//! ```json
//! {"message_id":"…","original_source":"orders","attempts":3,"replayed":0,
//!  "error_kind":"permanent","error":"card declined",
//!  "first_failure":"2024-05-01T12:00:00.000Z","last_failure":"2024-05-01T12:00:09.000Z",
//!  "key":"customer-7","key_encoding":"utf8",
//!  "headers":{"x-backstop-attempt":"3", "…":"…"},
//!  "payload":"{\"order\":1}","payload_encoding":"utf8",
//!  "dlq_partition":0,"dlq_offset":41}
//! ```
//!
//! `payload` (and `key`) is the UTF-8 text when the bytes are valid UTF-8
//! (`"utf8"`), else standard base64 with padding (`"base64"`). Absent values are `null`.

use std::io::Write;

use base64::Engine as _;
use serde::Serialize;

use crate::dlq::Letter;
use crate::error::CliError;

/// A dead letter as JSON.
#[derive(Debug, Serialize)]
pub struct LetterJson {
    /// `x-backstop-message-id`.
    pub message_id: String,
    /// `x-backstop-original-source`.
    pub original_source: Option<String>,
    /// `x-backstop-attempt`.
    pub attempts: Option<u32>,
    /// `x-backstop-replayed` (0 when absent).
    pub replayed: u32,
    /// `x-backstop-error-kind`.
    pub error_kind: Option<String>,
    /// `x-backstop-error`.
    pub error: Option<String>,
    /// `x-backstop-first-failure`.
    pub first_failure: Option<String>,
    /// `x-backstop-last-failure`.
    pub last_failure: Option<String>,
    /// The record key (Kafka), if any.
    pub key: Option<String>,
    /// `utf8` or `base64`, when there is a key.
    pub key_encoding: Option<&'static str>,
    /// Every header.
    pub headers: backstop::Headers,
    /// The payload (see the module docs).
    pub payload: String,
    /// `utf8` or `base64`.
    pub payload_encoding: &'static str,
    /// Kafka: the letter's partition in the DLQ topic.
    pub dlq_partition: Option<i32>,
    /// Kafka: the letter's offset in the DLQ topic.
    pub dlq_offset: Option<i64>,
    /// Kafka: `replayed` or `purged` when the state topic says so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

/// `bytes` as UTF-8 text, else base64, with the encoding's name.
pub fn encode(bytes: &[u8]) -> (String, &'static str) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (text.to_owned(), "utf8"),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(bytes),
            "base64",
        ),
    }
}

impl LetterJson {
    /// The JSON form of `letter`.
    pub fn of(letter: &Letter) -> Self {
        use backstop::wire;
        let m = &letter.message;
        let h = |name: &str| m.header(name).map(str::to_owned);
        let (payload, payload_encoding) = encode(&m.payload);
        let key = m.key.as_ref().map(|k| encode(k));
        LetterJson {
            message_id: letter.id().to_owned(),
            original_source: h(wire::ORIGINAL_SOURCE),
            attempts: m.header(wire::ATTEMPT).and_then(|a| a.trim().parse().ok()),
            replayed: m.replayed(),
            error_kind: h(wire::ERROR_KIND),
            error: h(wire::ERROR),
            first_failure: h(wire::FIRST_FAILURE),
            last_failure: h(wire::LAST_FAILURE),
            key_encoding: key.as_ref().map(|k| k.1),
            key: key.map(|k| k.0),
            headers: m.headers.clone(),
            payload,
            payload_encoding,
            dlq_partition: m.meta.partition,
            dlq_offset: m.meta.offset,
            state: letter.state.clone(),
        }
    }
}

/// Writes `letters` as JSON lines to `path`; returns how many were written.
pub fn write_jsonl(path: &str, letters: &[Letter]) -> Result<usize, CliError> {
    let io = |source| CliError::Io {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::create(path).map_err(io)?;
    let mut out = std::io::BufWriter::new(file);
    for letter in letters {
        let line = serde_json::to_string(&LetterJson::of(letter)).map_err(|e| io(e.into()))?;
        writeln!(out, "{line}").map_err(io)?;
    }
    out.flush().map_err(io)?;
    Ok(letters.len())
}
