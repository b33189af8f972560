//! The broker's size limits, checked before a publish is sent.
//!
//! RabbitMQ answers a message it cannot take by closing the channel
//! (a body over `max_message_size`: `PRECONDITION_FAILED`) or the whole
//! connection (a content header, where the properties and headers travel,
//! larger than the negotiated `frame_max`: `FRAME_ERROR`), taking every
//! other publish on it along. [`check`] fails such a message as
//! [`PublishError::TooLarge`] before anything is sent.

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame, WriteContext, gen_frame};
use backstop::publish::PublishError;
use lapin::BasicProperties;

/// RabbitMQ 3.x's default `max_message_size`: 128 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 128 * 1024 * 1024;

/// The AMQP class id of `basic`, whose content header carries the properties.
const BASIC_CLASS: u16 = 60;

/// The encoded size of the content-header frame of a `body_len`-byte
/// message with `properties`; `None` if it cannot be encoded at all.
pub(crate) fn header_frame_size(properties: &BasicProperties, body_len: usize) -> Option<usize> {
    let frame = AMQPFrame::Header(
        1,
        AMQPContentHeader {
            class_id: BASIC_CLASS,
            body_size: u64::try_from(body_len).ok()?,
            properties: properties.clone(),
        },
    );
    let written = gen_frame(&frame)(WriteContext::from(Vec::new())).ok()?;
    let (_, size) = written.into_inner();
    usize::try_from(size).ok()
}

/// `Err(TooLarge)` when the body is over `max_body` or the content header
/// does not fit in one frame of `frame_max` bytes (0: no limit).
pub(crate) fn check(
    properties: &BasicProperties,
    body_len: usize,
    max_body: usize,
    frame_max: u32,
) -> Result<(), PublishError> {
    if body_len > max_body {
        return Err(PublishError::TooLarge { size: body_len });
    }
    if frame_max == 0 {
        return Ok(());
    }
    match header_frame_size(properties, body_len) {
        Some(size) if size <= frame_max as usize => Ok(()),
        Some(size) => Err(PublishError::TooLarge {
            size: body_len.saturating_add(size),
        }),
        None => Err(PublishError::Invalid(
            "the message's properties cannot be encoded as an AMQP content header".to_owned(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use lapin::types::{AMQPValue, FieldTable, LongString};

    use super::*;

    fn with_header_of(len: usize) -> BasicProperties {
        let mut table = FieldTable::default();
        table.insert(
            "big".into(),
            AMQPValue::LongString(LongString::from(vec![b'x'; len])),
        );
        BasicProperties::default().with_headers(table)
    }

    #[test]
    fn a_body_over_the_maximum_is_too_large() {
        let p = BasicProperties::default();
        assert!(check(&p, 10, 10, 131_072).is_ok());
        assert!(matches!(
            check(&p, 11, 10, 131_072),
            Err(PublishError::TooLarge { size: 11 })
        ));
    }

    #[test]
    fn headers_that_do_not_fit_one_frame_are_too_large() {
        let small = with_header_of(1000);
        let size = header_frame_size(&small, 5).unwrap();
        assert!(size > 1000 && size < 1100, "{size}");
        assert!(check(&small, 5, usize::MAX, 131_072).is_ok());
        assert!(matches!(
            check(&with_header_of(200_000), 5, usize::MAX, 131_072),
            Err(PublishError::TooLarge { .. })
        ));
        assert!(check(&with_header_of(200_000), 5, usize::MAX, 0).is_ok());
    }
}
