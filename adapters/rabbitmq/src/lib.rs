//! RabbitMQ adapter for backstop, on lapin.
