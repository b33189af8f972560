//! [`Handle`]: a metric's handle, registered with the recorder once, on
//! first use, instead of looked up by key on every record.
//!
//! A recorder finds a metric by its key (name and labels) on each
//! `register_*`; a handle skips that lookup. As with any `metrics` handle,
//! it stays bound to the recorder in scope when it was registered: install
//! the recorder before the first message is consumed.

use std::sync::OnceLock;

use metrics::{Counter, Gauge, Histogram, Key, Recorder};

use super::METADATA;

/// A metric's key, and its handle once registered; see the [module docs](self).
pub(crate) struct Handle<H> {
    key: Key,
    handle: OnceLock<H>,
}

/// How a handle of one kind is registered.
pub(crate) trait Register: Sized {
    fn register(recorder: &dyn Recorder, key: &Key) -> Self;
}

impl Register for Counter {
    fn register(recorder: &dyn Recorder, key: &Key) -> Self {
        recorder.register_counter(key, &METADATA)
    }
}

impl Register for Gauge {
    fn register(recorder: &dyn Recorder, key: &Key) -> Self {
        recorder.register_gauge(key, &METADATA)
    }
}

impl Register for Histogram {
    fn register(recorder: &dyn Recorder, key: &Key) -> Self {
        recorder.register_histogram(key, &METADATA)
    }
}

impl<H: Register> Handle<H> {
    /// The handle of `key`, registered on first use.
    pub(crate) fn new(key: Key) -> Self {
        Handle {
            key,
            handle: OnceLock::new(),
        }
    }

    /// The metric's key.
    #[cfg(test)]
    pub(crate) fn key(&self) -> &Key {
        &self.key
    }

    /// The handle, registered with the recorder in scope on the first call.
    #[inline]
    pub(crate) fn get(&self) -> &H {
        self.handle
            .get_or_init(|| metrics::with_recorder(|recorder| H::register(recorder, &self.key)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    #[test]
    fn a_handle_records_to_the_recorder_of_its_first_use() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let counter: Handle<Counter> = Handle::new(Key::from_name("backstop_test_total"));
        metrics::with_local_recorder(&recorder, || {
            counter.get().increment(2);
            counter.get().increment(3);
        });
        let values: Vec<_> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _, _, value)| (key.key().name().to_owned(), value))
            .collect();
        assert_eq!(
            values,
            [("backstop_test_total".to_owned(), DebugValue::Counter(5))]
        );
    }
}
