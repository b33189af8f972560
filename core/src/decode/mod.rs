//! Decoding, once, at the top of the stack: the payload becomes `T` and the
//! key is extracted before any other layer runs. A payload that does not
//! decode (or is too large) still travels inward and is dead-lettered with
//! kind `decode` (or `too_large`) without running the handler.

use std::marker::PhantomData;
use std::task::{Context, Poll};

use tower::Service;

use crate::delivery::Received;
use crate::payload::Payload;
use crate::request::Request;

mod layer;

pub use self::layer::DecodeLayer;

/// Turns a [`Received`] message into a [`Request<T>`].
pub struct Decode<S, T> {
    pub(super) inner: S,
    pub(super) max_payload: Option<usize>,
    pub(super) _payload: PhantomData<fn() -> T>,
}

impl<S: Clone, T> Clone for Decode<S, T> {
    fn clone(&self) -> Self {
        Decode {
            inner: self.inner.clone(),
            max_payload: self.max_payload,
            _payload: PhantomData,
        }
    }
}

impl<S, T> std::fmt::Debug for Decode<S, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decode")
            .field("max_payload", &self.max_payload)
            .finish_non_exhaustive()
    }
}

impl<S, T> Service<Received> for Decode<S, T>
where
    S: Service<Request<T>>,
    T: Payload,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, received: Received) -> Self::Future {
        self.inner.call(request(received, self.max_payload))
    }
}

/// The request of a received message: decoded once (bodies over
/// `max_payload` bytes fail as `too_large`), with the delivery's deadline;
/// shared by [`Decode`] and the stack's pipeline.
pub(crate) fn request<T: Payload>(received: Received, max_payload: Option<usize>) -> Request<T> {
    let mut request = Request::decode(received.message, received.cancel, max_payload);
    request.set_deadline(received.deadline);
    if let Some(transaction) = received.transaction {
        request.extensions.insert(transaction);
    }
    request
}

#[cfg(test)]
mod tests {
    use tokio_util::sync::CancellationToken;
    use tower::{Layer, ServiceExt, service_fn};

    use super::*;
    use crate::message::Message;
    use crate::payload::DecodeError;

    async fn decoded(
        body: &'static str,
        max: Option<usize>,
    ) -> Result<serde_json::Value, DecodeError> {
        let svc = DecodeLayer::<serde_json::Value>::new(max).layer(service_fn(
            |r: Request<serde_json::Value>| async move {
                Ok::<_, std::convert::Infallible>(r.payload().cloned().map_err(Clone::clone))
            },
        ));
        let received = Received {
            message: Message::new(body).into(),
            cancel: CancellationToken::new().into(),
            deadline: None,
            transaction: None,
        };
        svc.oneshot(received).await.unwrap()
    }

    #[test]
    fn a_delivery_the_adapter_could_not_convert_fails_as_decode() {
        let message = crate::inbound::guarded(
            || panic!("property out of range"),
            || Message::new(r#"{"a":1}"#),
        );
        let request = Request::<serde_json::Value>::decode(message, CancellationToken::new(), None);
        let Err(DecodeError::Invalid { reason, .. }) = request.payload() else {
            panic!("a valid body of an unconvertible delivery must not decode");
        };
        assert!(reason.contains("property out of range"), "{reason}");
    }

    #[tokio::test]
    async fn decodes_once_and_reports_bad_input() {
        assert_eq!(decoded(r#"{"a":1}"#, None).await.unwrap()["a"], 1);
        assert!(matches!(
            decoded("{oops", None).await,
            Err(DecodeError::Invalid { .. })
        ));
        assert_eq!(
            decoded(r#"{"a":1}"#, Some(3)).await,
            Err(DecodeError::TooLarge { size: 7, max: 3 })
        );
    }
}
