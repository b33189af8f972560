//! Printing dead letters: the `list` table and the `show` view.

use std::fmt::Write as _;

use backstop::wire;

use crate::dlq::Letter;

/// `text` cut to `max` characters, with `…` when cut; newlines become spaces.
pub fn shorten(text: &str, max: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= max {
        return flat;
    }
    let mut out: String = flat.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The `list` table: id, original source, attempts, replays, kind, error, last failure.
pub fn render_table(letters: &[Letter]) -> String {
    let rows: Vec<[String; 7]> = letters
        .iter()
        .map(|l| {
            let m = &l.message;
            let h = |n: &str| m.header(n).unwrap_or("-").to_owned();
            let mut id = shorten(l.id(), 36);
            if let Some(state) = &l.state {
                id.push_str(&format!(" ({state})"));
            }
            [
                id,
                shorten(l.original_source().unwrap_or("-"), 30),
                h(wire::ATTEMPT),
                m.replayed().to_string(),
                h(wire::ERROR_KIND),
                shorten(m.header(wire::ERROR).unwrap_or("-"), 50),
                m.header(wire::LAST_FAILURE)
                    .or(m.header(wire::FIRST_FAILURE))
                    .unwrap_or("-")
                    .to_owned(),
            ]
        })
        .collect();
    let header = [
        "MESSAGE ID",
        "SOURCE",
        "ATTEMPTS",
        "REPLAYED",
        "KIND",
        "ERROR",
        "FAILED AT",
    ];
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let parts: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", parts.join("  ").trim_end());
    };
    line(&header.map(str::to_owned));
    for row in &rows {
        line(row);
    }
    out.push_str(&format!("{} message(s)\n", letters.len()));
    out
}

/// The `show` view: every header, then the payload (pretty JSON when it is JSON).
pub fn render_letter(letter: &Letter) -> String {
    let m = &letter.message;
    let mut out = String::new();
    let _ = writeln!(out, "message id: {}", letter.id());
    if let Some(key) = &m.key {
        let _ = writeln!(out, "key: {}", crate::dlq::export::encode(key).0);
    }
    if let (Some(p), Some(o)) = (m.meta.partition, m.meta.offset) {
        let _ = writeln!(out, "dlq position: partition {p}, offset {o}");
    }
    if let Some(state) = &letter.state {
        let _ = writeln!(out, "state: {state}");
    }
    let _ = writeln!(out, "headers:");
    for (k, v) in &m.headers {
        let _ = writeln!(out, "  {k}: {v}");
    }
    let _ = writeln!(out, "payload ({} bytes):", m.payload.len());
    let body = match serde_json::from_slice::<serde_json::Value>(&m.payload) {
        Ok(v) => serde_json::to_string_pretty(&v).unwrap_or_default(),
        Err(_) => {
            let (text, enc) = crate::dlq::export::encode(&m.payload);
            if enc == "utf8" {
                text
            } else {
                format!("(base64) {text}")
            }
        }
    };
    let _ = writeln!(out, "{body}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shorten_marks_the_cut() {
        assert_eq!(shorten("abc", 5), "abc");
        assert_eq!(shorten("abcdef", 4), "abc…");
        assert_eq!(shorten("a\nb", 5), "a b");
    }
}
