use super::*;

#[test]
fn debug_hides_the_password() {
    let connector = Connector::new(
        "amqp://u:p@s3cret@127.0.0.1:5672/%2f".into(),
        ConnectOptions::default(),
    )
    .expect("a valid URL");
    let shown = format!("{connector:?}");
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(shown.contains("amqp://u:***@127.0.0.1"), "{shown}");
}

#[test]
fn a_node_list_splits_only_where_a_url_starts() {
    assert_eq!(
        node_urls("amqp://a:5672/%2f,amqps://b:5671/%2f?cacertfile=/x,y.pem , amqp://c/v"),
        [
            "amqp://a:5672/%2f",
            "amqps://b:5671/%2f?cacertfile=/x,y.pem",
            "amqp://c/v"
        ]
    );
    assert_eq!(node_urls("amqp://a/%2f"), ["amqp://a/%2f"]);
    assert!(node_urls(" , ").is_empty());
    let error = Connector::new(String::new(), ConnectOptions::default())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(error.contains("no AMQP URL"), "{error}");
}

#[test]
fn debug_lists_every_node_without_passwords() {
    let connector = Connector::new(
        "amqp://u:s3cret@127.0.0.1:5681/%2f,amqp://u:s3cret@127.0.0.1:5682/%2f".into(),
        ConnectOptions::default(),
    )
    .expect("valid URLs");
    let shown = format!("{connector:?}");
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(shown.contains("5681") && shown.contains("5682"), "{shown}");
}

#[tokio::test]
async fn a_malformed_url_is_refused_without_its_password() {
    for url in ["amqp:u:s3cret@h", "amqp://u:s3cret@h:notaport/"] {
        let chain = |e: ConnectError| {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text.push_str(&format!(" / {s}"));
                source = s.source();
            }
            text
        };
        // Refused when the connector is made (the TLS parameters are
        // read then) or at the first connect (the URL's syntax).
        let error = match Connector::new(url.into(), ConnectOptions::default()) {
            Err(e) => chain(e),
            Ok(connector) => connector
                .connect("test")
                .await
                .err()
                .map(chain)
                .unwrap_or_default(),
        };
        assert!(error.contains("not a usable AMQP URL"), "{error}");
        assert!(!error.contains("s3cret"), "{error}");
    }
}
