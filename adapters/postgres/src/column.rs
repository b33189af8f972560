//! Text for PostgreSQL `text` columns, which cannot hold NUL characters.

use std::borrow::Cow;

use backstop::idempotency::Key;

/// Marks a key stored escaped.
const ESCAPED: &str = "nul-escaped:";

/// The `key` column's value for `key`: the key itself, or — if it holds a
/// NUL or starts with the marker — the marker followed by the key with `\`
/// and NUL escaped. Distinct keys stay distinct.
pub(crate) fn key(key: &Key) -> Cow<'_, str> {
    let raw = key.as_str();
    if !raw.contains('\0') && !raw.starts_with(ESCAPED) {
        return Cow::Borrowed(raw);
    }
    let mut stored = String::with_capacity(ESCAPED.len() + raw.len() + 8);
    stored.push_str(ESCAPED);
    for c in raw.chars() {
        match c {
            '\\' => stored.push_str("\\\\"),
            '\0' => stored.push_str("\\0"),
            c => stored.push(c),
        }
    }
    Cow::Owned(stored)
}

/// Informational text (message id, source) with NUL replaced.
pub(crate) fn text(value: &str) -> Cow<'_, str> {
    if value.contains('\0') {
        Cow::Owned(value.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_keys_are_kept_and_nul_keys_escaped_without_collisions() {
        assert_eq!(key(&Key::new("order-1")), "order-1");
        let raws = [
            "a\0",
            "a\\0",
            "nul-escaped:a\\0",
            "nul-escaped:a",
            "a",
            "\0\0",
            "\\0\\0",
        ];
        let stored: Vec<String> = raws
            .iter()
            .map(|r| key(&Key::new(r)).into_owned())
            .collect();
        for (i, s) in stored.iter().enumerate() {
            assert!(!s.contains('\0'), "{s:?}");
            for (j, t) in stored.iter().enumerate() {
                assert!(i == j || s != t, "{:?} and {:?} collide", raws[i], raws[j]);
            }
        }
        assert_eq!(text("id\0x"), "id\u{FFFD}x");
        assert_eq!(text("id"), "id");
    }
}
