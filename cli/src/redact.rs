//! Hiding credentials in URLs before anything is printed.

pub use backstop::redact::redact_text as redact_all;

/// `url` with the password replaced by `***` (`amqp://guest:***@host/`), found
/// by a URL parser (see [`backstop::redact::redact_url`]).
pub fn redact(url: &str) -> String {
    backstop::redact::redact_url(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            redact("amqp://u:secret@h:5672/%2f"),
            "amqp://u:***@h:5672/%2f"
        );
        assert_eq!(redact("http://h:15672"), "http://h:15672");
        assert_eq!(
            redact_all("at amqp://a:b@c failed"),
            "at amqp://a:***@c failed"
        );
    }
}
