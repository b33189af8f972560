//! The transactional outbox across processes, through the real
//! `order-worker` binary: three workers on one RabbitMQ queue
//! (`--store postgres-inbox --outbox <events>`, 5 % injected transient
//! failures), each handled order writing its ledger row and two events
//! (`placed`, then `charged`, keyed by the order) in one transaction, and
//! each worker running an outbox relay of which one leads. The test
//! SIGKILLs the **leading relay's process** several times (found by the
//! PostgreSQL session holding the relay lock) and restarts it.
//!
//! Afterwards: every order executed exactly once; every event of every
//! order reached the events queue (its message id
//! `<keyspace>:<order>:out:<n>`, the same on every relay); for each order `placed` arrived before `charged`
//! (first copies); duplicates only from relays killed between a confirm and
//! the row's delete; the outbox table is empty and nothing was refused.
//!
//! `BACKSTOP_OUTBOX_ORDERS` (default 600) and `BACKSTOP_OUTBOX_KILLS`
//! (default 3) size the run.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use backstop::Message;
use backstop::publish::Publisher;
use backstop_rabbitmq::{RabbitMq, Topology, url_from_env};
use backstop_tests::fault::read_dead_letters;
use backstop_tests::fleet::{Fleet, assert_stopped};
use backstop_tests::ledger::Ledger;
use backstop_tests::worker::log_path;
use backstop_tests::{env_usize, unique};
use common::{cleanup, cleanup_topology};
use tokio_postgres::NoTls;

mod common;

/// The process (`order-worker:<pid>`) whose session holds the outbox
/// relay's lock, if one does.
async fn leader(client: &tokio_postgres::Client) -> Option<u32> {
    let row = client
        .query_opt(
            "WITH k AS (SELECT hashtextextended('backstop-outbox-relay:' || 'backstop_outbox'::regclass::oid, 0) AS key)
             SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid, k
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
               AND l.classid::bigint = ((k.key >> 32) & 4294967295)
               AND l.objid::bigint = (k.key & 4294967295)",
            &[],
        )
        .await
        .ok()??;
    let name: String = row.get(0);
    name.strip_prefix("order-worker:")?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_share_one_outbox_and_kills_of_the_relay_lose_no_event() {
    let n = env_usize("BACKSTOP_OUTBOX_ORDERS", 600).max(60);
    let kills = env_usize("BACKSTOP_OUTBOX_KILLS", 3);
    let started = Instant::now();
    backstop_tests::worker::binary();
    let run = unique("outbox_rmq");
    let queue = run.replace('_', "-");
    let events = format!("{queue}-events");
    let ledger = Ledger::create(&run).await.expect("ledger schema");
    let (pg, connection) = tokio_postgres::connect(ledger.url(), NoTls)
        .await
        .expect("connect to PostgreSQL");
    tokio::spawn(connection);
    let args: Vec<String> = [
        "--broker",
        "rabbitmq",
        "--url",
        &url_from_env(),
        "--source",
        &queue,
        "--store",
        "postgres-inbox",
        "--ledger",
        ledger.url(),
        "--outbox",
        &events,
        "--fail-rate",
        "0.05",
        "--concurrency",
        "16",
        "--max-attempts",
        "5",
        "--lease-ms",
        "1500",
        "--work-ms",
        "20",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let members = (0..3)
        .map(|i| (args.clone(), log_path(&format!("{run}-{i}"))))
        .collect();
    let mut fleet = Fleet::spawn(members).expect("start the workers");
    let rabbit = RabbitMq::connect(url_from_env()).await.expect("connect");
    let declared = backstop_tests::poll(
        Duration::from_secs(60),
        Duration::from_millis(100),
        || async { rabbit.message_count(&events).await.ok() },
    )
    .await;
    assert!(
        declared.is_some(),
        "no worker declared {events}: {}",
        fleet.log_tail(20)
    );

    let orders: Vec<String> = (0..n).map(|i| format!("{run}-{i}")).collect();
    let publisher = rabbit.publisher();
    for id in &orders {
        let body = format!(r#"{{"order_id":"{id}","amount":7}}"#);
        publisher
            .publish(&queue, &Message::new(body).with_message_id(id.as_str()))
            .await
            .expect("publish confirmed");
    }

    // Kill the leading relay's process at even steps of progress.
    let mut killed = Vec::new();
    let mut unexpected = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut done = false;
    while Instant::now() < deadline {
        fleet.restart_exited(&mut unexpected);
        let rows = ledger.rows().await.unwrap_or(0);
        let due = killed.len() < kills && rows >= (n * (killed.len() + 1) / (kills + 1)) as i64;
        if due
            && let Some(pid) = leader(&pg).await
            && let Some(i) = fleet.kill9_pid(pid)
        {
            eprintln!("killed the leading relay (worker {i}, pid {pid}) at {rows} orders");
            killed.push(pid);
        }
        let pending = ledger.count("backstop_outbox").await.unwrap_or(1);
        if killed.len() >= kills
            && rows >= n as i64
            && pending == 0
            && rabbit.message_count(&queue).await.unwrap_or(1) == 0
        {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let statuses = fleet.terminate(Duration::from_secs(30)).await;
    let tail = fleet.log_tail(30);
    let refused = ledger
        .count("backstop_outbox WHERE refused_at IS NOT NULL")
        .await
        .expect("read the outbox");
    let relayed = read_dead_letters(
        rabbit.source(&events, 64).await.expect("events source"),
        2 * n,
        Duration::from_secs(2),
        Duration::from_secs(60),
    )
    .await;
    let executions = ledger.executions().await.expect("read the ledger");
    cleanup(&rabbit, &queue).await;
    cleanup_topology(&rabbit, &Topology::quorum(events.as_str())).await;
    let _ = ledger.drop_schema().await;
    rabbit.close().await;

    assert!(done, "not done in time ({} kills): {tail}", killed.len());
    assert!(
        unexpected.is_empty(),
        "workers died unexpectedly: {unexpected:#?}"
    );
    assert_eq!(killed.len(), kills, "each kill found the leading relay");
    for id in &orders {
        assert_eq!(
            executions.get(id).copied(),
            Some(1),
            "{id} executes exactly once"
        );
    }
    assert_eq!(executions.len(), n);
    assert_eq!(refused, 0, "no event was refused");

    // Every event, by its stable id; placed before charged.
    // `<keyspace>:<order>:out:<n>`: one keyspace (the workers' consumer).
    let keyspaces: HashSet<&str> = relayed
        .iter()
        .filter_map(|e| e.message_id.split_once(':').map(|(k, _)| k))
        .collect();
    assert_eq!(
        keyspaces.len(),
        1,
        "one keyspace in every id: {keyspaces:?}"
    );
    let mut first: HashMap<&str, usize> = HashMap::new();
    for (at, event) in relayed.iter().enumerate() {
        let id = event.message_id.split_once(':').map_or("", |(_, id)| id);
        first.entry(id).or_insert(at);
    }
    let expected: HashSet<String> = orders
        .iter()
        .flat_map(|id| [format!("{id}:out:0"), format!("{id}:out:1")])
        .collect();
    let seen: HashSet<String> = first.keys().map(|id| (*id).to_owned()).collect();
    let missing: Vec<&String> = expected.difference(&seen).take(10).collect();
    assert!(missing.is_empty(), "events lost (first 10): {missing:?}");
    let foreign: Vec<&String> = seen.difference(&expected).take(10).collect();
    assert!(foreign.is_empty(), "unexpected events: {foreign:?}");
    for id in &orders {
        let placed = first[format!("{id}:out:0").as_str()];
        let charged = first[format!("{id}:out:1").as_str()];
        assert!(placed < charged, "{id}: charged arrived before placed");
    }
    let duplicates = relayed.len() - expected.len();
    eprintln!(
        "outbox suite: {n} orders, {} events relayed ({duplicates} duplicates), {} kills of the leader, {:?}",
        relayed.len(),
        killed.len(),
        started.elapsed()
    );
    // A killed leader resends at most what it had confirmed and not yet
    // deleted: one round (up to 256 rows) per kill.
    assert!(
        duplicates <= 256 * kills,
        "{duplicates} duplicates for {kills} kills"
    );
    assert_stopped(statuses);
    fleet.remove_logs();
}
