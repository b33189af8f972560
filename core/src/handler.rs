//! The user's handler: [`Handle`], [`handler_fn`], and the innermost service.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use futures::future::BoxFuture;

use crate::context::Context;
use crate::error::{ErrorKind, HandlerError};
use crate::payload::DecodeError;
use crate::payload::Payload;
use crate::request::Request;

/// A message handler: runs once per attempt with the decoded payload.
///
/// ```
/// use backstop::{Context, Handle, HandlerError};
///
/// struct Greeter;
///
/// impl Handle<String> for Greeter {
///     type Error = HandlerError;
///     async fn handle(&self, name: String, _ctx: Context) -> Result<(), HandlerError> {
///         if name.is_empty() {
///             return Err(HandlerError::permanent("empty name"));
///         }
///         Ok(())
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    note = "implement `Handle<{T}>` for your struct, or wrap an `async fn(T, Context) -> Result<(), E>` in `backstop::handler_fn`"
)]
pub trait Handle<T>: Send + Sync + 'static {
    /// The handler's error; converted into a [`HandlerError`] verdict.
    type Error: Into<HandlerError>;

    /// Handles one message.
    fn handle(
        &self,
        message: T,
        ctx: Context,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// A handler made from an `async fn(T, Context) -> Result<(), E>`.
pub struct HandlerFn<F> {
    f: F,
}

impl<F> std::fmt::Debug for HandlerFn<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandlerFn").finish_non_exhaustive()
    }
}

/// Turns an `async fn(T, Context) -> Result<(), E>` into a [`Handle`].
///
/// ```
/// use backstop::{handler_fn, Context, HandlerError};
///
/// async fn log_it(text: String, ctx: Context) -> Result<(), HandlerError> {
///     println!("{} says {text}", ctx.message_id());
///     Ok(())
/// }
/// let handler = handler_fn(log_it);
/// # let _ = handler;
/// ```
pub fn handler_fn<F>(f: F) -> HandlerFn<F> {
    HandlerFn { f }
}

impl<T, F, Fut, E> Handle<T> for HandlerFn<F>
where
    F: Fn(T, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send,
    E: Into<HandlerError>,
{
    type Error = E;

    fn handle(&self, message: T, ctx: Context) -> impl Future<Output = Result<(), E>> + Send {
        (self.f)(message, ctx)
    }
}

/// A shared handler handles what it handles: one value serving several
/// payload types (the routes of a [`Router`](crate::router::Router)) or
/// several stacks.
impl<T, H: Handle<T>> Handle<T> for Arc<H> {
    type Error = H::Error;

    fn handle(
        &self,
        message: T,
        ctx: Context,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        (**self).handle(message, ctx)
    }
}

/// The innermost service: runs the handler on a [`Request`].
///
/// A payload that did not decode never reaches the handler: it fails
/// permanently with kind `decode` (or `too_large`).
pub struct HandlerService<H, T> {
    handler: Arc<H>,
    _payload: PhantomData<fn(T)>,
}

impl<H, T> HandlerService<H, T> {
    /// Wraps a handler.
    pub fn new(handler: H) -> Self {
        HandlerService {
            handler: Arc::new(handler),
            _payload: PhantomData,
        }
    }
}

impl<H, T> Clone for HandlerService<H, T> {
    fn clone(&self) -> Self {
        HandlerService {
            handler: Arc::clone(&self.handler),
            _payload: PhantomData,
        }
    }
}

impl<H, T> std::fmt::Debug for HandlerService<H, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandlerService").finish_non_exhaustive()
    }
}

/// The permanent error a payload that did not decode becomes.
pub fn decode_failure(error: &DecodeError) -> HandlerError {
    let kind = match error {
        DecodeError::TooLarge { .. } => ErrorKind::TooLarge,
        DecodeError::Invalid { .. } => ErrorKind::Decode,
    };
    HandlerError::permanent_with(kind, error.clone())
}

impl<H, T> tower::Service<Request<T>> for HandlerService<H, T>
where
    H: Handle<T>,
    T: Payload,
{
    type Response = ();
    type Error = HandlerError;
    type Future = BoxFuture<'static, Result<(), HandlerError>>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<T>) -> Self::Future {
        let handler = Arc::clone(&self.handler);
        Box::pin(async move { run_owned(&*handler, request).await })
    }
}

/// One attempt: `handler` with the request's payload, moved to it (see
/// [`Request::payload_for_attempt`]; a payload that did not decode fails
/// for good) and its context.
pub(crate) async fn run<H, T>(handler: &H, request: &mut Request<T>) -> Result<(), HandlerError>
where
    H: Handle<T>,
    T: Payload,
{
    let context = request.context();
    let payload = request
        .payload_for_attempt()
        .map_err(|e| decode_failure(&e))?;
    handler.handle(payload, context).await.map_err(Into::into)
}

/// [`run`] on a request the caller gives away (a tower service's).
async fn run_owned<H, T>(handler: &H, mut request: Request<T>) -> Result<(), HandlerError>
where
    H: Handle<T>,
    T: Payload,
{
    run(handler, &mut request).await
}
