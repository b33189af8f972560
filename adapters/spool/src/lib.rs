//! Reliable publishing for backstop.
#![warn(missing_docs)]
#![forbid(unsafe_code)]
