//! The depth poller: how many messages wait in a source's queue, its DLQ
//! and its delay queues, read on an interval.
//!
//! One task per [`RabbitSource`](crate::RabbitSource), on a channel of its
//! own on the broker handle's shared connection: a passive `queue.declare`
//! per queue answers its ready messages (`message_count`; the unacked ones
//! a consumer holds are not counted). It sets
//! `backstop_queue_depth{queue}`, `backstop_dlq_depth{dlq}` and
//! `backstop_retry_depth{tier}`, labelled `source` and `group` with the
//! queue's name. A queue that is missing or a broker that is away is
//! logged at debug and read again on the next round; the gauges keep their
//! last reading meanwhile. The task ends with its source.

use std::sync::Arc;
use std::time::Duration;

use backstop::metrics::{DLQ_DEPTH, QUEUE_DEPTH, RETRY_DEPTH, consumer_labels};
use lapin::Channel;
use lapin::options::QueueDeclareOptions;
use lapin::types::{FieldTable, ShortString};
use tokio::sync::watch;

use crate::connection::SharedConnection;

/// How often the depths are read unless the source says otherwise.
pub const DEFAULT_DEPTH_INTERVAL: Duration = Duration::from_secs(15);

/// One queue to read and the gauge its depth goes to.
struct Watched {
    queue: ShortString,
    gauge: metrics::Gauge,
}

/// The running depth poller of one source; it stops when dropped.
#[derive(Debug)]
pub(crate) struct DepthPoller {
    every: watch::Sender<Duration>,
    task: tokio::task::JoinHandle<()>,
}

impl DepthPoller {
    /// Starts reading the depths of `queue`, `dlq` and `tiers` (tier name,
    /// delay queue) every `every`, the first time at once.
    pub(crate) fn start(
        shared: Arc<SharedConnection>,
        queue: &str,
        dlq: &str,
        tiers: &[(String, String)],
        every: Duration,
    ) -> Self {
        backstop::metrics::describe();
        let gauge = |name: &'static str, label: &'static str, value: &str| {
            metrics::gauge!(name, consumer_labels(queue, queue, &[(label, value)]))
        };
        let mut watched = Vec::with_capacity(2 + tiers.len());
        let mut watch = |name: &str, gauge: metrics::Gauge| {
            if let Ok(queue) = ShortString::try_new(name) {
                watched.push(Watched { queue, gauge });
            }
        };
        watch(queue, gauge(QUEUE_DEPTH, "queue", queue));
        watch(dlq, gauge(DLQ_DEPTH, "dlq", dlq));
        for (tier, delay_queue) in tiers {
            watch(delay_queue, gauge(RETRY_DEPTH, "tier", tier));
        }
        let (tx, rx) = watch::channel(every);
        let task = tokio::spawn(run(shared, watched, rx));
        DepthPoller { every: tx, task }
    }

    /// Reads the depths every `every` from now on.
    pub(crate) fn set_interval(&self, every: Duration) {
        self.every.send_replace(every);
    }
}

impl Drop for DepthPoller {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(
    shared: Arc<SharedConnection>,
    watched: Vec<Watched>,
    mut every: watch::Receiver<Duration>,
) {
    let mut channel: Option<Channel> = None;
    loop {
        for w in &watched {
            match read(&shared, &mut channel, &w.queue).await {
                Some(count) => w.gauge.set(f64::from(count)),
                None => channel = None,
            }
        }
        let wait = *every.borrow_and_update();
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            changed = every.changed() => if changed.is_err() { return },
        }
    }
}

/// The ready messages of `queue`, or `None` after a failure (the channel
/// is closed by then: a missing queue closes it).
async fn read(
    shared: &SharedConnection,
    channel: &mut Option<Channel>,
    queue: &ShortString,
) -> Option<u32> {
    let open = match channel.take() {
        Some(open) if open.status().connected() => open,
        _ => match shared.channel().await {
            Ok(open) => open,
            Err(error) => {
                tracing::debug!(%error, "depth poller: no channel");
                return None;
            }
        },
    };
    let declared = ready_count(&open, queue.clone()).await;
    match declared {
        Ok(count) => {
            *channel = Some(open);
            Some(count)
        }
        Err(error) => {
            tracing::debug!(%error, queue = %queue, "depth poller: reading the depth failed");
            None
        }
    }
}

/// The ready messages of `queue` by a passive declare on `channel` (a
/// missing queue closes the channel).
pub(crate) async fn ready_count(channel: &Channel, queue: ShortString) -> lapin::Result<u32> {
    let options = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let declared = channel
        .queue_declare(queue, options, FieldTable::default())
        .await?;
    Ok(declared.message_count())
}
