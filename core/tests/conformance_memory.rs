//! The conformance scenarios on the in-memory broker.

backstop_testkit::conformance_tests!(backstop::memory::MemoryBroker::new());
