//! Printing dead letters: the `list` table and the `show` view.

use std::fmt::Write as _;

use backstop::wire;

use crate::dlq::Letter;
use crate::error::CliError;

/// True for a character a terminal may act on instead of showing: C0 and C1
/// controls (ESC, CSI, BEL, backspace, carriage return, …), DEL, and the
/// Unicode direction overrides and isolates that reorder what is shown.
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` safe to print on a terminal: every unsafe character (see
/// `is_unsafe`) written as a Rust escape (`\u{1b}`, `\n`), and `\` as `\\`,
/// so an escape in the data cannot be told from one in the output.
/// With `keep_lines`, newlines and tabs stay as they are (payload bodies).
pub fn escape(text: &str, keep_lines: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' | '\t' if keep_lines => out.push(c),
            '\\' => out.push_str("\\\\"),
            c if is_unsafe(c) => out.extend(c.escape_default()),
            c => out.push(c),
        }
    }
    out
}

/// JSON text safe to print on a terminal: the unsafe characters JSON allows
/// raw (DEL, C1 controls, direction overrides) written as `\uXXXX`; still
/// the same JSON value.
pub fn json_safe(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c != '\n' && is_unsafe(c) {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

/// `text` cut to `max` characters, with `…` when cut; control and other
/// unsafe characters become spaces.
pub fn shorten(text: &str, max: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if is_unsafe(c) { ' ' } else { c })
        .collect();
    if flat.chars().count() <= max {
        return flat;
    }
    let mut out: String = flat.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

const HEADER: [&str; 7] = [
    "MESSAGE ID",
    "SOURCE",
    "ATTEMPTS",
    "REPLAYED",
    "KIND",
    "ERROR",
    "FAILED AT",
];

/// Separates the fields of a stored row; [`shorten`] turns it into a space
/// in the data, so it never occurs inside a field.
const SEP: char = '\u{1f}';

/// One `list` row of `letter`, stored by [`crate::dlq::Dlq::list`]: the
/// shortened id, the state, and the other six cells. Its copy count is
/// added when the table is written.
pub fn row(letter: &Letter) -> String {
    let m = &letter.message;
    let h = |n: &str| shorten(m.header(n).unwrap_or("-"), 30);
    let cells = [
        shorten(letter.id(), 36),
        letter
            .state
            .as_deref()
            .map(|s| shorten(s, 20))
            .unwrap_or_default(),
        shorten(letter.original_source().unwrap_or("-"), 30),
        h(wire::ATTEMPT),
        m.replayed().to_string(),
        h(wire::ERROR_KIND),
        shorten(m.header(wire::ERROR).unwrap_or("-"), 50),
        shorten(
            m.header(wire::LAST_FAILURE)
                .or(m.header(wire::FIRST_FAILURE))
                .unwrap_or("-"),
            30,
        ),
    ];
    cells.join(&SEP.to_string())
}

/// The seven cells of a stored row with `copies`.
fn cells(row: &str, copies: u32) -> [String; 7] {
    let mut fields = row.split(SEP).map(str::to_owned);
    let mut next = || fields.next().unwrap_or_default();
    let mut id = next();
    let state = next();
    if copies > 1 {
        id.push_str(&format!(" ({copies} copies)"));
    }
    if !state.is_empty() {
        id.push_str(&format!(" ({state})"));
    }
    [id, next(), next(), next(), next(), next(), next()]
}

fn write_line(
    out: &mut impl std::io::Write,
    cells: &[String],
    widths: &[usize; 7],
) -> std::io::Result<()> {
    let parts: Vec<String> = cells
        .iter()
        .zip(widths)
        .map(|(c, w)| format!("{c:<w$}"))
        .collect();
    writeln!(out, "{}", parts.join("  ").trim_end())
}

/// Writes the `list` table of `listing` (rows made by [`row`]) to `out`:
/// id, original source, attempts, replays, kind, error, last failure, then
/// the count. Two reads of the listing (widths, then rows): one row in
/// memory at a time.
pub fn write_table(
    listing: &crate::dlq::Listing,
    out: &mut impl std::io::Write,
) -> Result<(), CliError> {
    let mut widths = HEADER.map(|h| h.chars().count());
    let mut n = 0usize;
    listing.each(|row, copies| {
        for (w, cell) in widths.iter_mut().zip(cells(row, copies)) {
            *w = (*w).max(cell.chars().count());
        }
        n += 1;
        Ok(())
    })?;
    let io = |source| CliError::Io {
        path: "stdout".into(),
        source,
    };
    write_line(out, &HEADER.map(str::to_owned), &widths).map_err(io)?;
    listing.each(|row, copies| write_line(out, &cells(row, copies), &widths).map_err(io))?;
    writeln!(out, "{n} message(s)").map_err(io)
}

/// The `list` table of `letters` as text (see [`write_table`]), for a few
/// letters in memory.
pub fn render_table(letters: &[Letter]) -> Result<String, CliError> {
    let listing = crate::dlq::Listing::of(letters, row)?;
    let mut out = Vec::new();
    write_table(&listing, &mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The `show` view: every header, then the payload (pretty JSON when it is
/// JSON). Everything from the letter goes through [`escape`].
pub fn render_letter(letter: &Letter) -> String {
    let m = &letter.message;
    let mut out = String::new();
    let _ = writeln!(out, "message id: {}", escape(letter.id(), false));
    if let Some(key) = &m.key {
        let _ = writeln!(
            out,
            "key: {}",
            escape(&crate::dlq::export::encode(key).0, false)
        );
    }
    if let (Some(p), Some(o)) = (m.meta.partition, m.meta.offset) {
        let _ = writeln!(out, "dlq position: partition {p}, offset {o}");
    }
    if let Some(state) = &letter.state {
        let _ = writeln!(out, "state: {state}");
    }
    if letter.copies > 1 {
        let _ = writeln!(
            out,
            "copies: {} (the DLQ holds it {} times; one letter for replay and purge)",
            letter.copies, letter.copies
        );
    }
    let _ = writeln!(out, "headers:");
    for (k, v) in m.headers.iter_values() {
        let _ = writeln!(
            out,
            "  {}: {}",
            escape(k, false),
            escape(&v.to_string(), false)
        );
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
    let _ = writeln!(out, "{}", escape(&body, true));
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

    #[test]
    fn show_and_list_print_no_terminal_escape() {
        let hostile = "\x1b]52;c;ZWNobyBwd25lZA==\x07\x1b[2J\u{9b}31m\r\u{202e}";
        let letter = Letter::new(
            backstop::Message::new(format!("{{\"a\":\"{hostile}\"}}\n{hostile}"))
                .with_message_id(format!("id{hostile}"))
                .with_header(format!("x-name{hostile}"), hostile)
                .with_header(wire::ERROR, hostile)
                .with_header(wire::ERROR_KIND, hostile)
                .with_header(wire::ATTEMPT, hostile)
                .with_header(wire::LAST_FAILURE, hostile),
        );
        let json = Letter::new(
            backstop::Message::new(format!("{{\"a\":\"\u{9b}\u{7f}{hostile}\"}}"))
                .with_message_id("j"),
        );
        for shown in [
            render_letter(&letter),
            render_letter(&json),
            render_table(std::slice::from_ref(&letter)).unwrap(),
        ] {
            let bad: Vec<char> = shown
                .chars()
                .filter(|&c| c != '\n' && is_unsafe(c))
                .collect();
            assert!(bad.is_empty(), "{bad:?} in {shown}");
        }
        assert!(render_letter(&letter).contains("\\u{1b}]52;"));
        let json = json_safe(&serde_json::to_string(&hostile).unwrap());
        assert!(!json.chars().any(is_unsafe), "{json}");
        assert_eq!(serde_json::from_str::<String>(&json).unwrap(), hostile);
        assert_eq!(escape("a\\u{1b}", false), "a\\\\u{1b}");
    }
}
