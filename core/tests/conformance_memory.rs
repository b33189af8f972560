//! The conformance scenarios on the in-memory broker.

backstop::conformance_tests!(backstop::memory::MemoryBroker::new());
