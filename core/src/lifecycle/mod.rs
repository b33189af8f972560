//! Per-message lifecycle events: one `tracing` event at `debug` level for
//! each step a message takes through the stack, on the target
//! [`TARGET`] (`backstop::lifecycle`), so they can be switched on alone:
//!
//! ```text
//! RUST_LOG=info,backstop::lifecycle=debug
//! ```
//!
//! Each event's message is its name; every event carries the message's
//! identity and position:
//!
//! | field | type | what |
//! |---|---|---|
//! | `message_id` | text | [`Meta::message_id`](crate::message::Meta#structfield.message_id) |
//! | `source` | text | the queue or topic the message was consumed from ([`Meta::source`](crate::message::Meta#structfield.source); for a copy consumed from a Kafka retry topic, that topic) |
//! | `partition` | i32 | the Kafka partition; absent elsewhere |
//! | `offset` | i64 | the Kafka offset; absent elsewhere |
//! | `delivery_tag` | u64 | the AMQP (or in-memory) delivery tag; absent on Kafka |
//!
//! and, by event:
//!
//! | event | when | more fields |
//! |---|---|---|
//! | `received` | the ack layer takes the delivery | `attempt` (as delivered, not yet confirmed) |
//! | `decoded` | the payload was decoded (or failed to) | `attempt`; on failure `kind` (`decode`, `too_large`) and `error` |
//! | `claimed` | the idempotency layer holds the key's lease | `attempt` (the store's count trusted over the header) |
//! | `duplicate` | the key was completed or dead-lettered before | |
//! | `attempt_started` | the handler is about to run | `attempt` |
//! | `attempt_failed` | the handler returned an error | `attempt`, `kind`, `transient`, `error` |
//! | `deferred` | a confirmed retry copy went to the delay queue or retry topic | `attempt` (the copy's) |
//! | `dead_lettered` | the broker confirmed the dead letter | `attempt` (the last one run), `kind` |
//! | `acked` | the delivery was acked | `outcome` (`handled`, `dead_lettered`, `deferred`, `duplicate`, `discarded`) |
//! | `nacked` | the delivery was nacked with requeue | `error` |
//! | `postponed` | a copy went to the delay queue, then the delivery was acked | `error` |
//!
//! `kind` is an [`ErrorKind`] wire name (the kind a dead letter would
//! carry; a plain transient error is `exhausted`), or `unavailable` for
//! [`HandlerError::Unavailable`] (no attempt spent); `transient` is true
//! for an error of the retried kind (whether or not attempts remain). A
//! settlement the broker refused emits nothing of its own: the runner logs
//! it. `claimed` and `duplicate` come only with an idempotency store and a
//! key; a body that does not decode still has its attempt, which fails as
//! `decode` without running the handler.
//!
//! A message handled at once, with a store:
//!
//! ```text
//! received attempt=1 → decoded attempt=1 → claimed attempt=1 → attempt_started attempt=1 → acked outcome=handled
//! ```
//!
//! and one that fails once, transiently: `… attempt_started attempt=1 →
//! attempt_failed attempt=1 kind=exhausted transient=true →
//! attempt_started attempt=2 → acked outcome=handled`.
//!
//! The events come from the functions the stack's pipeline and the tower
//! layers share ([`ack`](crate::ack), [`Request::decode`](crate::request::Request::decode),
//! [`idempotency`](crate::idempotency), [`retry`](crate::retry),
//! [`dead_letter`](crate::dead_letter)), so both emit the same sequence.
//! Disabled by level (no subscriber, or one at `info`), each costs a
//! check of the global level and nothing else: the steps of a handled
//! message are within the instruction bench's noise (`cargo bench -p
//! backstop --bench instr`; its `BENCH-INSTR-LIFECYCLE` line runs
//! `stack_memory_store` with an `info` fmt subscriber). What that line's
//! difference over `stack_memory_store` shows is the
//! [`metrics`](crate::metrics) span `backstop.message`, which is at
//! `info`.

use tracing::Level;
use tracing::level_filters::{LevelFilter, STATIC_MAX_LEVEL};

use crate::error::{Error, ErrorKind, HandlerError};
use crate::message::{Message, Meta};
use crate::outcome::Outcome;

/// The target of every lifecycle event.
pub const TARGET: &str = "backstop::lifecycle";

/// One lifecycle event named `$name` about `$meta`, with the identity
/// fields and any more given.
macro_rules! event {
    ($meta:expr, $name:literal $(, $($field:tt)+)?) => {{
        let meta: &Meta = $meta;
        tracing::debug!(
            target: TARGET,
            message_id = %meta.message_id,
            source = %meta.source,
            partition = meta.partition,
            offset = meta.offset,
            delivery_tag = meta.delivery_tag,
            $($($field)+ ,)?
            $name
        )
    }};
}

/// True when a debug event can be enabled at all: the one check a
/// message pays per event while they are off. (The steps every message
/// takes check it inline and emit from a cold function, so the check is
/// all they cost.)
#[inline(always)]
fn on() -> bool {
    STATIC_MAX_LEVEL >= Level::DEBUG && LevelFilter::current() >= Level::DEBUG
}

/// Emits `received`; true when lifecycle events may be on, so the
/// settlement keeps the message to name in its event.
#[inline]
pub(crate) fn received(meta: &Meta) -> bool {
    let on = on();
    if on {
        received_event(meta);
    }
    on
}

#[cold]
#[inline(never)]
fn received_event(meta: &Meta) {
    event!(meta, "received", attempt = meta.attempt);
}

/// Emits `decoded`, with the decoding failure if there was one.
#[inline]
pub(crate) fn decoded(meta: &Meta, attempt: u32, failure: Option<&crate::payload::DecodeError>) {
    if on() {
        decoded_event(meta, attempt, failure);
    }
}

#[cold]
#[inline(never)]
fn decoded_event(meta: &Meta, attempt: u32, failure: Option<&crate::payload::DecodeError>) {
    match failure {
        None => event!(meta, "decoded", attempt),
        Some(error) => {
            let kind = match error {
                crate::payload::DecodeError::TooLarge { .. } => ErrorKind::TooLarge,
                _ => ErrorKind::Decode,
            };
            event!(meta, "decoded", attempt, kind = kind.as_str(), error = %error);
        }
    }
}

/// Emits `claimed` (the lease is held; `attempt` is the store's).
#[inline]
pub(crate) fn claimed(meta: &Meta, attempt: u32) {
    if on() {
        claimed_event(meta, attempt);
    }
}

#[cold]
#[inline(never)]
fn claimed_event(meta: &Meta, attempt: u32) {
    event!(meta, "claimed", attempt);
}

/// Emits `attempt_started`.
#[inline]
pub(crate) fn attempt_started(meta: &Meta, attempt: u32) {
    if on() {
        attempt_started_event(meta, attempt);
    }
}

#[cold]
#[inline(never)]
fn attempt_started_event(meta: &Meta, attempt: u32) {
    event!(meta, "attempt_started", attempt);
}

/// Emits `duplicate`.
pub(crate) fn duplicate(meta: &Meta) {
    event!(meta, "duplicate");
}

/// Emits `attempt_failed`.
pub(crate) fn attempt_failed(meta: &Meta, attempt: u32, error: &HandlerError) {
    let kind = match error {
        HandlerError::Unavailable { .. } => "unavailable",
        other => other.kind().as_str(),
    };
    event!(
        meta,
        "attempt_failed",
        attempt,
        kind,
        transient = error.is_transient(),
        error = %error
    );
}

/// Emits `deferred` (`attempt` is the copy's).
pub(crate) fn deferred(meta: &Meta, attempt: u32) {
    event!(meta, "deferred", attempt);
}

/// Emits `dead_lettered`.
pub(crate) fn dead_lettered(meta: &Meta, attempt: u32, kind: ErrorKind) {
    event!(meta, "dead_lettered", attempt, kind = kind.as_str());
}

/// Emits `acked`, for a message the settlement kept (see [`received`]).
#[inline]
pub(crate) fn acked(message: Option<&Message>, outcome: &Outcome) {
    if let Some(message) = message {
        acked_event(&message.meta, outcome);
    }
}

#[cold]
#[inline(never)]
fn acked_event(meta: &Meta, outcome: &Outcome) {
    event!(meta, "acked", outcome = outcome.label());
}

/// Emits `nacked`, for a message the settlement kept.
pub(crate) fn nacked(message: Option<&Message>, error: &Error) {
    if let Some(message) = message {
        event!(&message.meta, "nacked", error = %error);
    }
}

/// Emits `postponed`, for a message the settlement kept.
pub(crate) fn postponed(message: Option<&Message>, error: &Error) {
    if let Some(message) = message {
        event!(&message.meta, "postponed", error = %error);
    }
}

#[cfg(test)]
mod tests;
