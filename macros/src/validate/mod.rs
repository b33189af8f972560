//! Validation: the parsed attributes ([`crate::attr`]) checked for meaning
//! and turned into the models that [`crate::codegen`] writes out.

pub(crate) mod classify;
pub(crate) mod handler;
mod key;
pub(crate) mod payload;
