//! Hiding credentials before anything is shown: in a URL ([`redact_url`]), in
//! free text that may quote URLs ([`redact_text`]) and in client properties
//! ([`is_secret_property`]).
//!
//! URLs are read with the `url` crate, so the password is whatever a client
//! library would send: everything between the first `:` and the **last** `@`
//! of the authority, whatever `@`, `:` or `%` it contains. What the parser
//! refuses but still looks like `scheme:…@host` loses everything up to that
//! last `@`: hiding too much is better than showing a password.

/// What a hidden password is shown as.
pub const HIDDEN: &str = "***";

/// `url` with its password replaced by `***` (`amqp://guest:***@host/%2f`).
///
/// A URL without a password is returned unchanged (no normalisation). One the
/// parser refuses but that has a `scheme:` and an `@` is shown as
/// `scheme:***@rest`, so a mistyped URL cannot leak its password either.
///
/// A node list (URLs separated by commas, each starting with a `scheme://`)
/// has the password of every URL in it hidden:
///
/// ```
/// use backstop::redact::redact_url;
///
/// assert_eq!(
///     redact_url("amqp://u:p1@n1/%2f,amqp://u:p2@n2/%2f"),
///     "amqp://u:***@n1/%2f,amqp://u:***@n2/%2f"
/// );
/// ```
pub fn redact_url(url: &str) -> String {
    let nodes = crate::nodes::split_where(url, starts_with_scheme);
    if nodes.len() > 1 {
        return nodes
            .iter()
            .map(|node| redact_one(node))
            .collect::<Vec<_>>()
            .join(",");
    }
    redact_one(url)
}

/// Whether `text` starts with `scheme://`.
fn starts_with_scheme(text: &str) -> bool {
    text.split_once("://").is_some_and(|(scheme, _)| {
        scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    })
}

/// One URL with its password hidden.
fn redact_one(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if !parsed.cannot_be_a_base() => {
            if parsed.password().is_none() {
                return url.to_owned();
            }
            if parsed.set_password(Some(HIDDEN)).is_err() {
                return fallback(url);
            }
            let mut shown = parsed.to_string();
            // The parser adds a `/` to an empty path of `http://`-like URLs.
            if !url.ends_with('/') && parsed.path() == "/" && shown.ends_with('/') {
                shown.pop();
            }
            shown
        }
        _ => fallback(url),
    }
}

/// `scheme:` + everything up to the last `@` hidden, for text the URL parser
/// refuses (or a URL without a base, such as `amqp:user:pw@host`).
fn fallback(url: &str) -> String {
    let Some(colon) = url.find(':') else {
        return url.to_owned();
    };
    let scheme = &url[..colon];
    let is_scheme = !scheme.is_empty()
        && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    match url.rfind('@') {
        Some(at) if is_scheme && at > colon => {
            let slashes = if url[colon + 1..].starts_with("//") {
                "//"
            } else {
                ""
            };
            format!("{scheme}:{slashes}{HIDDEN}{}", &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// `text` with the password of every URL in it hidden (see [`redact_url`]).
///
/// Words are split at whitespace; quotes, brackets and punctuation around a
/// URL (`'amqp://u:p@h'`, `(http://…)`) are kept as they are.
pub fn redact_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        let word_end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let (word, tail) = rest.split_at(word_end);
        out.push_str(&redact_word(word));
        let space_end = tail
            .find(|c: char| !c.is_whitespace())
            .unwrap_or(tail.len());
        out.push_str(&tail[..space_end]);
        rest = &tail[space_end..];
    }
    out
}

fn redact_word(word: &str) -> String {
    if !word.contains('@') || !word.contains(':') {
        return word.to_owned();
    }
    let wrapper = |c: char| {
        matches!(
            c,
            '\'' | '"' | '`' | '(' | ')' | '<' | '>' | '[' | ']' | ',' | ';'
        )
    };
    let core = word.trim_start_matches(wrapper);
    let lead = &word[..word.len() - core.len()];
    let core = core.trim_end_matches(wrapper);
    let trail = &word[lead.len() + core.len()..];
    format!("{lead}{}{trail}", redact_url(core))
}

/// True when a client property of this name holds a secret and must not be
/// shown: its name contains `password`, `secret` or `key` (so a key's file
/// location is hidden too: better one path too many than a key), a token,
/// a credential or a JAAS configuration, or it is `sasl.oauthbearer.config`.
/// The one rule for every adapter and the CLI.
pub fn is_secret_property(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["password", "secret", "key", "jaas", "token", "credential"]
        .iter()
        .any(|s| name.contains(s))
        || name == "sasl.oauthbearer.config"
}

/// `value` when the property `name` is not a secret, else `***`.
pub fn property_value<'a>(name: &str, value: &'a str) -> &'a str {
    if is_secret_property(name) {
        HIDDEN
    } else {
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_hidden_whatever_it_contains() {
        assert_eq!(
            redact_url("amqp://guest:secret@host:5672/%2f"),
            "amqp://guest:***@host:5672/%2f"
        );
        for url in [
            "amqp://u:p@ss@h/",
            "amqp://u:p:ss@h:5672/%2f",
            "postgres://u:p%40ss@h/db",
            "redis://:p@s:s%@h:6379/0",
            "http://u:p@ss@h:15672",
        ] {
            let shown = redact_url(url);
            assert!(!shown.contains("ss"), "{url} shown as {shown}");
            assert!(shown.contains(HIDDEN), "{url} shown as {shown}");
        }
        assert_eq!(redact_url("amqp://u:p@ss@h/"), "amqp://u:***@h/");
        assert_eq!(redact_url("http://u:p@h:15672"), "http://u:***@h:15672");
    }

    #[test]
    fn urls_without_a_password_are_unchanged() {
        assert_eq!(redact_url("amqp://host:5672"), "amqp://host:5672");
        assert_eq!(redact_url("amqp://user@host"), "amqp://user@host");
        assert_eq!(redact_url("http://h:15672"), "http://h:15672");
        assert_eq!(redact_url("not a url"), "not a url");
        assert_eq!(redact_url("127.0.0.1:9092"), "127.0.0.1:9092");
    }

    #[test]
    fn urls_the_parser_refuses_still_hide_the_password() {
        assert_eq!(redact_url("amqp:u:s3cret@h"), "amqp:***@h");
        assert_eq!(
            redact_url("amqp://u:s3cret@h:notaport"),
            "amqp://***@h:notaport"
        );
    }

    #[test]
    fn text_keeps_its_shape() {
        assert_eq!(
            redact_text("Invalid URL: 'amqp:u:s3cret@h' (at  amqp://a:b@c)\n"),
            "Invalid URL: 'amqp:***@h' (at  amqp://a:***@c)\n"
        );
        assert_eq!(redact_text("mail me@example.com"), "mail me@example.com");
    }

    #[test]
    fn secret_properties_are_recognised() {
        for name in [
            "sasl.password",
            "ssl.key.password",
            "sasl.jaas.config",
            "sasl.oauthbearer.client.secret",
            "ssl.key.pem",
            "ssl.keystore.password",
        ] {
            assert!(is_secret_property(name), "{name}");
        }
        for name in ["bootstrap.servers", "sasl.username", "security.protocol"] {
            assert!(!is_secret_property(name), "{name}");
        }
    }
}
