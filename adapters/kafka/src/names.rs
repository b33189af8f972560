//! The names of the topics backstop keeps beside a consumed topic, per
//! consumer group: one home for each naming rule (the sinks, the source,
//! the topic admin and the CLI all call these).
//!
//! | topic | name |
//! |---|---|
//! | DLQ | `<topic>.<group>.dlq` |
//! | a DLQ's state | `<dlq>.state` |
//! | a retry tier | `<topic>.<group>.retry.<tier>` |
//! | parked keys (ordered retries) | `<topic>.<group>.parked` |
//! | the replay epoch | `<topic>.<group>.epoch` |

use crate::RetryTier;

/// The DLQ topic of `topic` for `group`: `<topic>.<group>.dlq`.
pub fn dlq_topic(topic: &str, group: &str) -> String {
    format!("{topic}.{group}.dlq")
}

/// The state topic of a DLQ topic, `<dlq>.state`: a compacted topic where
/// `backstop dlq` records each letter it replayed or purged (keyed
/// `<message id>@<replayed>`), since a topic cannot forget a record.
pub fn dlq_state_topic(dlq: &str) -> String {
    format!("{dlq}.state")
}

/// The retry topic of `topic` for `group` and `tier`: `<topic>.<group>.retry.<tier>`.
pub fn retry_topic(topic: &str, group: &str, tier: &RetryTier) -> String {
    format!("{topic}.{group}.retry.{tier}")
}

/// What every retry topic of `topic` for `group` starts with:
/// `<topic>.<group>.retry.` (the tier's name follows).
pub fn retry_prefix(topic: &str, group: &str) -> String {
    format!("{topic}.{group}.retry.")
}

/// What every retry topic of `group` contains, whatever its topic:
/// `.<group>.retry.`.
pub(crate) fn retry_infix(group: &str) -> String {
    format!(".{group}.retry.")
}

/// The parked topic of `topic` for `group`: `<topic>.<group>.parked`.
pub fn parked_topic(topic: &str, group: &str) -> String {
    format!("{topic}.{group}.parked")
}

/// The replay epoch topic of `topic` for `group`: `<topic>.<group>.epoch`
/// (see [`epoch`](crate::epoch)).
pub fn epoch_topic(topic: &str, group: &str) -> String {
    format!("{topic}.{group}.epoch")
}

/// True for a name of the shape of [`epoch_topic`].
pub fn is_epoch_topic(name: &str) -> bool {
    name.ends_with(".epoch")
}

/// True for a name of one of backstop's own topics beside a consumed one
/// (a DLQ, a DLQ's state, a retry tier, parked keys), by its shape: such a
/// topic is not audited as a consumed topic (it has no DLQ of its own).
pub fn is_companion_topic(name: &str) -> bool {
    name.ends_with(".dlq")
        || name.ends_with(".state")
        || name.contains(".retry.")
        || name.ends_with(".parked")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_companion_is_recognised_and_a_consumed_topic_is_not() {
        let tier = RetryTier::new(std::time::Duration::from_secs(5));
        let dlq = dlq_topic("orders", "billing");
        for name in [
            dlq.clone(),
            dlq_state_topic(&dlq),
            retry_topic("orders", "billing", &tier),
            parked_topic("orders", "billing"),
        ] {
            assert!(is_companion_topic(&name), "{name}");
        }
        assert!(!is_companion_topic("orders"));
        assert!(
            retry_topic("orders", "billing", &tier).starts_with(&retry_prefix("orders", "billing"))
        );
        assert!(retry_topic("orders", "billing", &tier).contains(&retry_infix("billing")));
    }
}
