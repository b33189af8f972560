//! Redis idempotency store for backstop.
