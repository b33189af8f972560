//! Derive macros for backstop handlers.
