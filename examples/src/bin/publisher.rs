//! A publisher that keeps taking orders while the broker is down, and
//! delivers every one of them once it is back.
//!
//! ```text
//! cargo run --release -p backstop-examples --bin publisher -- rabbitmq [ORDERS] [INTERVAL_MS]
//! cargo run --release -p backstop-examples --bin publisher -- kafka    [ORDERS] [INTERVAL_MS]
//! ```
//!
//! It publishes ORDERS orders (default 300), one every INTERVAL_MS
//! milliseconds (default 50), to the queue or topic `spool-example-orders`,
//! printing what became of each: confirmed by the broker, or spooled to
//! `./spool-example.spool`. Stop the broker while it runs and start it
//! again:
//!
//! ```text
//! rabbitmqctl stop_app; sleep 5; rabbitmqctl start_app
//! bash scripts/services/kafka.sh stop; sleep 5; bash scripts/services/kafka.sh start
//! ```
//!
//! Orders keep being accepted throughout; once the broker is back the relay
//! drains the spool, and the example waits until every order was delivered.
//! Kill it (even with `kill -9`) while orders are spooled and run it again:
//! the new run delivers what the last one left first.
//!
//! Broker addresses: `BACKSTOP_AMQP_URL`, `BACKSTOP_KAFKA_BROKERS`.

use std::time::Duration;

use backstop::publish::Publisher;
use backstop::{Message, RetryPolicy};
use backstop_spool::{Budget, ReliablePublisher, Sent, SpoolConfig};

const DESTINATION: &str = "spool-example-orders";

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let broker = args.next().unwrap_or_else(|| "rabbitmq".to_owned());
    let orders: usize = args.next().map_or(Ok(300), |a| a.parse())?;
    let interval = Duration::from_millis(args.next().map_or(Ok(50), |a| a.parse())?);
    let spool = SpoolConfig::new("spool-example.spool");

    match broker.as_str() {
        "rabbitmq" => {
            use backstop_rabbitmq::{ConnectOptions, RabbitMq, Topology, url_from_env};
            let options = ConnectOptions::default()
                .connect_timeout(Duration::from_secs(2))
                .confirm_timeout(Duration::from_secs(2));
            let rabbit = RabbitMq::connect_with(url_from_env(), options).await?;
            rabbit.declare(&Topology::quorum(DESTINATION)).await?;
            let budget = Budget::new(
                RetryPolicy::retries(2).backoff(Duration::from_millis(100), Duration::from_secs(1)),
                Duration::from_secs(3),
            );
            let publisher = ReliablePublisher::builder(rabbit.publisher(), spool)
                .budget(budget)
                .client_timeout(Duration::from_secs(2))
                .open()
                .await?;
            run(publisher, orders, interval).await
        }
        "kafka" => {
            use backstop_kafka::{Kafka, TopicSpec};
            let brokers = backstop_kafka::brokers_from_env();
            // librdkafka retries by itself within message.timeout.ms: give it
            // one attempt that outlasts it.
            let budget = Budget::new(RetryPolicy::none(), Duration::from_secs(3));
            let kafka = Kafka::new(brokers, "spool-example")
                .configure(|c| c.message_timeout = Duration::from_secs(2));
            kafka
                .ensure_topics([TopicSpec::new(DESTINATION).partitions(3)])
                .await?;
            let producer = kafka.publisher()?;
            let publisher = ReliablePublisher::builder(producer.clone(), spool)
                .budget(budget)
                .client_timeout(producer.message_timeout())
                .open()
                .await?;
            run(publisher, orders, interval).await?;
            producer.close().await?;
            Ok(())
        }
        other => Err(format!("unknown broker {other:?}: use rabbitmq or kafka").into()),
    }
}

async fn run<P: Publisher>(
    publisher: ReliablePublisher<P>,
    orders: usize,
    interval: Duration,
) -> Result<(), Error> {
    let left = publisher.spool().len();
    if left > 0 {
        println!(
            "{left} orders from an earlier run are in the spool; the relay delivers them first"
        );
    }
    let run_id = &backstop::message::new_message_id()[..8];
    let (mut confirmed, mut spooled) = (0, 0);
    for n in 1..=orders {
        let customer = n % 7;
        let order = Message::new(format!(r#"{{"order":{n},"customer":{customer}}}"#))
            .with_message_id(format!("order-{run_id}-{n}"))
            .with_key(format!("customer-{customer}"));
        match publisher.publish(DESTINATION, &order).await {
            Ok(Sent::Confirmed) => {
                confirmed += 1;
                println!("order {n}: confirmed by the broker");
            }
            Ok(Sent::Spooled) => {
                spooled += 1;
                println!(
                    "order {n}: spooled (broker {}; {} waiting)",
                    if publisher.broker_unreachable() {
                        "unreachable"
                    } else {
                        "busy"
                    },
                    publisher.spool().len()
                );
            }
            // Refused for good (e.g. the queue does not exist) or the spool is full.
            Err(error) => println!("order {n}: NOT accepted: {error}"),
        }
        tokio::time::sleep(interval).await;
    }
    println!("{orders} orders: {confirmed} confirmed, {spooled} spooled; waiting for the relay");
    loop {
        match publisher.flush(Duration::from_secs(10)).await {
            Ok(()) => break,
            Err(error) => println!(
                "{error}; still waiting (start the broker, or Ctrl-C: the spool keeps them)"
            ),
        }
    }
    println!("every order was delivered");
    publisher.close().await?;
    Ok(())
}
