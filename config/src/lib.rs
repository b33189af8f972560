//! One worker configuration from a TOML file, the environment and flags.
//!
//! A [`WorkerConfig`] says everything a worker process needs: the broker
//! (with TLS and SASL), its credentials, the sources with their per-consumer
//! settings (concurrency, retries, payload limit, timeouts), the idempotency
//! store, the kill switch, the shutdown deadline and telemetry. [`Loader`]
//! reads it in layers, each over the one before: the code's defaults < the
//! file < the variables of earlier releases (`BACKSTOP_AMQP_URL`,
//! `BACKSTOP_KAFKA_BROKERS`, `BACKSTOP_REDIS_URL`, `BACKSTOP_PG_URL`) <
//! `BACKSTOP_<SECTION>__<KEY>` variables < flags.
//!
//! Secrets ([`Secret`], [`SecretUrl`]) are shown as `***`, may be read from
//! files (`password_file`, or any secret as `@/path`), and no error quotes a
//! value. Unknown keys are errors. `examples/worker.toml` documents every key.
//!
//! ```
//! use backstop_config::Loader;
//!
//! let config = Loader::new()
//!     .env_vars([("BACKSTOP_DEFAULTS__MAX_ATTEMPTS".to_owned(), "3".to_owned())])
//!     .load()?;
//! assert_eq!(config.sources()[0].settings.max_attempts, 3);
//! # Ok::<(), backstop_config::ConfigError>(())
//! ```

mod broker;
mod error;
mod layers;
mod model;
mod secret;

pub use error::ConfigError;
pub use layers::{AMQP_URL_ENV, ENV_PREFIX, KAFKA_BROKERS_ENV, Loader, PG_URL_ENV, REDIS_URL_ENV};
pub use model::{
    BreakerSettings, BrokerConfig, BrokerKind, ConsumerSettings, KeyLayoutKind, ResolvedSource,
    Settings, ShutdownSettings, SourceConfig, StoreConfig, StoreKind, TelemetryConfig, TlsConfig,
    WorkerConfig,
};
pub use secret::{Secret, SecretUrl};
