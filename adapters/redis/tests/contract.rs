//! The store contract on Redis (`BACKSTOP_REDIS_URL`, default redis://127.0.0.1:6379).

use std::sync::Arc;

use backstop::error::BoxError;
use backstop::idempotency::Store;
use backstop_redis::{RedisConfig, RedisStore};
use backstop_testkit::store_contract::{Backend, TTL};

fn url() -> String {
    std::env::var("BACKSTOP_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// Every instance is a new connection to the same server and key prefix.
struct Redis {
    prefix: String,
}

impl Redis {
    fn new() -> Self {
        Redis {
            prefix: format!(
                "backstop-test:contract:{}:",
                backstop::message::new_message_id()
            ),
        }
    }
}

#[async_trait::async_trait]
impl Backend for Redis {
    async fn instance(&self) -> Result<Arc<dyn Store>, BoxError> {
        let store =
            RedisStore::connect_with(RedisConfig::new(url()).prefix(&self.prefix).ttl(TTL)).await?;
        Ok(Arc::new(store))
    }

    fn keeps_pending_letters(&self) -> bool {
        true
    }
}

backstop_testkit::store_contract_tests!(Redis::new());

/// The same contract through the stack's batcher: its answers are the
/// store's own.
mod batched {
    use std::sync::Arc;

    use backstop::error::BoxError;
    use backstop::idempotency::Store;
    use backstop::idempotency::{BatchConfig, Batched};
    use backstop_testkit::store_contract::Backend;

    struct Redis(super::Redis);

    #[async_trait::async_trait]
    impl Backend for Redis {
        async fn instance(&self) -> Result<Arc<dyn Store>, BoxError> {
            let store = self.0.instance().await?;
            Ok(Arc::new(Batched::new(store, BatchConfig::default())))
        }

        fn keeps_pending_letters(&self) -> bool {
            true
        }
    }

    backstop_testkit::store_contract_tests!(Redis(super::Redis::new()));
}
