//! [`Budget`]: how long a publish tries the broker before the message goes
//! to the spool, and how that bounds the broker client's own retries.

use std::time::Duration;

use backstop::RetryPolicy;

use crate::OpenError;

/// How hard a publish tries the broker before it spools the message.
///
/// Each attempt is bounded by [`attempt_timeout`](Budget::attempt_timeout);
/// between attempts the publisher sleeps [`RetryPolicy::delay`] (exponential
/// backoff with full jitter); it gives up after
/// [`max_attempts`](RetryPolicy::max_attempts) attempts or
/// [`max_elapsed`](RetryPolicy::max_elapsed), whichever comes first. The
/// relay backs off between failed rounds with the same policy's delays
/// (it never gives up).
///
/// # Broker clients that retry on their own
///
/// librdkafka retries a produce internally until `message.timeout.ms`. That
/// timeout must fit inside one attempt, or the client may still deliver a
/// message after the publisher gave up on it and spooled it (a duplicate,
/// never a loss, but also a message that overtakes the ones spooled before
/// it). Set [`KafkaConfig::message_timeout`] to at most the attempt timeout,
/// and tell the builder, which checks it
/// ([`client_timeout`](crate::ReliablePublisherBuilder::client_timeout)):
///
/// ```no_run
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use backstop::RetryPolicy;
/// use backstop_kafka::Kafka;
/// use backstop_spool::{Budget, ReliablePublisher, SpoolConfig};
///
/// // librdkafka already retries inside message.timeout.ms: one attempt of 5 s.
/// let budget = Budget::new(RetryPolicy::none(), Duration::from_secs(5));
/// let kafka = Kafka::new("127.0.0.1:9092", "orders-service")
///     .configure(|c| c.message_timeout = Duration::from_secs(4));
/// let producer = kafka.publisher()?;
/// let reliable = ReliablePublisher::builder(producer.clone(), SpoolConfig::new("orders.spool"))
///     .budget(budget)
///     .client_timeout(producer.message_timeout()) // checked: 4 s fits in 5 s
///     .open()
///     .await?;
/// # Ok(()) }
/// ```
///
/// RabbitMQ's client does not retry by itself; its confirm timeout
/// ([`ConnectOptions::confirm_timeout`]) should also fit in an attempt.
///
/// [`KafkaConfig::message_timeout`]: https://docs.rs/backstop-kafka/latest/backstop_kafka/struct.KafkaConfig.html#structfield.message_timeout
/// [`ConnectOptions::confirm_timeout`]: https://docs.rs/backstop-rabbitmq/latest/backstop_rabbitmq/struct.ConnectOptions.html#method.confirm_timeout
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Attempts and backoff (default: 3 retries, 100 ms … 2 s, at most 10 s in all).
    pub retry: RetryPolicy,
    /// The longest one attempt may wait for the broker's confirm (default 5 s).
    pub attempt_timeout: Duration,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            retry: RetryPolicy::retries(3)
                .backoff(Duration::from_millis(100), Duration::from_secs(2))
                .max_elapsed(Duration::from_secs(10)),
            attempt_timeout: Duration::from_secs(5),
        }
    }
}

impl Budget {
    /// A budget of `retry` with `attempt_timeout` per attempt.
    pub fn new(retry: RetryPolicy, attempt_timeout: Duration) -> Self {
        Budget {
            retry,
            attempt_timeout,
        }
    }

    /// The longest a publish can take before it spools the message: every
    /// attempt timing out, with the longest backoff between them, capped by
    /// `max_elapsed` (plus the last attempt, which may start just before it).
    pub fn worst_case(&self) -> Duration {
        let attempts = self.retry.max_attempts.max(1);
        let mut total = Duration::ZERO;
        for failed in 1..attempts {
            total = total
                .saturating_add(self.attempt_timeout)
                .saturating_add(self.retry.ceiling(failed));
        }
        let before_last = match self.retry.max_elapsed {
            Some(max) => total.min(max),
            None => total,
        };
        before_last.saturating_add(self.attempt_timeout)
    }

    /// Checks that a broker client's own delivery timeout fits inside one attempt.
    pub fn check_client_timeout(&self, client: Duration) -> Result<(), OpenError> {
        if client > self.attempt_timeout {
            return Err(OpenError::ClientTimeout {
                client,
                attempt: self.attempt_timeout,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worst_case_adds_attempts_and_backoff() {
        let b = Budget::new(
            RetryPolicy::retries(2).backoff(Duration::from_millis(100), Duration::from_secs(1)),
            Duration::from_secs(1),
        );
        // 1 s + 100 ms + 1 s + 200 ms + 1 s
        assert_eq!(b.worst_case(), Duration::from_millis(3_300));
        let capped = Budget::new(
            b.retry.clone().max_elapsed(Duration::from_secs(1)),
            b.attempt_timeout,
        );
        assert_eq!(capped.worst_case(), Duration::from_secs(2));
        let one = Budget::new(RetryPolicy::none(), Duration::from_secs(5));
        assert_eq!(one.worst_case(), Duration::from_secs(5));
    }

    #[test]
    fn a_client_timeout_longer_than_an_attempt_is_refused() {
        let b = Budget::new(RetryPolicy::none(), Duration::from_secs(5));
        assert!(b.check_client_timeout(Duration::from_secs(5)).is_ok());
        let err = b.check_client_timeout(Duration::from_secs(30)).unwrap_err();
        assert!(err.to_string().contains("message.timeout.ms"), "{err}");
    }
}
