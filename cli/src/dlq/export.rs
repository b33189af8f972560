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
//! `headers` maps each name to its value: a string for text, `null` for a
//! null, `{"bytes":"<hex>"}` for other bytes and `{"amqp":…}` for a typed
//! AMQP value; where a name repeats (Kafka), it is a list of `[name, value]`
//! pairs instead. An export and import keeps every header that way.

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
    pub headers: backstop::message::Headers,
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
    /// How many copies of the letter the DLQ holds (more than 1 after a
    /// crash wrote it twice); `list` and `show` only.
    #[serde(skip_serializing_if = "is_one")]
    pub copies: u32,
}

fn is_one(n: &u32) -> bool {
    *n == 1
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
            copies: letter.copies,
        }
    }
}

/// A [`LetterJson`] line written with `copies` 1 (so without the field),
/// given its final copy count: the same text serde writes for that count.
pub fn with_copies(line: &str, copies: u32) -> String {
    match line.strip_suffix('}') {
        Some(open) if copies != 1 => format!("{open},\"copies\":{copies}}}"),
        _ => line.to_owned(),
    }
}

/// A JSON-lines export being written, one letter at a time.
#[derive(Debug)]
pub struct Writer {
    path: String,
    out: std::io::BufWriter<std::fs::File>,
    written: usize,
}

impl Writer {
    /// Creates (or truncates) `path`.
    pub fn create(path: &str) -> Result<Self, CliError> {
        let file = std::fs::File::create(path).map_err(|source| CliError::Io {
            path: path.to_owned(),
            source,
        })?;
        Ok(Writer {
            path: path.to_owned(),
            out: std::io::BufWriter::new(file),
            written: 0,
        })
    }

    fn io(&self, source: std::io::Error) -> CliError {
        CliError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Appends `letter` as one line.
    pub fn write(&mut self, letter: &Letter) -> Result<(), CliError> {
        let line = serde_json::to_string(&LetterJson::of(letter)).map_err(|e| self.io(e.into()))?;
        writeln!(self.out, "{line}").map_err(|e| self.io(e))?;
        self.written += 1;
        Ok(())
    }

    /// Flushes the file; returns how many letters were written.
    pub fn finish(mut self) -> Result<usize, CliError> {
        self.out.flush().map_err(|e| self.io(e))?;
        Ok(self.written)
    }
}

/// One line of an export, as read back by [`Reader`].
#[derive(Debug, serde::Deserialize)]
struct LetterLine {
    message_id: String,
    #[serde(default)]
    headers: backstop::message::Headers,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    key_encoding: Option<String>,
    payload: String,
    payload_encoding: String,
}

/// `text` in `encoding` (`utf8` or `base64`) as bytes.
fn decode(text: String, encoding: &str) -> Result<Vec<u8>, String> {
    match encoding {
        "utf8" => Ok(text.into_bytes()),
        "base64" => base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| format!("bad base64: {e}")),
        other => Err(format!("unknown encoding {other:?} (utf8 or base64)")),
    }
}

/// Reads an export back, one letter at a time.
#[derive(Debug)]
pub struct Reader {
    path: String,
    lines: std::io::Lines<std::io::BufReader<std::fs::File>>,
    line: usize,
}

impl Reader {
    /// Opens `path`.
    pub fn open(path: &str) -> Result<Self, CliError> {
        use std::io::BufRead as _;
        let file = std::fs::File::open(path).map_err(|source| CliError::Io {
            path: path.to_owned(),
            source,
        })?;
        Ok(Reader {
            path: path.to_owned(),
            lines: std::io::BufReader::new(file).lines(),
            line: 0,
        })
    }

    /// The next letter as a message (message id, headers, key, payload), or
    /// `None` at the end; blank lines are skipped. A malformed line is an
    /// error naming the file and line.
    pub fn next_message(&mut self) -> Result<Option<backstop::Message>, CliError> {
        for text in self.lines.by_ref() {
            self.line += 1;
            let text = text.map_err(|source| CliError::Io {
                path: self.path.clone(),
                source,
            })?;
            if text.trim().is_empty() {
                continue;
            }
            return parse_line(&text).map(Some).map_err(|reason| {
                CliError::Usage(format!(
                    "{} line {}: not a backstop export line: {reason}",
                    self.path, self.line
                ))
            });
        }
        Ok(None)
    }
}

/// The message of one export line (a [`LetterJson`]): message id, headers,
/// key and payload; or why the line is not one.
pub fn parse_line(text: &str) -> Result<backstop::Message, String> {
    let l: LetterLine = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if l.message_id.is_empty() {
        return Err("empty message_id".into());
    }
    let payload = decode(l.payload, &l.payload_encoding)?;
    let key = match l.key {
        Some(k) => Some(decode(k, l.key_encoding.as_deref().unwrap_or("utf8"))?),
        None => None,
    };
    let mut message = backstop::Message::new(payload).with_message_id(l.message_id);
    message.headers = l.headers;
    message.key = key.map(bytes::Bytes::from);
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_copies_writes_what_serde_writes() {
        let mut letter = Letter::new(backstop::Message::new("{}").with_message_id("m"));
        let one = serde_json::to_string(&LetterJson::of(&letter)).unwrap();
        letter.copies = 3;
        let three = serde_json::to_string(&LetterJson::of(&letter)).unwrap();
        assert_eq!(with_copies(&one, 3), three);
        assert_eq!(with_copies(&one, 1), one);
    }

    #[test]
    fn an_export_reads_back_as_the_same_message() {
        let original = backstop::Message::new(vec![0u8, 159, 146, 150])
            .with_message_id("m-1")
            .with_key("k\u{1}")
            .with_header(backstop::wire::ERROR, "boom");
        let path = std::env::temp_dir().join(format!(
            "backstop-export-{}.jsonl",
            backstop::message::new_message_id()
        ));
        let path = path.to_str().unwrap_or_default().to_owned();
        let mut writer = Writer::create(&path).unwrap();
        writer.write(&Letter::new(original.clone())).unwrap();
        writer.finish().unwrap();
        std::fs::write(
            &path,
            std::fs::read_to_string(&path).unwrap() + "\n{\"message_id\":1}\n",
        )
        .unwrap();
        let mut reader = Reader::open(&path).unwrap();
        let read = reader.next_message().unwrap().unwrap();
        assert_eq!(read.payload, original.payload);
        assert_eq!(read.key, original.key);
        assert_eq!(read.headers, original.headers);
        assert_eq!(read.meta.message_id, "m-1");
        let e = reader.next_message().unwrap_err().to_string();
        assert!(e.contains("line 3"), "{e}");
        let _ = std::fs::remove_file(&path);
    }
}
