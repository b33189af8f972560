//! What the configuration means for each client: the AMQP URL with its
//! credentials and TLS parameters, Kafka's librdkafka properties, the store URLs.

use crate::error::ConfigError;
use crate::model::{BrokerConfig, StoreConfig};
use crate::secret::{Secret, SecretUrl};

/// The local RabbitMQ of the development set-up.
const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// The local Kafka of the development set-up.
const DEFAULT_KAFKA_BROKERS: &str = "127.0.0.1:9092";
const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
const DEFAULT_PG_URL: &str = "postgres://backstop:backstop@127.0.0.1:5432/backstop";

impl BrokerConfig {
    /// The AMQP URL: `url` (or the local broker; a comma-separated node
    /// list for a cluster, each node treated alike) with
    /// `username`/`password` set into it and `[broker.tls]` as RabbitMQ's URI parameters
    /// (`cacertfile`, `certfile`, `keyfile`, `verify`,
    /// `server_name_indication`; the scheme becomes `amqps`).
    pub fn amqp_url(&self) -> Result<SecretUrl, ConfigError> {
        let raw = self
            .url
            .as_ref()
            .map_or(DEFAULT_AMQP_URL, SecretUrl::expose);
        let nodes = backstop::nodes::split_urls(raw, &["amqp://", "amqps://"])
            .iter()
            .map(|node| self.node_url(node))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(SecretUrl::new(nodes.join(",")))
    }

    /// One node's URL with the credentials and TLS parameters set.
    fn node_url(&self, raw: &str) -> Result<String, ConfigError> {
        let invalid = |what: &str| ConfigError::Key {
            key: "broker.url".to_owned(),
            origin: "the configuration".to_owned(),
            problem: format!("not a usable AMQP URL: {what}"),
        };
        let mut url = url::Url::parse(raw).map_err(|e| invalid(&e.to_string()))?;
        if let Some(user) = &self.username {
            url.set_username(user)
                .map_err(|()| invalid("it cannot hold a user name"))?;
        }
        if let Some(password) = &self.password {
            url.set_password(Some(password.expose()))
                .map_err(|()| invalid("it cannot hold a password"))?;
        }
        if let Some(tls) = &self.tls {
            if url.scheme() == "amqp" {
                url.set_scheme("amqps")
                    .map_err(|()| invalid("cannot switch it to amqps"))?;
            }
            let mut query = url.query_pairs_mut();
            if let Some(ca) = &tls.ca_file {
                query.append_pair("cacertfile", &ca.display().to_string());
            }
            if let Some(cert) = &tls.cert_file {
                query.append_pair("certfile", &cert.display().to_string());
            }
            if let Some(key) = &tls.key_file {
                query.append_pair("keyfile", &key.display().to_string());
            }
            if tls.verify == Some(false) {
                query.append_pair("verify", "verify_none");
            }
            if let Some(name) = &tls.server_name {
                query.append_pair("server_name_indication", name);
            }
        }
        Ok(url.to_string())
    }

    /// Kafka's bootstrap servers: `url`, else the local broker.
    pub fn kafka_brokers(&self) -> String {
        self.url
            .as_ref()
            .map_or(DEFAULT_KAFKA_BROKERS, SecretUrl::expose)
            .to_owned()
    }

    /// The librdkafka properties this configuration asks for, in order:
    /// TLS (`security.protocol`, `ssl.*`), SASL from `username`/`password`
    /// (`sasl.*`, mechanism `SCRAM-SHA-512` unless named), then
    /// `[broker.kafka_options]` as given (so those win). The instance id is
    /// not among them: it is the consumer's
    /// (`backstop_kafka::KafkaConfig::group_instance_id`).
    pub fn kafka_properties(&self) -> Vec<(String, Secret)> {
        let mut out = Vec::new();
        let mut push = |k: &str, v: &str| out.push((k.to_owned(), Secret::new(v)));
        let sasl = self.username.is_some();
        match (self.tls.is_some(), sasl) {
            (true, true) => push("security.protocol", "SASL_SSL"),
            (true, false) => push("security.protocol", "SSL"),
            (false, true) => push("security.protocol", "SASL_PLAINTEXT"),
            (false, false) => {}
        }
        if let Some(tls) = &self.tls {
            let path = |p: &std::path::PathBuf| p.display().to_string();
            if let Some(ca) = &tls.ca_file {
                push("ssl.ca.location", &path(ca));
            }
            if let Some(cert) = &tls.cert_file {
                push("ssl.certificate.location", &path(cert));
            }
            if let Some(key) = &tls.key_file {
                push("ssl.key.location", &path(key));
            }
            if tls.verify == Some(false) {
                push("enable.ssl.certificate.verification", "false");
            }
        }
        if let Some(user) = &self.username {
            push(
                "sasl.mechanism",
                self.sasl_mechanism.as_deref().unwrap_or("SCRAM-SHA-512"),
            );
            push("sasl.username", user);
            if let Some(password) = &self.password {
                push("sasl.password", password.expose());
            }
        }
        for (key, value) in &self.kafka_options {
            out.push((key.clone(), value.clone()));
        }
        out
    }
}

impl StoreConfig {
    /// The Redis URL, else the local one.
    pub fn redis_url(&self) -> SecretUrl {
        self.redis_url
            .clone()
            .unwrap_or_else(|| SecretUrl::new(DEFAULT_REDIS_URL))
    }

    /// The PostgreSQL URL, else the local one.
    pub fn postgres_url(&self) -> SecretUrl {
        self.postgres_url
            .clone()
            .unwrap_or_else(|| SecretUrl::new(DEFAULT_PG_URL))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_goes_into_every_node_of_a_cluster_url_and_never_shows() {
        let config = BrokerConfig {
            url: Some(SecretUrl::new(
                "amqp://127.0.0.1:5681/%2f, amqp://127.0.0.1:5682/%2f",
            )),
            username: Some("app".to_owned()),
            password: Some(Secret::new("p@ss,word")),
            ..BrokerConfig::default()
        };
        let url = config.amqp_url().unwrap();
        assert_eq!(
            url.expose(),
            "amqp://app:p%40ss,word@127.0.0.1:5681/%2f,amqp://app:p%40ss,word@127.0.0.1:5682/%2f"
        );
        let shown = format!("{url} {url:?}");
        assert!(
            !shown.contains("p%40ss") && !shown.contains("p@ss"),
            "{shown}"
        );
        assert_eq!(
            url.to_string(),
            "amqp://app:***@127.0.0.1:5681/%2f,amqp://app:***@127.0.0.1:5682/%2f"
        );
    }
}
