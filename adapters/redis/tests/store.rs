//! What the Redis store writes, and how it fails when Redis cannot be reached.

use std::time::{Duration, Instant};

use backstop::idempotency::{Claim, Key};
use backstop::{Store, StoreError};
use backstop_redis::{RedisConfig, RedisStore, RedisStoreError};

fn url() -> String {
    std::env::var("BACKSTOP_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

async fn raw() -> redis::aio::MultiplexedConnection {
    redis::Client::open(url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test]
async fn keys_live_under_the_prefix_with_the_ttl() {
    let prefix = format!(
        "backstop-test:layout:{}:",
        backstop::message::new_message_id()
    );
    let store = RedisStore::connect_with(
        RedisConfig::new(url())
            .prefix(&prefix)
            .ttl(Duration::from_secs(60)),
    )
    .await
    .unwrap();
    let key = Key::new("order-1");
    assert_eq!(store.redis_key(&key), format!("{prefix}order-1"));
    let lease = Duration::from_secs(5);
    assert_eq!(
        store.claim(&key, "w/1", lease, 0).await.unwrap(),
        Claim::Acquired { failed_runs: 0 }
    );

    let mut raw = raw().await;
    let (state, owner): (String, String) = redis::cmd("HMGET")
        .arg(store.redis_key(&key))
        .arg("state")
        .arg("owner")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!((state.as_str(), owner.as_str()), ("in_progress", "w/1"));
    let pttl: i64 = redis::cmd("PTTL")
        .arg(store.redis_key(&key))
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(
        pttl > 60_000 && pttl <= 65_000,
        "in progress: lease + ttl, got {pttl} ms"
    );

    assert!(store.complete(&key, "w/1").await.unwrap());
    let (state, owner): (String, Option<String>) = redis::cmd("HMGET")
        .arg(store.redis_key(&key))
        .arg("state")
        .arg("owner")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(state, "completed");
    assert_eq!(owner, None, "a finished key has no owner");
    let pttl: i64 = redis::cmd("PTTL")
        .arg(store.redis_key(&key))
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(
        pttl > 55_000 && pttl <= 60_000,
        "finished: ttl, got {pttl} ms"
    );
    let _: i64 = redis::cmd("DEL")
        .arg(store.redis_key(&key))
        .query_async(&mut raw)
        .await
        .unwrap();
}

#[tokio::test]
async fn unreachable_server_fails_fast_as_a_backend_error() {
    // Nothing listens on port 1: every operation must fail, quickly, as Backend.
    let config = RedisConfig::new("redis://127.0.0.1:1")
        .operation_timeout(Duration::from_millis(500))
        .connect_timeout(Duration::from_millis(200));
    let store = RedisStore::connect_lazy(config.clone()).unwrap();
    let key = Key::new("k");
    for _ in 0..3 {
        let started = Instant::now();
        let error = store
            .claim(&key, "o", Duration::from_secs(1), 0)
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
        assert!(
            source.downcast_ref::<RedisStoreError>().is_some(),
            "{source}"
        );
    }
    let started = Instant::now();
    assert!(matches!(
        RedisStore::connect_with(config).await,
        Err(RedisStoreError::Connect(_) | RedisStoreError::Timeout { .. })
    ));
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_bad_url_is_refused_up_front() {
    assert!(matches!(
        RedisStore::connect_lazy(RedisConfig::new("http://nope")),
        Err(RedisStoreError::InvalidUrl(_))
    ));
}
