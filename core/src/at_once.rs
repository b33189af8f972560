//! A step's future that is answered at once on the common path and boxed
//! on the rare one: the caller's future stores a ready value or a box
//! pointer, never the rare path's state (see the stack's `pipeline`).

use std::future::{Future, Ready};

use futures::future::{BoxFuture, Either};

/// A value ready at once, or a boxed future of it.
pub(crate) type AtOnce<'a, T> = Either<Ready<T>, BoxFuture<'a, T>>;

/// `value`, at once.
pub(crate) fn now<'a, T>(value: T) -> AtOnce<'a, T> {
    Either::Left(std::future::ready(value))
}

/// `future`, boxed.
pub(crate) fn later<'a, T>(future: impl Future<Output = T> + Send + 'a) -> AtOnce<'a, T> {
    Either::Right(Box::pin(future))
}
