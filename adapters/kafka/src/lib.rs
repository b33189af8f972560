//! Apache Kafka adapter for backstop, on rdkafka.
