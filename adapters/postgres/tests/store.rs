//! What the PostgreSQL store writes, how it cleans up, and how it fails
//! when the server cannot be reached.

mod common;

use std::time::{Duration, Instant};

use backstop::error::StoreError;
use backstop::idempotency::Store;
use backstop::idempotency::{Claim, Fence, Key};
use backstop_postgres::{PgConfig, PostgresError, PostgresStore};

fn pool() -> deadpool_postgres::Pool {
    PgConfig::new(common::url())
        .max_connections(4)
        .connect_timeout(Duration::from_secs(10))
        .pool()
        .unwrap()
}

/// The fence of an acquired claim.
fn fence(claim: Claim) -> Fence {
    claim
        .fence()
        .unwrap_or_else(|| panic!("not acquired: {claim:?}"))
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
    let first = fence(store.claim(&key, "w/1", lease, 2).await.unwrap());
    store.release(&key, first, Some(1)).await.unwrap();
    let claim = store.claim(&key, "w/2", lease, 2).await.unwrap();
    let Claim::Acquired {
        fence: second,
        failed_runs: 1,
        crashed: false,
    } = claim
    else {
        panic!("expected one failed run, got {claim:?}");
    };
    assert!(second > first);
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
    let owner = format!("w/2@{second}");
    assert_eq!(row.get::<_, Option<&str>>("owner"), Some(owner.as_str()));
    assert_eq!(row.get::<_, i32>("failed_runs"), 1);
    assert_eq!(row.get::<_, i32>("replay"), 2);
    assert!(row.get::<_, bool>("leased"));
    assert!(
        row.get::<_, bool>("kept"),
        "in progress: kept for lease + ttl"
    );

    assert!(store.mark_dead_lettered(&key, second).await.unwrap());
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
        let f = fence(short.claim(&key, "w", lease, 0).await.unwrap());
        short.complete(&key, f).await.unwrap();
    }
    let f = fence(long.claim(&Key::new("kept"), "w", lease, 0).await.unwrap());
    long.complete(&Key::new("kept"), f).await.unwrap();
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

/// Several tables of one schema migrated at the same moment for the first
/// time: they share the schema's version table, whose creation must not
/// race (concurrent `CREATE TABLE IF NOT EXISTS` of one table can fail on
/// the catalog's unique index).
#[tokio::test]
async fn concurrent_first_migrations_of_tables_sharing_a_schema_succeed() {
    let admin = common::admin().await;
    for _ in 0..5 {
        let schema = common::Schema::create(&admin).await;
        let runs = futures::future::join_all((0..6).map(|i| {
            let store = PostgresStore::new(pool())
                .with_table(&schema.table(&format!("dedup{i}")))
                .unwrap();
            async move { store.migrate().await }
        }))
        .await;
        assert!(runs.iter().all(Result::is_ok), "{runs:?}");
        schema.drop_all(&admin).await;
    }
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

/// The table exactly as the first release created it (no version row).
fn first_release_ddl(table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (
    key         text        PRIMARY KEY,
    state       text        NOT NULL CHECK (state IN ('in_progress', 'idle', 'completed', 'dead_lettered')),
    owner       text,
    lease_until timestamptz,
    failed_runs integer     NOT NULL DEFAULT 0 CHECK (failed_runs >= 0),
    replay      integer     NOT NULL DEFAULT 0 CHECK (replay >= 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);"
    )
}

/// A table made and filled by the first release is migrated in place: its
/// completed keys stay done, live leases of its workers are respected, the
/// failed-run counts are kept, and a takeover by one of its workers fences
/// a later worker out (a rolling upgrade).
#[tokio::test]
async fn a_table_of_the_first_release_migrates_in_place() {
    let admin = common::admin().await;
    let schema = common::Schema::create(&admin).await;
    let table = schema.table("dedup");
    admin
        .batch_execute(&first_release_ddl(&table))
        .await
        .unwrap();
    admin
        .batch_execute(&format!(
            "INSERT INTO {table} (key, state, owner, lease_until, failed_runs, replay, expires_at) VALUES
    ('done', 'completed', NULL, NULL, 0, 0, now() + interval '1 hour'),
    ('dead', 'dead_lettered', NULL, NULL, 3, 0, now() + interval '1 hour'),
    ('held', 'in_progress', 'old/1', now() + interval '1 minute', 1, 0, now() + interval '1 hour'),
    ('idle', 'idle', NULL, NULL, 2, 0, now() + interval '1 hour')"
        ))
        .await
        .unwrap();
    let unchosen = PostgresStore::new(pool()).with_table(&table).unwrap();
    assert_eq!(unchosen.current_schema_version().await.unwrap(), 0);
    assert!(
        matches!(
            unchosen.migrate().await,
            Err(backstop_postgres::PostgresError::Layout(
                backstop::idempotency::LayoutError::Unmarked { .. }
            ))
        ),
        "a table of global keys is refused until the user chooses"
    );
    let window = Duration::from_secs(3600);
    let store = PostgresStore::new(pool())
        .with_table(&table)
        .unwrap()
        .layout(backstop::idempotency::KeyLayout::Migrate { window });
    store.migrate().await.unwrap();
    assert!(matches!(
        store.key_layout().await.unwrap(),
        backstop::idempotency::Layout::Migrating { .. }
    ));
    assert_eq!(
        store.current_schema_version().await.unwrap(),
        store.schema_version()
    );
    assert_eq!(store.schema_version(), 3);
    store.migrate().await.unwrap();

    let lease = Duration::from_secs(5);
    assert_eq!(
        store
            .claim(&Key::new("done"), "new", lease, 0)
            .await
            .unwrap(),
        Claim::Completed,
        "no key executes again"
    );
    assert_eq!(
        store
            .claim(&Key::new("dead"), "new", lease, 0)
            .await
            .unwrap(),
        Claim::DeadLettered,
        "no letter is written twice"
    );
    assert!(
        matches!(
            store
                .claim(&Key::new("held"), "new", lease, 0)
                .await
                .unwrap(),
            Claim::Busy { .. }
        ),
        "a lease of a first-release worker is respected"
    );
    let idle = store
        .claim(&Key::new("idle"), "new", lease, 0)
        .await
        .unwrap();
    assert!(
        matches!(
            idle,
            Claim::Acquired {
                failed_runs: 2,
                crashed: false,
                ..
            }
        ),
        "{idle:?}"
    );
    // A first-release worker takes `idle` over (its claim statement writes
    // owner and lease only): the later worker's lease is fenced out.
    admin
        .batch_execute(&format!(
            "UPDATE {table} SET owner = 'old/2', lease_until = now() + interval '1 minute' WHERE key = 'idle'"
        ))
        .await
        .unwrap();
    assert!(
        !store
            .renew(&Key::new("idle"), fence(idle.clone()), lease)
            .await
            .unwrap()
    );
    assert!(
        !store
            .complete(&Key::new("idle"), fence(idle))
            .await
            .unwrap()
    );

    // A table a newer release migrated is refused.
    admin
        .batch_execute(&format!(
            "UPDATE {} SET version = 99",
            schema.table("backstop_schema_version")
        ))
        .await
        .unwrap();
    assert!(matches!(
        store.migrate().await,
        Err(PostgresError::SchemaTooNew {
            found: 99,
            known: 3,
            ..
        })
    ));
    schema.drop_all(&admin).await;
}

/// A table of the previous version (2: fencing tokens, keyspaced) with rows
/// is migrated in place to keep pending letters: its rows keep their state
/// and counts, and a letter recorded on a migrated row is reported by the
/// next claim of a new store instance.
#[tokio::test]
async fn a_table_of_the_previous_version_migrates_in_place_and_keeps_pending_letters() {
    let admin = common::admin().await;
    let schema = common::Schema::create(&admin).await;
    let table = schema.table("dedup");
    let versions = schema.table("backstop_schema_version");
    // The name as the version table records it.
    let quoted = format!("\"{}\".\"dedup\"", schema.name);
    admin
        .batch_execute(&format!(
            "{}
ALTER TABLE {table}
    ADD COLUMN IF NOT EXISTS fence   bigint  NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS crashed boolean NOT NULL DEFAULT false;
CREATE TABLE {versions} (object text PRIMARY KEY, version integer NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(), migrate_until timestamptz);
INSERT INTO {versions} (object, version) VALUES ('{quoted}', 2), ('{quoted} layout', 2);
INSERT INTO {table} (key, state, owner, fence, lease_until, failed_runs, replay, expires_at) VALUES
    ('done', 'completed', NULL, 7, NULL, 0, 0, now() + interval '1 hour'),
    ('idle', 'idle', NULL, 8, NULL, 2, 0, now() + interval '1 hour');",
            first_release_ddl(&table)
        ))
        .await
        .unwrap();
    let store = PostgresStore::new(pool()).with_table(&table).unwrap();
    assert_eq!(store.current_schema_version().await.unwrap(), 2);
    store.migrate().await.unwrap();
    assert_eq!(store.current_schema_version().await.unwrap(), 3);

    let lease = Duration::from_secs(5);
    assert_eq!(
        store
            .claim(&Key::new("done"), "new", lease, 0)
            .await
            .unwrap(),
        Claim::Completed
    );
    let idle = store
        .claim(&Key::new("idle"), "new", lease, 0)
        .await
        .unwrap();
    assert!(
        matches!(idle, Claim::Acquired { failed_runs: 2, crashed: false, fence } if fence > Fence(8)),
        "{idle:?}"
    );
    let letter = backstop::error::Failure {
        kind: backstop::ErrorKind::Timeout,
        message: "deadline of 2s passed\0after the write".into(),
        attempts: 3,
        first_failure: std::time::UNIX_EPOCH + Duration::from_millis(1_764_000_000_001),
        last_failure: std::time::UNIX_EPOCH + Duration::from_millis(1_764_000_000_999),
    };
    assert!(
        store
            .release_with_letter(&Key::new("idle"), fence(idle), &letter)
            .await
            .unwrap()
    );
    let again = PostgresStore::new(pool()).with_table(&table).unwrap();
    again.migrate().await.unwrap();
    let pending = again
        .claim(&Key::new("idle"), "next", lease, 0)
        .await
        .unwrap();
    let Claim::LetterPending {
        fence: held,
        failed_runs: 3,
        letter: kept,
    } = pending
    else {
        panic!("expected the pending letter, got {pending:?}");
    };
    assert_eq!(kept.kind, letter.kind);
    assert_eq!(
        kept.message, "deadline of 2s passed\u{FFFD}after the write",
        "a NUL, which PostgreSQL text cannot hold, is replaced"
    );
    assert_eq!(
        (kept.attempts, kept.first_failure, kept.last_failure),
        (3, letter.first_failure, letter.last_failure)
    );
    assert!(
        again
            .mark_dead_lettered(&Key::new("idle"), held)
            .await
            .unwrap()
    );
    let columns = common::count(
        &admin,
        &format!("{table} WHERE key = 'idle' AND state = 'dead_lettered' AND letter_kind IS NULL"),
    )
    .await;
    assert_eq!(columns, 1, "a written letter is forgotten");
    schema.drop_all(&admin).await;
}

/// The test server's password with every byte percent-encoded still logs in:
/// the URL is decoded, not sent as written.
#[tokio::test]
async fn a_percent_encoded_password_authenticates() {
    let base = common::url();
    let (scheme, rest) = base.split_once("://").expect("a postgres:// URL");
    let (userinfo, host) = rest.rsplit_once('@').expect("a URL with a user");
    let (user, password) = userinfo.split_once(':').expect("a URL with a password");
    let encoded: String = password.bytes().map(|b| format!("%{b:02X}")).collect();
    let url = format!("{scheme}://{user}:{encoded}@{host}");
    let pool = backstop_postgres::PgConfig::new(&url).pool().unwrap();
    let client = pool.get().await.expect("the encoded password logs in");
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    let wrong = backstop_postgres::PgConfig::new(format!("{scheme}://{user}:%25wrong%40@{host}"))
        .wait_timeout(Duration::from_secs(3))
        .pool()
        .unwrap();
    let error = wrong
        .get()
        .await
        .map(|_| ())
        .expect_err("refused")
        .to_string();
    assert!(!error.contains("wrong"), "{error}");
}
