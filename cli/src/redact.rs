//! Hiding credentials in URLs before anything is printed.

/// `url` with the password replaced by `***` (`amqp://guest:***@host/`).
pub fn redact(url: &str) -> String {
    backstop_rabbitmq::redact(url)
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
            crate::error::redact_all("at amqp://a:b@c failed"),
            "at amqp://a:***@c failed"
        );
    }
}
