//! [`KafkaOption`]: one librdkafka property given by an operator as
//! `KEY=VALUE` (the `--kafka-option` flag of the worker and the CLI), with
//! secrets kept out of sight.
//!
//! Any librdkafka property passes through, e.g. for a managed cluster:
//! `security.protocol=SASL_SSL`, `sasl.mechanism=SCRAM-SHA-512`,
//! `sasl.username=app`, `sasl.password=@/run/secrets/kafka-password`,
//! `ssl.ca.location=/etc/ssl/ca.pem`.
//!
//! A key containing `password`, `secret` or `key` is secret: its value is
//! never shown (`Debug` and `Display` print `***`), and it may be given as
//! `KEY=@/path/to/file` to read the value from a file (one trailing newline
//! dropped), so it stays out of the command line and the shell history.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// One `KEY=VALUE` librdkafka property.
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaOption {
    key: String,
    value: String,
}

/// A `--kafka-option` that cannot be used. Never holds a secret value.
#[derive(Debug, thiserror::Error)]
pub enum OptionError {
    /// The text is not `KEY=VALUE`.
    #[error("a Kafka option must be KEY=VALUE (a librdkafka property), got {0:?}")]
    Syntax(String),
    /// The secret file of `KEY=@file` could not be read.
    #[error("cannot read the value of {key} from {path}: {source}")]
    ReadSecret {
        /// The property.
        key: String,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// True for a property whose value must never be shown: its name contains
/// `password`, `secret` or `key` (and the other words of
/// [`backstop::redact::is_secret_property`], the one rule this delegates to).
pub fn is_secret(key: &str) -> bool {
    backstop::redact::is_secret_property(key)
}

impl KafkaOption {
    /// A property as given.
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        KafkaOption {
            key: key.into(),
            value: value.into(),
        }
    }

    /// Parses `KEY=VALUE`; for a secret key, `KEY=@path` reads the value from `path`.
    pub fn parse(spec: &str) -> Result<Self, OptionError> {
        let Some((key, value)) = spec.split_once('=') else {
            // No value: the text is a key (or garbage), never a secret.
            return Err(OptionError::Syntax(spec.to_owned()));
        };
        let key = key.trim();
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err(OptionError::Syntax(format!("{key}=…")));
        }
        let value = match value.strip_prefix('@') {
            Some(path) if is_secret(key) => {
                let path = PathBuf::from(path);
                backstop::secret::read_secret_file(&path).map_err(|source| {
                    OptionError::ReadSecret {
                        key: key.to_owned(),
                        path,
                        source,
                    }
                })?
            }
            _ => value.to_owned(),
        };
        Ok(KafkaOption::new(key, value))
    }

    /// The librdkafka property name.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The value (a secret's too: for handing to librdkafka, not for showing).
    pub fn value(&self) -> &str {
        &self.value
    }

    /// The value as it may be shown: `***` for a secret.
    pub fn shown_value(&self) -> &str {
        if is_secret(&self.key) {
            "***"
        } else {
            &self.value
        }
    }
}

impl FromStr for KafkaOption {
    type Err = OptionError;

    fn from_str(spec: &str) -> Result<Self, OptionError> {
        KafkaOption::parse(spec)
    }
}

impl fmt::Display for KafkaOption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.key, self.shown_value())
    }
}

impl fmt::Debug for KafkaOption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KafkaOption({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_key_value_and_hides_secrets() {
        let plain = KafkaOption::parse("security.protocol=SASL_SSL").expect("valid");
        assert_eq!(
            (plain.key(), plain.value()),
            ("security.protocol", "SASL_SSL")
        );
        assert_eq!(plain.to_string(), "security.protocol=SASL_SSL");

        let secret = KafkaOption::parse("sasl.password=hunter2=x").expect("valid");
        assert_eq!(secret.value(), "hunter2=x");
        assert_eq!(secret.to_string(), "sasl.password=***");
        assert!(!format!("{secret:?}").contains("hunter2"));
        for key in [
            "ssl.key.password",
            "sasl.oauthbearer.client.secret",
            "ssl.key.pem",
        ] {
            assert!(is_secret(key), "{key}");
        }
        assert!(!is_secret("sasl.username"));
    }

    #[test]
    fn reads_a_secret_from_a_file_and_names_only_the_file_on_error() {
        let path = std::env::temp_dir().join(format!("kafka-opt-{}", std::process::id()));
        std::fs::write(&path, "s3cret\n").expect("write");
        let option = KafkaOption::parse(&format!("sasl.password=@{}", path.display()));
        std::fs::remove_file(&path).ok();
        assert_eq!(option.expect("read").value(), "s3cret");

        let error = KafkaOption::parse("sasl.password=@/no/such/file").expect_err("missing");
        assert!(error.to_string().contains("/no/such/file"), "{error}");
        // A non-secret key keeps an @ literally.
        assert_eq!(
            KafkaOption::parse("client.id=@me").expect("valid").value(),
            "@me"
        );
        assert!(KafkaOption::parse("no-equals").is_err());
        assert!(KafkaOption::parse("=v").is_err());
    }
}
