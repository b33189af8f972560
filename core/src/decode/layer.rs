//! [`DecodeLayer`]: applies [`Decode`].

use std::marker::PhantomData;

use tower::Layer;

use super::Decode;

/// Applies [`Decode`] for payload type `T`, refusing payloads over `max_payload` bytes.
pub struct DecodeLayer<T> {
    max_payload: Option<usize>,
    _payload: PhantomData<fn() -> T>,
}

impl<T> DecodeLayer<T> {
    /// Decodes into `T`; bodies over `max_payload` bytes fail as `too_large`.
    pub const fn new(max_payload: Option<usize>) -> Self {
        DecodeLayer {
            max_payload,
            _payload: PhantomData,
        }
    }
}

impl<T> Clone for DecodeLayer<T> {
    fn clone(&self) -> Self {
        Self::new(self.max_payload)
    }
}

impl<T> std::fmt::Debug for DecodeLayer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecodeLayer")
            .field("max_payload", &self.max_payload)
            .finish()
    }
}

impl<S, T> Layer<S> for DecodeLayer<T> {
    type Service = Decode<S, T>;

    fn layer(&self, inner: S) -> Self::Service {
        Decode {
            inner,
            max_payload: self.max_payload,
            _payload: PhantomData,
        }
    }
}
