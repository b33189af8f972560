use super::*;

const S: Duration = Duration::from_secs(1);

#[test]
fn tier_names_are_human() {
    assert_eq!(tier_name(5 * S), "5s");
    assert_eq!(tier_name(30 * S), "30s");
    assert_eq!(tier_name(300 * S), "5m");
    assert_eq!(tier_name(90 * S), "90s");
    assert_eq!(tier_name(7200 * S), "2h");
    assert_eq!(tier_name(Duration::from_millis(250)), "250ms");
    assert_eq!(RetryTier::new(5 * S).queue_for("orders"), "orders.retry.5s");
}

#[test]
fn the_smallest_sufficient_tier_is_chosen_else_the_largest() {
    let t = Topology::quorum("q").retry_tiers([300 * S, 5 * S, 30 * S, 5 * S]);
    let names: Vec<_> = t.tiers().iter().map(RetryTier::name).collect();
    assert_eq!(names, ["5s", "30s", "5m"]);
    assert_eq!(
        t.tier_for(Duration::from_millis(1)).map(RetryTier::name),
        Some("5s")
    );
    assert_eq!(t.tier_for(5 * S).map(RetryTier::name), Some("5s"));
    assert_eq!(t.tier_for(6 * S).map(RetryTier::name), Some("30s"));
    assert_eq!(t.tier_for(3600 * S).map(RetryTier::name), Some("5m"));
    assert_eq!(Topology::quorum("q").tier_for(S), None);
}

#[test]
fn quorum_arguments_are_the_safe_shape() {
    let t = Topology::quorum("orders").max_attempts(5);
    let args = t.queue_arguments();
    let get = |k: &str| args.inner().get(k).cloned();
    assert_eq!(get("x-queue-type"), Some(text("quorum")));
    assert_eq!(get("x-delivery-limit"), Some(AMQPValue::LongLongInt(50)));
    assert_eq!(get("x-dead-letter-exchange"), Some(text("orders.dlx")));
    assert_eq!(get("x-dead-letter-strategy"), Some(text("at-least-once")));
    assert_eq!(get("x-overflow"), Some(text("reject-publish")));
    assert!(!t.dlq_arguments().contains_key("x-delivery-limit"));
    assert_eq!(
        t.clone()
            .rabbitmq_4()
            .dlq_arguments()
            .inner()
            .get("x-delivery-limit"),
        Some(&AMQPValue::LongLongInt(-1))
    );
    let tier = RetryTier::new(30 * S);
    let targs = t.tier_arguments(&tier);
    assert_eq!(
        targs.inner().get("x-message-ttl"),
        Some(&AMQPValue::LongLongInt(30_000))
    );
    assert_eq!(targs.inner().get("x-dead-letter-exchange"), Some(&text("")));
    assert_eq!(
        targs.inner().get("x-dead-letter-routing-key"),
        Some(&text("orders"))
    );
}

#[test]
fn validation_catches_misconfiguration() {
    assert!(matches!(
        Topology::classic("c").retry_tiers([S]).validate(),
        Err(TopologyError::TiersNeedQuorum { .. })
    ));
    assert!(matches!(
        Topology::quorum("q")
            .max_attempts(10)
            .delivery_limit(10)
            .validate(),
        Err(TopologyError::DeliveryLimitTooLow { .. })
    ));
    assert!(matches!(
        Topology::quorum("q")
            .retry_tiers([Duration::ZERO])
            .validate(),
        Err(TopologyError::InvalidTier { .. })
    ));
    assert!(matches!(
        Topology::quorum("q".repeat(253)).validate(),
        Err(TopologyError::NameTooLong { .. })
    ));
    assert!(
        Topology::quorum("q")
            .retry_tiers([5 * S])
            .validate()
            .is_ok()
    );
    assert!(Topology::classic("c").validate().is_ok());
    assert_eq!(
        Topology::quorum("q")
            .max_attempts(20)
            .effective_delivery_limit(),
        80
    );
}
