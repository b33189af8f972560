//! Delay tiers for non-blocking retries.
//!
//! A transient failure whose delay is longer than the retry policy's
//! in-process limit is republished (by [`KafkaRetrySink`](crate::KafkaRetrySink))
//! to the retry topic of its tier, `<topic>.<group>.retry.<tier>`: the
//! smallest tier at least as long as the delay, else the longest. The copy
//! carries `x-backstop-due`; the source consuming a retry topic holds each
//! message, with its partition paused, until it is due, and then hands it to
//! the same stack.
//!
//! A copy is held at most its tier's delay ([`RetryTiers::hold_limit`]): a
//! delay longer than the longest tier (a long `retry_after`) comes back after
//! that tier's delay, runs, and counts an attempt, rather than parking the
//! retry partition, and every copy behind it, for hours.
//!
//! By default per-key order is **not** kept across a non-blocking retry: the
//! copy waits on another topic while later messages of its key run. With
//! [`KafkaConfig::ordered_retries`](crate::KafkaConfig::ordered_retries)
//! (exactly-once mode) it is: the later messages of the key wait behind the
//! copy in the parked topic, and other keys keep flowing (see
//! [`parking`](crate::parking)). Without either, keep delays within the
//! in-process limit when order matters (the retry layer sleeps and the
//! key's later messages wait behind it).

use std::fmt;
use std::time::Duration;

use backstop::retry::tier_name;

/// One delay tier: its delay and its name in topic names (`5s`, `30s`, `5m`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RetryTier {
    delay: Duration,
    name: String,
}

impl RetryTier {
    /// A tier of `delay`, named after it (`1500ms`, `5s`, `5m`, `1h`).
    pub fn new(delay: Duration) -> Self {
        RetryTier {
            delay,
            name: tier_name(delay),
        }
    }

    /// The tier's delay.
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// The tier's name, the last part of its topic's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for RetryTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// The delay tiers of a consumer group, shortest first. Default: 5 s, 30 s, 5 min.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryTiers {
    tiers: Vec<RetryTier>,
}

impl Default for RetryTiers {
    fn default() -> Self {
        RetryTiers::new([
            Duration::from_secs(5),
            Duration::from_secs(30),
            Duration::from_secs(300),
        ])
    }
}

impl RetryTiers {
    /// Tiers of these delays (sorted, duplicates removed). No tiers means no
    /// retry topics: a retry sink then refuses every copy.
    pub fn new(delays: impl IntoIterator<Item = Duration>) -> Self {
        let mut tiers: Vec<RetryTier> = delays.into_iter().map(RetryTier::new).collect();
        tiers.sort();
        tiers.dedup_by(|a, b| a.name == b.name);
        RetryTiers { tiers }
    }

    /// The tiers, shortest first.
    pub fn tiers(&self) -> &[RetryTier] {
        &self.tiers
    }

    /// True when there are no tiers.
    pub fn is_empty(&self) -> bool {
        self.tiers.is_empty()
    }

    /// How long a source holds a message of `retry_topic` at most, however
    /// far its `x-backstop-due` lies: the delay of the tier the topic is named
    /// after (`….retry.<tier>`), else the longest tier (zero without tiers).
    ///
    /// So a copy whose delay is longer than its tier (a `retry_after` above
    /// the longest tier, or a writer's clock running fast) never parks its
    /// partition, and the copies behind it, for longer than the tier's delay:
    /// it runs again after that delay (and counts an attempt). Configure a
    /// longer tier for longer delays.
    pub fn hold_limit(&self, retry_topic: &str) -> Duration {
        let named = retry_topic
            .rsplit_once(".retry.")
            .and_then(|(_, name)| self.tiers.iter().find(|t| t.name == name));
        named
            .or_else(|| self.tiers.last())
            .map_or(Duration::ZERO, RetryTier::delay)
    }

    /// The tier for `delay`: the shortest at least as long, else the longest.
    pub fn pick(&self, delay: Duration) -> Option<&RetryTier> {
        self.tiers
            .iter()
            .find(|t| t.delay >= delay)
            .or_else(|| self.tiers.last())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_are_named_after_their_delay() {
        let names: Vec<String> = RetryTiers::default()
            .tiers()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(names, ["5s", "30s", "5m"]);
        assert_eq!(RetryTier::new(Duration::from_millis(1500)).name(), "1500ms");
        assert_eq!(RetryTier::new(Duration::from_secs(7200)).name(), "2h");
    }

    #[test]
    fn pick_takes_the_shortest_tier_that_covers_the_delay() {
        let tiers = RetryTiers::default();
        assert_eq!(
            tiers.pick(Duration::from_secs(2)).map(RetryTier::name),
            Some("5s")
        );
        assert_eq!(
            tiers.pick(Duration::from_secs(5)).map(RetryTier::name),
            Some("5s")
        );
        assert_eq!(
            tiers.pick(Duration::from_secs(6)).map(RetryTier::name),
            Some("30s")
        );
        assert_eq!(
            tiers.pick(Duration::from_secs(3600)).map(RetryTier::name),
            Some("5m")
        );
        assert_eq!(RetryTiers::new([]).pick(Duration::from_secs(1)), None);
    }

    #[test]
    fn a_retry_topic_holds_at_most_its_tier_delay() {
        let tiers = RetryTiers::default();
        assert_eq!(
            tiers.hold_limit("orders.g.retry.30s"),
            Duration::from_secs(30)
        );
        assert_eq!(
            tiers.hold_limit("a.retry.b.g.retry.5s"),
            Duration::from_secs(5)
        );
        assert_eq!(tiers.hold_limit("orders.g.later"), Duration::from_secs(300));
        assert_eq!(
            RetryTiers::new([]).hold_limit("x.g.retry.5s"),
            Duration::ZERO
        );
    }
}
