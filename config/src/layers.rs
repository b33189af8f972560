//! [`Loader`]: the layers of a [`WorkerConfig`], each over the one before:
//!
//! 1. the code's defaults (or a derive attribute's),
//! 2. the TOML file (`--config`),
//! 3. the variables of earlier releases: `BACKSTOP_AMQP_URL` (RabbitMQ) or
//!    `BACKSTOP_KAFKA_BROKERS` (Kafka) for `broker.url`,
//!    `BACKSTOP_REDIS_URL` for `store.redis_url`, `BACKSTOP_PG_URL` for
//!    `store.postgres_url`,
//! 4. `BACKSTOP_<SECTION>__<KEY>` (`BACKSTOP_STORE__LEASE_MS`,
//!    `BACKSTOP_SOURCES__ORDERS__CONCURRENCY`: `__` between levels, any case),
//! 5. flags.
//!
//! Every value remembers its layer, so an error names the file or the exact
//! variable or flag. Unknown keys are errors in every layer (a variable
//! with `__` after `BACKSTOP_` is a key; other `BACKSTOP_*` variables are left alone).

use std::path::{Path, PathBuf};

use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};

use crate::error::{ConfigError, describe};
use crate::model::{BrokerKind, WorkerConfig};

/// The environment variable of earlier releases for the RabbitMQ URL.
pub const AMQP_URL_ENV: &str = "BACKSTOP_AMQP_URL";
/// The environment variable of earlier releases for Kafka's bootstrap servers.
pub const KAFKA_BROKERS_ENV: &str = "BACKSTOP_KAFKA_BROKERS";
/// The environment variable of earlier releases for the Redis URL.
pub const REDIS_URL_ENV: &str = "BACKSTOP_REDIS_URL";
/// The environment variable of earlier releases for the PostgreSQL URL.
pub const PG_URL_ENV: &str = "BACKSTOP_PG_URL";
/// The prefix of `BACKSTOP_<SECTION>__<KEY>` variables.
pub const ENV_PREFIX: &str = "BACKSTOP_";

/// Key words whose values are always text (never read as numbers).
const TEXT_KEYS: [&str; 6] = ["password", "secret", "token", "url", "username", "key"];

/// Builds a [`WorkerConfig`] from its layers.
///
/// ```no_run
/// let config = backstop_config::Loader::new()
///     .file("worker.toml")
///     .flag("--concurrency", "defaults.concurrency", 64)
///     .load()?;
/// # Ok::<(), backstop_config::ConfigError>(())
/// ```
#[derive(Debug, Default)]
pub struct Loader {
    file: Option<PathBuf>,
    env: Option<Vec<(String, String)>>,
    flags: Vec<(String, String, Value)>,
}

/// One layer of values, with where they came from.
struct Layer {
    name: String,
    source: Option<PathBuf>,
    dict: Dict,
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        let meta = Metadata::named(self.name.clone());
        match &self.source {
            Some(path) => meta.source(figment::Source::File(path.clone())),
            None => meta,
        }
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

/// One `key = value`, nested (`a.b` → `{a: {b: value}}`).
fn nested(key: &str, value: Value) -> Dict {
    match figment::util::nest(key, value) {
        Value::Dict(_, dict) => dict,
        _ => Dict::new(),
    }
}

fn single(name: String, key: &str, value: Value) -> Layer {
    Layer {
        name,
        source: None,
        dict: nested(key, value),
    }
}

/// An environment value: text for secret-like keys, else parsed like TOML
/// scalars (numbers, booleans), falling back to text.
fn env_value(key: &str, raw: &str) -> Value {
    let last = key.rsplit('.').next().unwrap_or(key);
    if key.starts_with("broker.kafka_options") || TEXT_KEYS.iter().any(|w| last.contains(w)) {
        return Value::from(raw.to_owned());
    }
    let text = raw.trim();
    if let Ok(n) = text.parse::<i64>() {
        return Value::from(n);
    }
    if let Ok(n) = text.parse::<u64>() {
        return Value::from(n);
    }
    if let Ok(b) = text.parse::<bool>() {
        return Value::from(b);
    }
    if text.contains('.')
        && let Ok(f) = text.parse::<f64>()
    {
        return Value::from(f);
    }
    Value::from(raw.to_owned())
}

/// The file as a layer; a syntax error names the line and column.
fn file_layer(path: &Path) -> Result<Layer, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| {
        let at = e.span().map_or(0, |s| s.start);
        let before = &text[..at.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        ConfigError::Syntax {
            path: path.to_owned(),
            line,
            column,
            message: e.message().trim().to_owned(),
        }
    })?;
    let dict = match Value::serialize(&table) {
        Ok(Value::Dict(_, dict)) => dict,
        _ => Dict::new(),
    };
    Ok(Layer {
        name: path.display().to_string(),
        source: Some(path.to_owned()),
        dict,
    })
}

impl Loader {
    /// No file, the process environment, no flags.
    pub fn new() -> Self {
        Loader::default()
    }

    /// Reads this TOML file (a missing file is an error).
    pub fn file(mut self, path: impl Into<PathBuf>) -> Self {
        self.file = Some(path.into());
        self
    }

    /// Reads the file if one is given.
    pub fn file_opt(mut self, path: Option<impl Into<PathBuf>>) -> Self {
        self.file = path.map(Into::into);
        self
    }

    /// Takes the environment from `vars` instead of the process's.
    pub fn env_vars(mut self, vars: impl IntoIterator<Item = (String, String)>) -> Self {
        self.env = Some(vars.into_iter().collect());
        self
    }

    /// A flag given on the command line: `key` (dotted) set to `value`,
    /// over every other layer. `flag` is how errors name it (`--concurrency`).
    pub fn flag(mut self, flag: &str, key: &str, value: impl serde::Serialize) -> Self {
        let value = Value::serialize(value).unwrap_or_else(|_| Value::from(String::new()));
        self.flags.push((flag.to_owned(), key.to_owned(), value));
        self
    }

    /// The layers merged and checked, secret files read.
    pub fn load(self) -> Result<WorkerConfig, ConfigError> {
        let env = self.env.unwrap_or_else(|| std::env::vars().collect());
        let mut upper = Figment::new();
        for (name, raw) in &env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if !rest.contains("__") {
                continue;
            }
            let key = rest.to_lowercase().replace("__", ".");
            upper = upper.merge(single(
                format!("environment variable {name}"),
                &key,
                env_value(&key, raw),
            ));
        }
        for (flag, key, value) in self.flags {
            upper = upper.merge(single(format!("flag {flag}"), &key, value));
        }
        let mut base = Figment::new();
        if let Some(path) = &self.file {
            base = base.merge(file_layer(path)?);
        }
        // The old variables' meaning depends on the broker, so it is read first.
        let kind: BrokerKind = Figment::new()
            .merge(base.clone())
            .merge(upper.clone())
            .extract_inner("broker.kind")
            .unwrap_or_default();
        let var = |name: &str| env.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
        let old = [
            (AMQP_URL_ENV, "broker.url", kind == BrokerKind::Rabbitmq),
            (KAFKA_BROKERS_ENV, "broker.url", kind == BrokerKind::Kafka),
            (REDIS_URL_ENV, "store.redis_url", true),
            (PG_URL_ENV, "store.postgres_url", true),
        ];
        for (name, key, applies) in old {
            if let (true, Some(value)) = (applies, var(name)) {
                base = base.merge(single(
                    format!("environment variable {name}"),
                    key,
                    Value::from(value),
                ));
            }
        }
        let figment = base.merge(upper);
        let mut config: WorkerConfig = figment.extract().map_err(|error| {
            let (key, problem) = describe(&error);
            let origin = figment
                .find_metadata(&key)
                .or(error.metadata.as_ref())
                .map_or_else(|| "the configuration".to_owned(), origin_of);
            ConfigError::Key {
                key,
                origin,
                problem,
            }
        })?;
        config.read_secret_files()?;
        Ok(config)
    }
}

fn origin_of(meta: &Metadata) -> String {
    match &meta.source {
        Some(figment::Source::File(path)) => path.display().to_string(),
        _ => meta.name.to_string(),
    }
}

impl WorkerConfig {
    /// Reads `broker.password_file` into `broker.password`.
    fn read_secret_files(&mut self) -> Result<(), ConfigError> {
        if let Some(path) = &self.broker.password_file {
            if self.broker.password.is_some() {
                return Err(ConfigError::Conflict(
                    "broker.password and broker.password_file are both set; keep one".to_owned(),
                ));
            }
            let text = backstop::secret::read_secret_file(path).map_err(|source| {
                ConfigError::SecretFile {
                    key: "broker.password_file".to_owned(),
                    path: path.clone(),
                    source,
                }
            })?;
            self.broker.password = Some(crate::Secret::new(text));
        }
        Ok(())
    }
}
