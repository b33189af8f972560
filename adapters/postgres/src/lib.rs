//! PostgreSQL idempotency store and transactional inbox for backstop.
