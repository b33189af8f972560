//! [`Watch`]: a front end's view into a running redrive or purge, one
//! [`Step`] at a time, and its stop flag.

/// One step of a redrive or purge, as it happens (see [`Watch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step<'a> {
    /// The walk starts over this many letters.
    Started {
        /// Letters the walk reads.
        letters: u64,
    },
    /// One letter was read (selected or not).
    Walked,
    /// A letter's redrive copy went out to `to` (RabbitMQ: the letter leaves
    /// the DLQ once the broker confirms the copy).
    Replayed {
        /// The message id.
        id: &'a str,
        /// Where its copy went.
        to: &'a str,
    },
    /// The loop guard refused a letter.
    Refused {
        /// The message id.
        id: &'a str,
    },
    /// A letter was purged.
    Purged {
        /// The message id.
        id: &'a str,
    },
}

/// A front end's view into a running redrive or purge: called with every
/// [`Step`], on the task that runs the action (keep it quick). The default
/// watches nothing.
///
/// It also carries a stop flag ([`Watch::with_stop`]): a redrive or purge
/// checks it between letters and ends early, cleanly, once it is set.
#[derive(Clone, Default)]
pub struct Watch(
    Option<std::sync::Arc<WatchFn>>,
    Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
);

/// What a [`Watch`] calls.
type WatchFn = dyn Fn(Step<'_>) + Send + Sync;

impl Watch {
    /// A watch that calls `f` with every step.
    pub fn new(f: impl Fn(Step<'_>) + Send + Sync + 'static) -> Self {
        Watch(Some(std::sync::Arc::new(f)), None)
    }

    /// This watch, and `stop`: once it is set, the action stops before its
    /// next letter (the letters in flight settled first).
    #[must_use]
    pub fn with_stop(self, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Self {
        Watch(self.0, Some(stop))
    }

    /// True once the action was asked to stop.
    pub fn stopped(&self) -> bool {
        self.1
            .as_ref()
            .is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// Reports `step`.
    pub fn see(&self, step: Step<'_>) {
        if let Some(f) = &self.0 {
            f(step);
        }
    }
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Watch(..)"
        } else {
            "Watch(none)"
        })
    }
}
