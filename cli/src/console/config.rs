//! The console's configuration: a TOML file (`--config`), the environment
//! for secrets, and flags over both.
//!
//! ```toml
//! listen = "127.0.0.1:8080"   # the default; any other address needs [auth]
//! read_only = false           # true: browse and export only
//! state_dir = "/var/lib/backstop-console"  # indexes, jobs, audit log
//!
//! [[rabbitmq]]                # one entry per vhost
//! name = "rabbitmq"           # shown, and in the console's URLs
//! url = "amqp://user:password@host:5672/%2f"
//! api = "http://user:password@host:15672"  # management API, to find the DLQs
//! prefix = "orders"           # optional: only DLQs whose name starts with it
//!
//! [[kafka]]
//! name = "kafka"
//! brokers = "host:9092"
//!
//! [auth]                      # or BACKSTOP_CONSOLE_TOKEN, _USER, _PASSWORD
//! token = "@/run/secrets/console-token"   # `@/path` reads a file
//! user = "ops"
//! password = "@/run/secrets/console-password"
//! allowed_hosts = ["dlq.example.com"]     # Host headers accepted besides loopback
//! ```
//!
//! An empty secret (`BACKSTOP_CONSOLE_PASSWORD=`) is no secret: it does not
//! count as authentication, and a user without a password (or the reverse)
//! refuses to start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::error::ConsoleError;

/// The environment variable of the bearer token.
pub const TOKEN_ENV: &str = "BACKSTOP_CONSOLE_TOKEN";
/// The environment variable of the basic-auth user.
pub const USER_ENV: &str = "BACKSTOP_CONSOLE_USER";
/// The environment variable of the basic-auth password.
pub const PASSWORD_ENV: &str = "BACKSTOP_CONSOLE_PASSWORD";

/// The default listen address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// The console's configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Where to listen (default [`DEFAULT_LISTEN`]).
    #[serde(default)]
    pub listen: Option<String>,
    /// Browse and export only: every action is refused.
    #[serde(default)]
    pub read_only: bool,
    /// Where indexes, jobs and the audit log live (default: `<config>.state`
    /// next to the configuration file).
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// Index every DLQ in the background at start (and keep Kafka's
    /// indexes current); otherwise a DLQ is indexed when first opened.
    #[serde(default = "yes")]
    pub auto_index: bool,
    /// How often Kafka indexes are extended, in seconds (default 15).
    #[serde(default = "fifteen")]
    pub refresh_secs: u64,
    /// RabbitMQ vhosts.
    #[serde(default)]
    pub rabbitmq: Vec<RabbitCluster>,
    /// Kafka clusters.
    #[serde(default)]
    pub kafka: Vec<KafkaCluster>,
    /// Authentication (required off loopback).
    #[serde(default)]
    pub auth: AuthConfig,
}

fn yes() -> bool {
    true
}

fn fifteen() -> u64 {
    15
}

/// `[[rabbitmq]]`: one vhost. Its `Debug` output hides the passwords.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RabbitCluster {
    /// Its name in the console (default `rabbitmq`).
    #[serde(default = "rabbit_name")]
    pub name: String,
    /// The AMQP URL, vhost included (`@/path` reads a file).
    pub url: String,
    /// The management API (`http(s)://user:password@host:15672`).
    pub api: String,
    /// Only DLQs (`<queue>.dlq`) whose name starts with this.
    #[serde(default)]
    pub prefix: String,
    /// The longest one letter may stay unacked while an action settles it.
    #[serde(default = "hold_budget")]
    pub hold_budget: String,
}

fn rabbit_name() -> String {
    "rabbitmq".into()
}

fn hold_budget() -> String {
    "25m".into()
}

impl std::fmt::Debug for RabbitCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitCluster")
            .field("name", &self.name)
            .field("url", &crate::redact::redact(&self.url))
            .field("api", &crate::redact::redact(&self.api))
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl RabbitCluster {
    /// The vhost named by the URL's path (`/` when none).
    pub fn vhost(&self) -> String {
        let path = url::Url::parse(&self.url)
            .map(|u| u.path().trim_start_matches('/').to_owned())
            .unwrap_or_default();
        let vhost = percent_encoding::percent_decode_str(&path).decode_utf8_lossy();
        if vhost.is_empty() {
            "/".into()
        } else {
            vhost.into_owned()
        }
    }
}

/// `[[kafka]]`: one cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaCluster {
    /// Its name in the console (default `kafka`).
    #[serde(default = "kafka_name")]
    pub name: String,
    /// The bootstrap servers.
    pub brokers: String,
    /// Only DLQ topics (`<topic>.<group>.dlq`) whose name starts with this.
    #[serde(default)]
    pub prefix: String,
}

fn kafka_name() -> String {
    "kafka".into()
}

/// `[auth]`: a bearer token, a basic-auth user and password, or both.
/// Its `Debug` output hides the secrets.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// A bearer token (`Authorization: Bearer …`); `@/path` reads a file.
    pub token: Option<String>,
    /// The basic-auth user.
    pub user: Option<String>,
    /// Its password; `@/path` reads a file.
    pub password: Option<String>,
    /// The `Host` headers (`name` or `name:port`) requests may carry besides
    /// the loopback names of the listen port; default: the listen address.
    /// Only with authentication: without it, only loopback names pass (a
    /// DNS-rebinding page cannot reach the console).
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("allowed_hosts", &self.allowed_hosts)
            .finish()
    }
}

impl AuthConfig {
    /// True when some authentication is configured (empty values never
    /// count: [`ConsoleConfig::load`] drops them).
    pub fn is_set(&self) -> bool {
        let given = |v: &Option<String>| v.as_deref().is_some_and(|v| !v.is_empty());
        given(&self.token) || (given(&self.user) && given(&self.password))
    }
}

/// A secret as configured: `@/path` is the file's content (trimmed).
fn secret(path: &Path, what: &str, value: String) -> Result<String, ConsoleError> {
    match value.strip_prefix('@') {
        Some(file) => std::fs::read_to_string(file)
            .map(|s| s.trim().to_owned())
            .map_err(|e| ConsoleError::Config {
                path: path.display().to_string(),
                reason: format!("{what}: cannot read {file}: {e}"),
            }),
        None => Ok(value),
    }
}

impl ConsoleConfig {
    /// Reads `path`, then takes the secrets given as `@/path` from their
    /// files and those missing from the environment (`env`).
    pub fn load(
        path: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<ConsoleConfig, ConsoleError> {
        let bad = |reason: String| ConsoleError::Config {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let mut config: ConsoleConfig =
            toml::from_str(&text).map_err(|e| bad(crate::redact::redact_all(&e.to_string())))?;
        let auth = &mut config.auth;
        // An empty value (in the file, the environment or the file it
        // names) is no value: it never counts as authentication.
        let given = |v: Option<String>| v.filter(|v| !v.trim().is_empty());
        let resolved = |what: &str, v: Option<String>, var: &str| {
            given(v)
                .or_else(|| given(env(var)))
                .map(|v| secret(path, what, v))
                .transpose()
                .map(given)
        };
        auth.token = resolved("auth.token", auth.token.take(), TOKEN_ENV)?;
        auth.user = given(auth.user.take().or_else(|| env(USER_ENV)));
        auth.password = resolved("auth.password", auth.password.take(), PASSWORD_ENV)?;
        match (&auth.user, &auth.password) {
            (Some(_), None) => {
                return Err(bad(format!(
                    "[auth] user is set but its password is missing or empty: set password (or {PASSWORD_ENV}), or remove the user"
                )));
            }
            (None, Some(_)) => {
                return Err(bad(format!(
                    "[auth] password is set but its user is missing or empty: set user (or {USER_ENV}), or remove the password"
                )));
            }
            _ => {}
        }
        for r in &mut config.rabbitmq {
            r.url = secret(path, "rabbitmq.url", std::mem::take(&mut r.url))?;
            r.api = secret(path, "rabbitmq.api", std::mem::take(&mut r.api))?;
        }
        if config.rabbitmq.is_empty() && config.kafka.is_empty() {
            return Err(bad(
                "no broker: add a [[rabbitmq]] (url, api) or a [[kafka]] (brokers) section".into(),
            ));
        }
        let mut names: Vec<&str> = config
            .rabbitmq
            .iter()
            .map(|r| r.name.as_str())
            .chain(config.kafka.iter().map(|k| k.name.as_str()))
            .collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(bad(format!(
                "two brokers are named {:?}: give each [[rabbitmq]] and [[kafka]] its own name",
                w[0]
            )));
        }
        if config.state_dir.is_none() {
            let mut dir = path.as_os_str().to_owned();
            dir.push(".state");
            config.state_dir = Some(PathBuf::from(dir));
        }
        Ok(config)
    }

    /// The state directory (set by [`ConsoleConfig::load`]).
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("backstop-console.state"))
    }

    /// The address to listen on: `flag`, else the file's, else loopback;
    /// refused off loopback without authentication.
    pub fn listen_addr(&self, flag: Option<&str>) -> Result<SocketAddr, ConsoleError> {
        let text = flag.or(self.listen.as_deref()).unwrap_or(DEFAULT_LISTEN);
        let addr: SocketAddr = text.parse().map_err(|e| {
            ConsoleError::BadRequest(format!(
                "listen address {text:?}: {e} (write it as 127.0.0.1:8080)"
            ))
        })?;
        if !addr.ip().is_loopback() && !self.auth.is_set() {
            return Err(ConsoleError::Unauthenticated(addr.to_string()));
        }
        Ok(addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<ConsoleConfig, ConsoleError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.toml");
        std::fs::write(&path, text).unwrap();
        ConsoleConfig::load(&path, |k| {
            env.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    const KAFKA: &str = "[[kafka]]\nbrokers = \"127.0.0.1:9092\"\n";

    #[test]
    fn only_loopback_without_authentication() {
        let c = load(KAFKA, &[]).unwrap();
        assert!(c.listen_addr(None).unwrap().ip().is_loopback());
        assert!(matches!(
            c.listen_addr(Some("0.0.0.0:8080")),
            Err(ConsoleError::Unauthenticated(_))
        ));
        let c = load(KAFKA, &[(TOKEN_ENV, "t0ken")]).unwrap();
        assert!(c.listen_addr(Some("0.0.0.0:8080")).is_ok());
        assert!(!format!("{c:?}").contains("t0ken"));
    }

    #[test]
    fn empty_or_half_credentials_are_no_authentication() {
        // An empty password (`BACKSTOP_CONSOLE_PASSWORD=`) is not a password.
        let e = load(KAFKA, &[(USER_ENV, "ops"), (PASSWORD_ENV, "")]).unwrap_err();
        assert!(
            e.to_string().contains("password is missing or empty"),
            "{e}"
        );
        let e = load(&format!("{KAFKA}[auth]\npassword = \"pw\"\n"), &[]).unwrap_err();
        assert!(e.to_string().contains("user is missing or empty"), "{e}");
        let e = load(
            &format!("{KAFKA}[auth]\nuser = \"\"\npassword = \"pw\"\n"),
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("user is missing or empty"), "{e}");
        // Empty everywhere: no authentication, so loopback only.
        let c = load(
            KAFKA,
            &[(TOKEN_ENV, ""), (USER_ENV, ""), (PASSWORD_ENV, " ")],
        )
        .unwrap();
        assert!(!c.auth.is_set());
        assert!(matches!(
            c.listen_addr(Some("0.0.0.0:8080")),
            Err(ConsoleError::Unauthenticated(_))
        ));
        let c = load(&format!("{KAFKA}[auth]\ntoken = \"\"\n"), &[]).unwrap();
        assert!(!c.auth.is_set());
        // A whole pair counts.
        let c = load(KAFKA, &[(USER_ENV, "ops"), (PASSWORD_ENV, "pw")]).unwrap();
        assert!(c.auth.is_set());
    }

    #[test]
    fn a_file_needs_a_broker_and_known_keys() {
        assert!(load("", &[]).is_err());
        let e = load("[[kafka]]\nbrokers = \"x\"\nbrokerz = 1\n", &[]).unwrap_err();
        assert!(e.to_string().contains("brokerz"), "{e}");
    }

    #[test]
    fn the_vhost_comes_from_the_url() {
        let c = load(
            "[[rabbitmq]]\nurl = \"amqp://u:p@h:5672/%2f\"\napi = \"http://u:p@h:15672\"\n\
             [[rabbitmq]]\nname = \"b\"\nurl = \"amqp://h/orders\"\napi = \"http://h\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.rabbitmq[0].vhost(), "/");
        assert_eq!(c.rabbitmq[1].vhost(), "orders");
        assert!(!format!("{c:?}").contains(":p@"));
    }
}
