//! What the PostgreSQL store writes, how it cleans up, and how it fails
//! when the server cannot be reached.

mod common;

use std::time::{Duration, Instant};

use backstop::idempotency::{Claim, Key};
use backstop::{Store, StoreError};
use backstop_postgres::{PgConfig, PostgresError, PostgresStore};

fn pool() -> deadpool_postgres::Pool {
    PgConfig::new(common::url())
        .max_connections(4)
        .connect_timeout(Duration::from_secs(10))
        .pool()
        .unwrap()
}

#[tokio::test]
async fn rows_record_state_owner_and_counts() {
    let admin = common::admin().await;
    let schema = common::Schema::create(&admin).await;
    let table = schema.table("dedup");
    let store = PostgresStore::new(pool())
        .with_table(&table)
        .unwrap()
        .ttl(Duration::from_secs(60));
    assert!(store.migration_sql().contains("CREATE TABLE IF NOT EXISTS"));
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();

    let key = Key::new("order-1");
    let lease = Duration::from_secs(5);
    store.claim(&key, "w/1", lease, 2).await.unwrap();
    store.release(&key, "w/1", Some(1)).await.unwrap();
    assert_eq!(
        store.claim(&key, "w/2", lease, 2).await.unwrap(),
        Claim::Acquired { failed_runs: 1 }
    );
    let row = admin
        .query_one(
            &format!(
                "SELECT state, owner, failed_runs, replay,
                        lease_until > now() + interval '4 seconds' AS leased,
                        expires_at > now() + interval '64 seconds' AS kept
                 FROM {table} WHERE key = 'order-1'"
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, &str>("state"), "in_progress");
    assert_eq!(row.get::<_, Option<&str>>("owner"), Some("w/2"));
    assert_eq!(row.get::<_, i32>("failed_runs"), 1);
    assert_eq!(row.get::<_, i32>("replay"), 2);
    assert!(row.get::<_, bool>("leased"));
    assert!(
        row.get::<_, bool>("kept"),
        "in progress: kept for lease + ttl"
    );

    assert!(store.dead_letter(&key, "w/2").await.unwrap());
    let row = admin
        .query_one(
            &format!("SELECT state, owner, lease_until FROM {table} WHERE key = 'order-1'"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, &str>("state"), "dead_lettered");
    assert_eq!(row.get::<_, Option<&str>>("owner"), None);
    assert!(
        row.get::<_, Option<std::time::SystemTime>>("lease_until")
            .is_none()
    );
    schema.drop_all(&admin).await;
}

#[tokio::test]
async fn purge_deletes_only_expired_rows() {
    let admin = common::admin().await;
    let schema = common::Schema::create(&admin).await;
    let table = schema.table("dedup");
    let short = PostgresStore::new(pool())
        .with_table(&table)
        .unwrap()
        .ttl(Duration::from_millis(200));
    short.migrate().await.unwrap();
    let long = short.clone().ttl(Duration::from_secs(3600));
    let lease = Duration::from_secs(5);
    for i in 0..5 {
        let key = Key::new(&format!("old-{i}"));
        short.claim(&key, "w", lease, 0).await.unwrap();
        short.complete(&key, "w").await.unwrap();
    }
    long.claim(&Key::new("kept"), "w", lease, 0).await.unwrap();
    long.complete(&Key::new("kept"), "w").await.unwrap();
    long.claim(&Key::new("running"), "w", lease, 0)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;

    assert_eq!(short.purge_expired().await.unwrap(), 5);
    assert_eq!(
        common::count(&admin, &table).await,
        2,
        "the kept and the running key stay"
    );
    assert_eq!(short.purge_expired().await.unwrap(), 0);
    assert_eq!(
        long.claim(&Key::new("kept"), "x", lease, 0).await.unwrap(),
        Claim::Completed
    );
    schema.drop_all(&admin).await;
}

#[tokio::test]
async fn concurrent_migrations_of_one_table_succeed() {
    let admin = common::admin().await;
    let schema = common::Schema::create(&admin).await;
    let store = PostgresStore::new(pool())
        .with_table(&schema.table("dedup"))
        .unwrap();
    let runs = futures::future::join_all((0..4).map(|_| {
        let store = store.clone();
        async move { store.migrate().await }
    }))
    .await;
    assert!(runs.iter().all(Result::is_ok), "{runs:?}");
    schema.drop_all(&admin).await;
}

#[tokio::test]
async fn bad_table_names_are_refused() {
    let store = PostgresStore::new(pool());
    assert_eq!(store.table().to_string(), "\"backstop_idempotency\"");
    assert!(matches!(
        store.with_table("x; DROP TABLE y"),
        Err(PostgresError::InvalidTableName(_))
    ));
}

#[tokio::test]
async fn unreachable_server_fails_fast_as_a_backend_error() {
    let pool = PgConfig::new("postgres://backstop:backstop@127.0.0.1:1/backstop")
        .connect_timeout(Duration::from_millis(300))
        .wait_timeout(Duration::from_millis(500))
        .pool()
        .unwrap();
    let store = PostgresStore::new(pool).operation_timeout(Duration::from_secs(1));
    for _ in 0..3 {
        let started = Instant::now();
        let error = store
            .claim(&Key::new("k"), "o", Duration::from_secs(1), 0)
            .await
            .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "took {:?}",
            started.elapsed()
        );
        let StoreError::Backend(source) = error else {
            panic!("not a backend error: {error}")
        };
        assert!(source.downcast_ref::<PostgresError>().is_some(), "{source}");
    }
    assert!(store.purge_expired().await.is_err());
}
