//! The idempotency stores over TLS (scripts/services/tls.sh: PostgreSQL with
//! ssl on 5433, Redis with a TLS port on 6380): the full stack consumes and
//! dead-letters with the store behind TLS, and each misconfiguration fails
//! fast with an error that says what is wrong and names no secret.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use backstop::idempotency::Store;
use backstop::memory::MemoryBroker;
use backstop::tls::TlsOptions;
use backstop::{
    CancellationToken, Context, HandlerError, KeySource, Message, Runner, StackBuilder, handler_fn,
};
use backstop_postgres::{PgConfig, PostgresStore};
use backstop_redis::{RedisConfig, RedisStore};

fn certs() -> String {
    std::env::var("BACKSTOP_TLS_DIR").unwrap_or_else(|_| "/var/cache/backstop/tls".to_owned())
}

fn unique(prefix: &str) -> String {
    format!("bt-{prefix}-{}", &backstop::message::new_message_id()[..12])
}

fn pg_url(params: &str) -> String {
    format!("postgres://backstop:backstop@localhost:5433/backstop?{params}")
}

/// A store over `url` on a table of its own (the shared database's default
/// table may hold keys of other runs and releases), migrated.
async fn pg_store(url: String) -> Result<PostgresStore, backstop_postgres::PostgresError> {
    let table = format!("tls_{}", &backstop::message::new_message_id()[..12]);
    let store = PostgresStore::new(PgConfig::new(url).pool()?).with_table(&table)?;
    store.migrate().await?;
    Ok(store)
}

/// Drops the store's table.
async fn drop_table(store: &PostgresStore) {
    if let Ok(client) = store.pool().get().await {
        let _ = client
            .batch_execute(&format!("DROP TABLE IF EXISTS {}", store.table()))
            .await;
    }
}

fn redis_tls(ca: &str) -> TlsOptions {
    TlsOptions {
        ca_file: Some(format!("{}/{ca}", certs()).into()),
        ..TlsOptions::default()
    }
}

/// A client certificate and key at fixed paths in a fresh folder; `install`
/// puts one of the test rig's pairs there (`client`, `expired-client`, …).
struct ClientFiles {
    dir: std::path::PathBuf,
}

impl ClientFiles {
    fn new(prefix: &str) -> Self {
        let dir = std::env::temp_dir().join(unique(prefix));
        std::fs::create_dir_all(&dir).expect("a temporary folder");
        ClientFiles { dir }
    }

    fn install(&self, name: &str) {
        for ext in ["pem", "key"] {
            std::fs::copy(
                format!("{}/{name}.{ext}", certs()),
                self.dir.join(format!("client.{ext}")),
            )
            .expect("copy a test certificate");
        }
    }

    fn cert(&self) -> std::path::PathBuf {
        self.dir.join("client.pem")
    }

    fn key(&self) -> std::path::PathBuf {
        self.dir.join("client.key")
    }
}

impl Drop for ClientFiles {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

/// 20 messages through the full stack with `store`: 10 succeed, 10 fail
/// permanently and are dead-lettered; a redelivered copy of a handled one
/// is then recognised as a duplicate by the store.
async fn full_stack(store: Arc<dyn Store>) {
    let broker = MemoryBroker::new();
    let queue = unique("tls-store");
    let ran = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&ran);
    let handler = handler_fn(move |v: serde_json::Value, _ctx: Context| {
        let ran = Arc::clone(&counter);
        async move {
            ran.fetch_add(1, Ordering::SeqCst);
            match v["n"].as_u64() {
                Some(n) if n >= 10 => Err(HandlerError::permanent("invalid order")),
                _ => Ok(()),
            }
        }
    });
    let stack = StackBuilder::<serde_json::Value>::new(Arc::new(broker.dead_letter_sink()))
        .idempotency(store, KeySource::MessageId)
        .build(handler);
    for n in 0..20 {
        let m = Message::new(format!("{{\"n\":{n}}}")).with_message_id(format!("{queue}-{n}"));
        broker.publish_now(&queue, m).expect("publish");
    }
    let stop = CancellationToken::new();
    let runner = tokio::spawn(
        Runner::new(broker.consume(&queue, 8), stack)
            .concurrency(8)
            .with_shutdown(stop.clone())
            .run(),
    );
    let dlq = format!("{queue}.dlq");
    let until = Instant::now() + Duration::from_secs(30);
    while broker.stats(&queue).acked < 20 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        broker.stats(&dlq).ready,
        10,
        "the permanent failures reach the DLQ"
    );
    // A redelivered copy of a handled message does not run again.
    let again = Message::new("{\"n\":0}").with_message_id(format!("{queue}-0"));
    broker.publish_now(&queue, again).expect("publish");
    while broker.stats(&queue).acked < 21 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    let summary = runner.await.expect("runner").expect("summary");
    assert_eq!(ran.load(Ordering::SeqCst), 20, "{summary}");
    assert_eq!(summary.duplicates, 1, "{summary}");
}

/// Expects `connect` to fail within 5 s; returns the message.
async fn refused<T, E: std::fmt::Display>(connect: impl Future<Output = Result<T, E>>) -> String {
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(30), connect)
        .await
        .expect("never hangs");
    let Err(error) = result else {
        panic!("the connection must fail")
    };
    let text = error.to_string();
    assert!(started.elapsed() < Duration::from_secs(5), "slow: {text}");
    assert!(
        !text.contains("backstop:backstop"),
        "a secret leaked: {text}"
    );
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_verify_full_runs_the_full_stack() {
    let url = pg_url(&format!(
        "sslmode=verify-full&sslrootcert={}/ca.pem",
        certs()
    ));
    let store = pg_store(url)
        .await
        .expect("PostgreSQL over TLS (scripts/services/tls.sh)");
    full_stack(Arc::new(store.clone())).await;
    drop_table(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_require_and_verify_ca_connect_with_a_client_certificate() {
    let dir = certs();
    for params in [
        "sslmode=require".to_owned(),
        format!(
            "sslmode=verify-ca&sslrootcert={dir}/ca.pem&sslcert={dir}/client.pem&sslkey={dir}/client.key"
        ),
    ] {
        let store = pg_store(pg_url(&params))
            .await
            .unwrap_or_else(|e| panic!("{params}: {e}"));
        drop_table(&store).await;
    }
}

#[tokio::test]
async fn postgres_with_a_wrong_ca_fails_fast() {
    let url = pg_url(&format!(
        "sslmode=verify-full&sslrootcert={}/other-ca.pem",
        certs()
    ));
    let text = refused(PostgresStore::connect(&PgConfig::new(url))).await;
    assert!(
        text.contains("UnknownIssuer") || text.contains("trusted CA"),
        "{text}"
    );
}

#[tokio::test]
async fn postgres_plain_text_on_a_tls_only_server_is_refused() {
    let text = refused(PostgresStore::connect(&PgConfig::new(pg_url(
        "sslmode=disable",
    ))))
    .await;
    assert!(
        text.contains("no encryption") || text.contains("SSL"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_runs_the_full_stack_with_mutual_tls() {
    let config = RedisConfig::new("rediss://localhost:6380")
        .prefix(format!("{}:", unique("tls")))
        .tls(redis_identity(&certs(), "client"));
    let store = RedisStore::connect_with(config)
        .await
        .expect("Redis over TLS (scripts/services/tls.sh)");
    full_stack(Arc::new(store)).await;
}

#[tokio::test]
async fn redis_with_a_wrong_ca_fails_fast() {
    let config = RedisConfig::new("rediss://localhost:6380").tls(redis_tls("other-ca.pem"));
    let text = refused(RedisStore::connect_with(config)).await;
    assert!(
        text.contains("UnknownIssuer") || text.contains("trusted CA"),
        "{text}"
    );
}

#[tokio::test]
async fn redis_with_an_expired_client_certificate_fails_fast() {
    let config =
        RedisConfig::new("rediss://localhost:6380").tls(redis_identity(&certs(), "expired-client"));
    let text = refused(RedisStore::connect_with(config)).await;
    assert!(text.contains("expired"), "{text}");
}

#[tokio::test]
async fn redis_plain_text_on_the_tls_port_fails_fast() {
    let text = refused(RedisStore::connect("redis://localhost:6380")).await;
    assert!(text.contains("use rediss://"), "{text}");
}

#[tokio::test]
async fn postgres_reads_a_rotated_client_certificate_for_each_new_connection() {
    let files = ClientFiles::new("pg-rotate");
    let install = |name: &str| files.install(name);
    install("client");
    let url = pg_url(&format!(
        "sslmode=verify-full&sslrootcert={}/ca.pem&sslcert={}&sslkey={}",
        certs(),
        files.cert().display(),
        files.key().display()
    ));
    let pool = PgConfig::new(url).max_connections(1).pool().expect("pool");
    let first = pool.get().await.expect("a valid certificate");
    // Close it, so the next checkout opens a new connection.
    drop(deadpool_postgres::Object::take(first));
    install("expired-client");
    let error = pool
        .get()
        .await
        .expect_err("the expired certificate on disk is used");
    let text = backstop_postgres::PostgresError::from(error).to_string();
    assert!(text.contains("expired"), "{text}");
    install("client");
    let renewed = pool.get().await.expect("the renewed certificate");
    drop(renewed);
}

/// The Redis instance that requires a client certificate (scripts/services/tls.sh).
const REDIS_MTLS: &str = "rediss://localhost:6381";

/// TLS files for Redis: the CA file and the client certificate `client`
/// (`client`, `rotated-client`, `untrusted-client`, …) from the test rig.
fn redis_identity(dir: &str, client: &str) -> TlsOptions {
    TlsOptions {
        cert_file: Some(format!("{dir}/{client}.pem").into()),
        key_file: Some(format!("{dir}/{client}.key").into()),
        ..redis_tls("ca.pem")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_requiring_client_certificates_runs_the_full_stack() {
    let config = RedisConfig::new(REDIS_MTLS)
        .prefix(format!("{}:", unique("mtls")))
        .tls(redis_identity(&certs(), "client"));
    let store = RedisStore::connect_with(config)
        .await
        .expect("Redis with mutual TLS (scripts/services/tls.sh)");
    full_stack(Arc::new(store)).await;
}

#[tokio::test]
async fn redis_refuses_a_client_without_a_trusted_certificate_fast() {
    // No client certificate, then one signed by no CA the server trusts.
    for tls in [
        redis_tls("ca.pem"),
        redis_identity(&certs(), "untrusted-client"),
    ] {
        let config = RedisConfig::new(REDIS_MTLS).tls(tls);
        let text = refused(RedisStore::connect_with(config)).await;
        assert!(text.contains("client certificate"), "{text}");
    }
}

/// Closes every connection of the mutual-TLS Redis that selected `db` (the
/// store under test is the only client of that database).
fn kill_redis_clients_of_db(db: u32) -> usize {
    let dir = certs();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new("redis-cli")
            .args(["--tls", "--cacert", &format!("{dir}/ca.pem")])
            .args(["--cert", &format!("{dir}/client.pem")])
            .args(["--key", &format!("{dir}/client.key"), "-p", "6381"])
            .args(args)
            .output()
            .expect("redis-cli (installed with redis-server)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let ids: Vec<String> = cli(&["CLIENT", "LIST"])
        .lines()
        .filter(|line| line.split(' ').any(|f| f == format!("db={db}")))
        .filter_map(|line| line.split(' ').find_map(|f| f.strip_prefix("id=")))
        .map(str::to_owned)
        .collect();
    for id in &ids {
        cli(&["CLIENT", "KILL", "ID", id]);
    }
    ids.len()
}

/// Pings `store` until the answer is what `wanted` accepts (within 15 s);
/// returns the last error text (empty after a success).
async fn ping_until(store: &RedisStore, wanted: impl Fn(&Result<(), String>) -> bool) -> String {
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let result = store.ping().await.map_err(|e| e.to_string());
        if wanted(&result) {
            return result.err().unwrap_or_default();
        }
        assert!(Instant::now() < until, "gave up waiting: last {result:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn redis_reads_rotated_certificate_files_when_it_reconnects() {
    let files = ClientFiles::new("redis-rotate");
    let install = |name: &str| files.install(name);
    // Database 9: only this test's store selects it, so its connections
    // can be told apart from every other client of the server.
    let config = RedisConfig::new(format!("{REDIS_MTLS}/9")).tls(TlsOptions {
        cert_file: Some(files.cert()),
        key_file: Some(files.key()),
        ..redis_tls("ca.pem")
    });
    install("untrusted-client");
    let store = RedisStore::connect_lazy(config).expect("the files are readable");
    let refused = ping_until(&store, Result::is_err).await;
    assert!(refused.contains("client certificate"), "{refused}");

    // The renewed certificate is on disk: the next connection presents it.
    install("client");
    ping_until(&store, Result::is_ok).await;

    // A working connection, its certificate replaced by one the server
    // refuses, then the connection lost: the reconnect reads the new files.
    install("untrusted-client");
    assert!(kill_redis_clients_of_db(9) >= 1, "the store's connection");
    let refused = ping_until(&store, |r| {
        r.as_ref()
            .is_err_and(|text| text.contains("client certificate"))
    })
    .await;
    assert!(!refused.contains("BEGIN"), "no file contents: {refused}");

    install("rotated-client");
    ping_until(&store, Result::is_ok).await;
}
