//! A letter's body as pretty JSON, text or a hex dump, and its trace id.

/// How to show a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// Pretty-printed JSON.
    Json,
    /// UTF-8 text (invalid bytes replaced).
    Text,
    /// Offset, hex bytes and printable ASCII, 16 bytes a line.
    Hex,
}

impl View {
    /// The view named `name` (`json`, `text`, `hex`), else the best one for
    /// `body`: JSON when it parses, text when it is UTF-8, else hex.
    pub fn pick(name: Option<&str>, body: &[u8]) -> View {
        match name {
            Some("json") => View::Json,
            Some("text") => View::Text,
            Some("hex") => View::Hex,
            _ if serde_json::from_slice::<serde_json::Value>(body).is_ok() => View::Json,
            _ if std::str::from_utf8(body).is_ok() => View::Text,
            _ => View::Hex,
        }
    }

    /// Its name in a URL.
    pub fn name(self) -> &'static str {
        match self {
            View::Json => "json",
            View::Text => "text",
            View::Hex => "hex",
        }
    }
}

/// At most this many bytes of a body are shown (the export has them all).
pub const SHOWN: usize = 256 * 1024;

/// `body` shown as `view` (plain text: the template escapes it); a note
/// when it was cut or is not what the view expects.
pub fn render(body: &[u8], view: View) -> (String, Option<String>) {
    let (shown, cut) = if body.len() > SHOWN {
        (&body[..SHOWN], true)
    } else {
        (body, false)
    };
    let mut note = cut.then(|| {
        format!(
            "the first {SHOWN} of {} bytes (export the letter for all of it)",
            body.len()
        )
    });
    let text = match view {
        View::Json => match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(v) => serde_json::to_string_pretty(&v).unwrap_or_default(),
            Err(e) => {
                note = Some(format!("not JSON ({e}): shown as text"));
                String::from_utf8_lossy(shown).into_owned()
            }
        },
        View::Text => String::from_utf8_lossy(shown).into_owned(),
        View::Hex => hex_dump(shown),
    };
    (text, note)
}

fn hex_dump(bytes: &[u8]) -> String {
    let mut out = String::new();
    for (i, line) in bytes.chunks(16).enumerate() {
        let hex: Vec<String> = line.iter().map(|b| format!("{b:02x}")).collect();
        let ascii: String = line
            .iter()
            .map(|&b| {
                if b.is_ascii_graphic() || b == b' ' {
                    char::from(b)
                } else {
                    '.'
                }
            })
            .collect();
        out.push_str(&format!("{:08x}  {:<47}  {ascii}\n", i * 16, hex.join(" ")));
    }
    out
}

/// The trace id of a W3C `traceparent` header (`00-<trace>-<span>-<flags>`).
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.trim().split('-');
    let _version = parts.next()?;
    let trace = parts.next()?;
    (trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit())).then_some(trace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_view_fits_the_body() {
        assert_eq!(View::pick(None, b"{\"a\":1}"), View::Json);
        assert_eq!(View::pick(None, b"<script>"), View::Text);
        assert_eq!(View::pick(None, &[0xff, 0]), View::Hex);
        assert_eq!(render(b"{\"a\":1}", View::Json).0, "{\n  \"a\": 1\n}");
        assert!(
            render(&[0x41, 0x00], View::Hex)
                .0
                .starts_with("00000000  41 00")
        );
        assert_eq!(
            trace_id("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(trace_id("garbage"), None);
    }
}
