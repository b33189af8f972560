//! The layers of a worker configuration: precedence, the old variable
//! names, secret files, and the errors of a bad file or variable.

use std::path::PathBuf;

use backstop_config::{BrokerKind, ConfigError, Loader, StoreKind, WorkerConfig};

fn temp(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("backstop-config-{}-{}", std::process::id(), name));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn load(file: &PathBuf, vars: &[(&str, &str)]) -> Result<WorkerConfig, ConfigError> {
    Loader::new().file(file).env_vars(env(vars)).load()
}

#[test]
fn a_flag_beats_the_environment_which_beats_the_file_which_beats_the_default() {
    let file = temp(
        "precedence.toml",
        "[defaults]\nconcurrency = 4\nmax_attempts = 7\ntimeout_ms = 1000\n[store]\nlease_ms = 100\n",
    );
    let vars = [
        ("BACKSTOP_DEFAULTS__CONCURRENCY", "8"),
        ("BACKSTOP_DEFAULTS__MAX_ATTEMPTS", "9"),
    ];
    let config = Loader::new()
        .file(&file)
        .env_vars(env(&vars))
        .flag("--concurrency", "defaults.concurrency", 16)
        .load()
        .unwrap();
    let settings = &config.sources()[0].settings;
    assert_eq!(settings.concurrency, 16, "flag over environment");
    assert_eq!(settings.max_attempts, 9, "environment over file");
    assert_eq!(settings.timeout.as_millis(), 1000, "file over default");
    assert_eq!(settings.max_payload_bytes, 1024 * 1024, "the default");
    assert_eq!(config.store.lease_ms, Some(100));
    // Without the file, the default shows through.
    let bare = Loader::new().env_vars(env(&[])).load().unwrap();
    assert_eq!(bare.sources()[0].settings.concurrency, 32);
    assert_eq!(bare.sources()[0].queue, "orders");
}

#[test]
fn the_variables_of_earlier_releases_still_work_and_lose_to_the_new_names() {
    let file = temp(
        "old.toml",
        "[broker]\nkind = \"rabbitmq\"\nurl = \"amqp://file-host/%2f\"\n[store]\nkind = \"redis\"\n",
    );
    let config = load(
        &file,
        &[
            ("BACKSTOP_AMQP_URL", "amqp://u:p@old-host/%2f"),
            ("BACKSTOP_KAFKA_BROKERS", "kafka-host:9092"),
            ("BACKSTOP_REDIS_URL", "redis://old-redis:6379"),
            ("BACKSTOP_PG_URL", "postgres://old-pg/db"),
        ],
    )
    .unwrap();
    assert_eq!(config.broker.kind, BrokerKind::Rabbitmq);
    assert_eq!(
        config.broker.url.as_ref().unwrap().expose(),
        "amqp://u:p@old-host/%2f",
        "the old variable is over the file, and only the broker's own applies"
    );
    assert_eq!(config.store.kind, StoreKind::Redis);
    assert_eq!(config.store.redis_url().expose(), "redis://old-redis:6379");
    assert_eq!(config.store.postgres_url().expose(), "postgres://old-pg/db");
    let config = load(
        &file,
        &[
            ("BACKSTOP_AMQP_URL", "amqp://old-host/%2f"),
            ("BACKSTOP_BROKER__URL", "amqp://new-host/%2f"),
            ("BACKSTOP_BROKER__KIND", "kafka"),
            ("BACKSTOP_KAFKA_BROKERS", "kafka-host:9092"),
        ],
    )
    .unwrap();
    assert_eq!(config.broker.kind, BrokerKind::Kafka);
    assert_eq!(config.broker.kafka_brokers(), "amqp://new-host/%2f");
    let config = load(
        &file,
        &[
            ("BACKSTOP_BROKER__KIND", "kafka"),
            ("BACKSTOP_KAFKA_BROKERS", "kafka-host:9092"),
        ],
    )
    .unwrap();
    assert_eq!(config.broker.kafka_brokers(), "kafka-host:9092");
}

#[test]
fn secrets_come_from_files_stay_text_and_never_show() {
    let secret = temp("password", "0123-s3cr3t-pw\n");
    let numeric = temp("numeric", "0123\n");
    let file = temp(
        "secrets.toml",
        &format!(
            "[broker]\nkind = \"rabbitmq\"\nurl = \"amqp://127.0.0.1:5672/%2f\"\nusername = \"app\"\npassword_file = \"{}\"\n[broker.kafka_options]\n\"sasl.password\" = \"@{}\"\n[store]\nredis_url = \"redis://:0123-s3cr3t-pw@127.0.0.1:6379\"\n",
            secret.display(),
            numeric.display()
        ),
    );
    let config = load(&file, &[]).unwrap();
    let password = config.broker.password.as_ref().unwrap();
    assert_eq!(password.expose(), "0123-s3cr3t-pw");
    assert_eq!(
        config.broker.kafka_options["sasl.password"].expose(),
        "0123"
    );
    let url = config.broker.amqp_url().unwrap();
    assert_eq!(url.expose(), "amqp://app:0123-s3cr3t-pw@127.0.0.1:5672/%2f");
    let shown = format!("{config:?} {url} {url:?} {password}");
    assert!(!shown.contains("s3cr3t"), "a secret leaked: {shown}");
    assert!(shown.contains("***"), "{shown}");
    // From the environment, a number-looking password stays text.
    let config = load(&file, &[("BACKSTOP_BROKER__PASSWORD", "0123")]);
    let error = config.unwrap_err().to_string();
    assert!(error.contains("both set"), "{error}");
    let plain = temp("plain.toml", "[broker]\nusername = \"app\"\n");
    let config = load(&plain, &[("BACKSTOP_BROKER__PASSWORD", "0123")]).unwrap();
    assert_eq!(config.broker.password.unwrap().expose(), "0123");
    // A wrong value never quotes it; a missing secret file names the key and the file.
    let wrong = temp(
        "wrong.toml",
        "[store]\nredis_url = [\"redis://:0123-s3cr3t-pw@h\"]\n",
    );
    let error = load(&wrong, &[]).unwrap_err().to_string();
    assert!(error.contains("store.redis_url"), "{error}");
    assert!(!error.contains("s3cr3t"), "{error}");
    let missing = temp(
        "missing.toml",
        "[broker]\npassword_file = \"/nonexistent/pw\"\n",
    );
    let error = load(&missing, &[]).unwrap_err().to_string();
    assert!(
        error.contains("broker.password_file") && error.contains("/nonexistent/pw"),
        "{error}"
    );
    let missing_at = temp(
        "missing-at.toml",
        "[broker]\npassword = \"@/nonexistent/pw\"\n",
    );
    let error = load(&missing_at, &[]).unwrap_err().to_string();
    assert!(
        error.contains("broker.password") && error.contains("/nonexistent/pw"),
        "{error}"
    );
}

#[test]
fn a_syntax_error_names_the_file_line_and_column_without_quoting_it() {
    let file = temp(
        "syntax.toml",
        "[broker]\nkind = \"rabbitmq\"\npassword = \"s3cr3t\" oops\n",
    );
    let error = load(&file, &[]).unwrap_err();
    let ConfigError::Syntax { line, .. } = &error else {
        panic!("not a syntax error: {error}");
    };
    assert_eq!(*line, 3);
    let shown = error.to_string();
    assert!(shown.contains(&format!("{}:3:", file.display())), "{shown}");
    assert!(!shown.contains("s3cr3t"), "{shown}");
}

#[test]
fn a_wrong_type_names_the_key_and_where_it_was_set() {
    let file = temp("type.toml", "[defaults]\nconcurrency = \"many\"\n");
    let error = load(&file, &[]).unwrap_err().to_string();
    assert!(error.contains("defaults.concurrency"), "{error}");
    assert!(error.contains(&file.display().to_string()), "{error}");
    assert!(!error.contains("many"), "{error}");
    let ok = temp("type-ok.toml", "");
    let error = load(&ok, &[("BACKSTOP_BREAKER__TRIP_AFTER", "often")])
        .unwrap_err()
        .to_string();
    assert!(error.contains("breaker.trip_after"), "{error}");
    assert!(
        error.contains("environment variable BACKSTOP_BREAKER__TRIP_AFTER"),
        "{error}"
    );
    let error = Loader::new()
        .file(&ok)
        .env_vars(env(&[]))
        .flag("--max-attempts", "defaults.max_attempts", "x")
        .load()
        .unwrap_err()
        .to_string();
    assert!(error.contains("flag --max-attempts"), "{error}");
}

#[test]
fn an_unknown_key_is_an_error_in_the_file_and_in_the_environment() {
    let file = temp("unknown.toml", "[store]\nkind = \"redis\"\nleese_ms = 10\n");
    let error = load(&file, &[]).unwrap_err().to_string();
    assert!(error.starts_with("store.leese_ms: unknown key"), "{error}");
    assert!(error.contains("unknown key"), "{error}");
    assert!(error.contains(&file.display().to_string()), "{error}");
    let file = temp("unknown-source.toml", "[sources.a]\nconcurrencyy = 3\n");
    let error = load(&file, &[]).unwrap_err().to_string();
    assert!(error.starts_with("sources.a.concurrencyy: "), "{error}");
    let ok = temp("unknown-ok.toml", "");
    let error = load(&ok, &[("BACKSTOP_TELEMETRY__METRIC_ADDR", "127.0.0.1:1")])
        .unwrap_err()
        .to_string();
    assert!(error.starts_with("telemetry.metric_addr: "), "{error}");
    assert!(
        error.contains("environment variable BACKSTOP_TELEMETRY__METRIC_ADDR"),
        "{error}"
    );
    // Variables without `__` are not keys (BACKSTOP_TLS_DIR and the like).
    load(
        &ok,
        &[("BACKSTOP_TLS_DIR", "/x"), ("BACKSTOP_ORDER_WORKER", "/y")],
    )
    .unwrap();
}

#[test]
fn a_missing_file_is_an_error_naming_it() {
    let error = Loader::new()
        .file("/nonexistent/worker.toml")
        .env_vars(env(&[]))
        .load()
        .unwrap_err();
    assert!(matches!(error, ConfigError::Read { .. }), "{error}");
    assert!(error.to_string().contains("/nonexistent/worker.toml"));
}

#[test]
fn the_example_file_loads() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/worker.toml");
    let config = Loader::new().file(path).env_vars(env(&[])).load().unwrap();
    assert_eq!(config.broker.kind, BrokerKind::Rabbitmq);
    let sources = config.sources();
    assert_eq!(sources.len(), 2);
    let priority = sources
        .iter()
        .find(|s| s.name == "priority-orders")
        .unwrap();
    assert_eq!(priority.settings.concurrency, 8);
    assert_eq!(priority.settings.max_attempts, 5);
    let orders = sources.iter().find(|s| s.name == "orders").unwrap();
    assert_eq!(orders.settings.concurrency, 32);
    assert_eq!(orders.handler.as_deref(), Some("place-order"));
    assert!(config.telemetry.metrics_addr.is_some());
}

#[test]
fn a_source_gets_only_the_keys_set_for_a_derived_runner() {
    let file = temp(
        "derive.toml",
        "[defaults]\ntimeout_ms = 2000\n[sources.orders]\nmax_attempts = 3\n",
    );
    let settings = load(&file, &[]).unwrap().settings_for("orders");
    assert_eq!(settings.max_attempts, Some(3));
    assert_eq!(settings.timeout, Some(std::time::Duration::from_secs(2)));
    assert_eq!(settings.concurrency, None, "left to the attribute");
}

#[test]
fn tls_and_sasl_become_the_amqp_url_parameters_and_kafka_properties() {
    let file = temp(
        "tls.toml",
        "[broker]\nurl = \"amqp://broker.internal:5671/%2f\"\nusername = \"app\"\npassword = \"p@ss\"\n\
         [broker.tls]\nca_file = \"/etc/ca.pem\"\nserver_name = \"mq\"\n\
         [broker.kafka_options]\n\"sasl.mechanism\" = \"PLAIN\"\n",
    );
    let broker = load(&file, &[]).unwrap().broker;
    let url = broker.amqp_url().unwrap();
    assert_eq!(
        url.expose(),
        "amqps://app:p%40ss@broker.internal:5671/%2f?cacertfile=%2Fetc%2Fca.pem&server_name_indication=mq"
    );
    assert!(!url.to_string().contains("p%40ss"), "{url}");
    let properties: Vec<(String, String)> = broker
        .kafka_properties()
        .into_iter()
        .map(|(k, v)| (k, v.expose().to_owned()))
        .collect();
    let get = |key: &str| {
        properties
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(get("security.protocol"), Some("SASL_SSL"));
    assert_eq!(get("ssl.ca.location"), Some("/etc/ca.pem"));
    assert_eq!(get("sasl.username"), Some("app"));
    assert_eq!(get("sasl.password"), Some("p@ss"));
    assert_eq!(get("sasl.mechanism"), Some("PLAIN"), "kafka_options win");
}

#[test]
fn a_time_to_live_is_set_in_defaults_and_a_source_may_discard_instead() {
    let file = temp(
        "ttl.toml",
        "[defaults]\ntime_to_live_ms = 30000\n[sources.quotes]\ndiscard_expired = true\n[sources.orders]\n",
    );
    let config = load(&file, &[]).unwrap();
    let ttl = |name: &str| config.settings_for(name).time_to_live;
    let max = backstop::expiry::TimeToLive::max_age(std::time::Duration::from_secs(30));
    assert_eq!(ttl("orders"), Some(max));
    assert_eq!(ttl("quotes"), Some(max.discard()));
    let resolved = config.sources();
    let quotes = resolved.iter().find(|s| s.name == "quotes").unwrap();
    assert_eq!(quotes.settings.time_to_live, Some(max.discard()));

    let none = load(&temp("no-ttl.toml", "[defaults]\nconcurrency = 2\n"), &[]).unwrap();
    assert_eq!(
        none.settings_for("orders").time_to_live,
        None,
        "nothing expires by default"
    );
    let env = load(
        &temp("ttl-env.toml", ""),
        &[("BACKSTOP_DEFAULTS__TIME_TO_LIVE_MS", "1000")],
    )
    .unwrap();
    assert_eq!(
        env.settings_for("orders").time_to_live,
        Some(backstop::expiry::TimeToLive::max_age(
            std::time::Duration::from_secs(1)
        ))
    );
}
