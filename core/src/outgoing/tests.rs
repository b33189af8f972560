//! Publishing from a handler: the derived ids, and the error without a back-end.

use std::sync::Arc;

use super::*;

#[tokio::test]
async fn ids_are_derived_from_the_cause_and_kept_when_given() {
    let recorder = Arc::new(Collected::default());
    let mut inbound = Message::new("x").with_message_id("in-7");
    inbound.meta.source = "orders".into();
    let inbound = Arc::new(inbound);
    let outbound = Outbound::new(recorder.clone(), &inbound);
    outbound
        .publish("a", Message::new("1"), false)
        .await
        .expect("published");
    outbound
        .publish("a", Message::new("2").with_message_id("mine"), true)
        .await
        .expect("published");
    outbound
        .publish("b", Message::new("3"), false)
        .await
        .expect("published");
    assert!(matches!(
        outbound.publish("", Message::new("4"), false).await,
        Err(PublishFailed::NoDestination)
    ));
    {
        let seen = recorder.take();
        let ids: Vec<&str> = seen
            .iter()
            .map(|(_, m)| m.meta.message_id.as_str())
            .collect();
        assert_eq!(ids, ["orders:in-7:out:0", "mine", "orders:in-7:out:2"]);
        assert!(
            seen.iter()
                .all(|(_, m)| m.header(CAUSED_BY) == Some("in-7"))
        );
    }
    // A second attempt names its publishes the same way.
    let again = Outbound::new(recorder.clone(), &inbound);
    again
        .publish("a", Message::new("1"), false)
        .await
        .expect("published");
    assert_eq!(recorder.take()[0].1.meta.message_id, "orders:in-7:out:0");
    // Another consumer of the same message publishes other ids.
    let mut elsewhere = (*inbound).clone();
    elsewhere.meta.source = "audit".into();
    let other = Outbound::for_service(
        recorder.clone(),
        &Arc::new(elsewhere),
        Some("billing".into()),
    );
    other
        .publish("a", Message::new("1"), false)
        .await
        .expect("published");
    assert_eq!(
        recorder.take()[0].1.meta.message_id,
        "billing@audit:in-7:out:0"
    );
}

#[test]
fn without_a_back_end_the_error_is_permanent_and_says_what_to_add() {
    let error = PublishFailed::NoPublisher;
    assert!(error.is_permanent());
    assert!(error.to_string().contains("PublishLayer"));
    let transient = PublishFailed::Publish {
        destination: "x".into(),
        source: PublishError::Nacked,
    };
    assert!(!transient.is_permanent());
}
