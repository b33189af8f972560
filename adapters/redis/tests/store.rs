//! What the Redis store writes, and how it fails when Redis cannot be reached.

use std::time::{Duration, Instant};

use backstop::error::StoreError;
use backstop::idempotency::Store;
use backstop::idempotency::{Claim, Key};
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
    let claim = store.claim(&key, "w/1", lease, 0).await.unwrap();
    let Claim::Acquired {
        fence,
        failed_runs: 0,
        crashed: false,
    } = claim
    else {
        panic!("expected a fresh lease, got {claim:?}");
    };

    let mut raw = raw().await;
    let (state, owner, stored_fence): (String, String, String) = redis::cmd("HMGET")
        .arg(store.redis_key(&key))
        .arg("state")
        .arg("owner")
        .arg("fence")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(state, "in_progress");
    assert_eq!(owner, format!("w/1@{fence}"), "the owner carries its fence");
    assert_eq!(
        stored_fence,
        fence.to_string(),
        "exact decimal, never 1.7e+15"
    );
    assert!(
        fence.0 > 1_600_000_000_000_000,
        "microseconds of the server clock"
    );
    let pttl: i64 = redis::cmd("PTTL")
        .arg(store.redis_key(&key))
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(
        pttl > 60_000 && pttl <= 65_000,
        "in progress: lease + ttl, got {pttl} ms"
    );

    assert!(store.complete(&key, fence).await.unwrap());
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

/// A rolling upgrade from the layout without fences: a lease an earlier
/// worker holds (no `fence` field) is respected, and a takeover by an earlier
/// worker (it rewrites `owner`, knows no `fence`) fences the later one out.
#[tokio::test]
async fn leases_of_the_earlier_layout_are_respected_both_ways() {
    let prefix = format!(
        "backstop-test:mixed:{}:",
        backstop::message::new_message_id()
    );
    let store = RedisStore::connect_with(RedisConfig::new(url()).prefix(&prefix))
        .await
        .unwrap();
    let mut raw = raw().await;
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };
    let lease = Duration::from_secs(5);

    // An earlier worker holds `old` (its claim script's fields).
    let old = Key::new("old");
    let _: () = redis::cmd("HSET")
        .arg(store.redis_key(&old))
        .arg(&[
            "state",
            "in_progress",
            "owner",
            "w-old/1",
            "failed_runs",
            "0",
            "replay",
            "0",
        ])
        .arg("lease_until")
        .arg(now_ms() + 60_000)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(matches!(
        store.claim(&old, "new/1", lease, 0).await.unwrap(),
        Claim::Busy { .. }
    ));

    // The later worker holds `new`; an earlier worker takes it over after expiry.
    let new = Key::new("new");
    let fence = store
        .claim(&new, "new/2", lease, 0)
        .await
        .unwrap()
        .fence()
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(store.redis_key(&new))
        .arg(&["state", "in_progress", "owner", "w-old/2"])
        .arg("lease_until")
        .arg(now_ms() + 60_000)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(
        !store.renew(&new, fence, lease).await.unwrap(),
        "the later worker's renewal is refused after an earlier worker's takeover"
    );
    assert!(!store.complete(&new, fence).await.unwrap());
    for key in [&old, &new] {
        let _: i64 = redis::cmd("DEL")
            .arg(store.redis_key(key))
            .query_async(&mut raw)
            .await
            .unwrap();
    }
}

/// A password with `@`, `:`, `%` and `/`, percent-encoded in the URL as a
/// URL needs, authenticates (the client decodes it), and no error or
/// `Debug` output shows it.
#[tokio::test]
async fn a_percent_encoded_password_authenticates() {
    let user = format!(
        "backstop-test-{}",
        &backstop::message::new_message_id()[..10]
    );
    let password = "p@ss:w%rd/x";
    let mut admin = raw().await;
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user)
        .arg("on")
        .arg(format!(">{password}"))
        .arg("~*")
        .arg("+@all")
        .query_async(&mut admin)
        .await
        .unwrap();
    let base = url();
    let host = base
        .trim_start_matches("redis://")
        .rsplit('@')
        .next()
        .unwrap_or("127.0.0.1:6379")
        .to_owned();
    let good = format!("redis://{user}:p%40ss%3Aw%25rd%2Fx@{host}");
    let bad = format!("redis://{user}:p%40ss%3Awrong@{host}");
    let prefix = format!("backstop-test:auth:{user}:");
    let connected = RedisStore::connect_with(RedisConfig::new(&good).prefix(prefix))
        .await
        .map(|_| ());
    let refused =
        RedisStore::connect_with(RedisConfig::new(&bad).connect_timeout(Duration::from_secs(2)))
            .await
            .map(|_| ());
    let _: () = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(&user)
        .query_async(&mut admin)
        .await
        .unwrap();
    connected.unwrap();
    let error = refused
        .expect_err("a wrong password is refused")
        .to_string();
    assert!(!error.contains("wrong"), "{error}");
    assert!(!format!("{:?}", RedisConfig::new(&good)).contains("p%40ss"));
}

/// A pending letter lives in the key's hash; a letter left behind by a
/// worker of the earlier release (its settlement knows no `letter_*`
/// fields) is never reported for a later redrive of the key.
#[tokio::test]
async fn a_pending_letter_is_reported_only_for_its_redrive() {
    let prefix = format!(
        "backstop-test:letter:{}:",
        backstop::message::new_message_id()
    );
    let store = RedisStore::connect_with(RedisConfig::new(url()).prefix(&prefix))
        .await
        .unwrap();
    let key = Key::new("order-1");
    let lease = Duration::from_secs(5);
    let letter = backstop::error::Failure {
        kind: backstop::ErrorKind::Timeout,
        message: "no answer in 2s".into(),
        attempts: 2,
        first_failure: std::time::UNIX_EPOCH + Duration::from_millis(1_764_000_000_001),
        last_failure: std::time::UNIX_EPOCH + Duration::from_millis(1_764_000_000_002),
    };
    let first = store.claim(&key, "w/1", lease, 0).await.unwrap();
    let fence = first.fence().expect("acquired");
    assert!(
        store
            .release_with_letter(&key, fence, &letter)
            .await
            .unwrap()
    );
    let mut raw = raw().await;
    let (kind, replay): (String, String) = redis::cmd("HMGET")
        .arg(store.redis_key(&key))
        .arg("letter_kind")
        .arg("letter_replay")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!((kind.as_str(), replay.as_str()), ("timeout", "0"));
    // An earlier-release worker takes the key and dead-letters it: its
    // script sets the state and leaves the letter's fields.
    let _: i64 = redis::cmd("HSET")
        .arg(store.redis_key(&key))
        .arg("state")
        .arg("dead_lettered")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(
        store.claim(&key, "w/2", lease, 0).await.unwrap(),
        Claim::DeadLettered
    );
    let redrive = store.claim(&key, "w/2", lease, 1).await.unwrap();
    assert!(
        matches!(redrive, Claim::Acquired { failed_runs: 0, .. }),
        "the redrive runs, without the old letter: {redrive:?}"
    );
    let left: Option<String> = redis::cmd("HGET")
        .arg(store.redis_key(&key))
        .arg("letter_kind")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(left, None, "the stale letter is removed");
    let _: i64 = redis::cmd("DEL")
        .arg(store.redis_key(&key))
        .query_async(&mut raw)
        .await
        .unwrap();
}
