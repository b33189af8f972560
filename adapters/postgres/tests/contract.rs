//! The store contract on PostgreSQL (`BACKSTOP_PG_URL`).

mod common;

use std::sync::Arc;
use std::time::Duration;

use backstop::error::BoxError;
use backstop::idempotency::Store;
use backstop_postgres::{PgConfig, PostgresStore};
use backstop_testkit::store_contract::{Backend, TTL};

/// The contract's keys are unique per scenario run, so every run shares one
/// table. It is named for the schema version: a test run of a release at
/// another version sharing the database never finds it migrated past it.
const TABLE: &str = "backstop_test_contract_v3";

/// Every instance is a new pool on the same table.
struct Postgres;

#[async_trait::async_trait]
impl Backend for Postgres {
    async fn instance(&self) -> Result<Arc<dyn Store>, BoxError> {
        // Debug builds spend ~90 ms of CPU per SCRAM login: few connections, patient timeouts.
        let pool = PgConfig::new(common::url())
            .max_connections(4)
            .connect_timeout(Duration::from_secs(10))
            .pool()?;
        let store = PostgresStore::new(pool).with_table(TABLE)?.ttl(TTL);
        store.migrate().await?;
        Ok(Arc::new(store))
    }

    fn keeps_pending_letters(&self) -> bool {
        true
    }
}

backstop_testkit::store_contract_tests!(Postgres);

/// The same contract through the stack's batcher: its answers are the
/// store's own.
mod batched {
    use std::sync::Arc;

    use backstop::error::BoxError;
    use backstop::idempotency::Store;
    use backstop::idempotency::{BatchConfig, Batched};
    use backstop_testkit::store_contract::Backend;

    struct Postgres;

    #[async_trait::async_trait]
    impl Backend for Postgres {
        async fn instance(&self) -> Result<Arc<dyn Store>, BoxError> {
            let store = super::Postgres.instance().await?;
            Ok(Arc::new(Batched::new(store, BatchConfig::default())))
        }

        fn keeps_pending_letters(&self) -> bool {
            true
        }
    }

    backstop_testkit::store_contract_tests!(Postgres);
}
