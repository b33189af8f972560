//! [`Link`]: whether the consumer is joined to its group and reaches the
//! cluster, told to the runner's [`Readiness`] once it is attached.

use std::sync::Mutex;

use backstop::runner::Readiness;

/// The consumer's connection state, shared by the poll thread, the
/// rebalance callbacks and the source.
#[derive(Debug)]
pub(crate) struct Link {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    status: Result<(), String>,
    readiness: Option<Readiness>,
    /// The consumer joined its group once (a reachable cluster is ready
    /// only after that).
    joined: bool,
}

impl Link {
    /// Not joined yet.
    pub(crate) fn new(group: &str) -> Self {
        Link {
            state: Mutex::new(State {
                status: Err(format!("joining the consumer group {group:?}")),
                readiness: None,
                joined: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reports to `readiness` from now on (the current state at once).
    pub(crate) fn attach(&self, readiness: Readiness) {
        let mut state = self.lock();
        tell(&readiness, &state.status);
        state.readiness = Some(readiness);
    }

    /// Joined: an assignment, even an empty one.
    pub(crate) fn joined(&self) {
        self.lock().joined = true;
        self.set(Ok(()));
    }

    /// The cluster answers again (messages flow, or a metadata request
    /// succeeded): up, if the consumer had joined its group.
    pub(crate) fn up(&self) {
        if self.lock().joined {
            self.set(Ok(()));
        }
    }

    /// Lost the cluster, because `why`.
    pub(crate) fn down(&self, why: String) {
        self.set(Err(why));
    }

    fn set(&self, status: Result<(), String>) {
        let mut state = self.lock();
        if state.status == status {
            return;
        }
        if let Some(readiness) = &state.readiness {
            tell(readiness, &status);
        }
        state.status = status;
    }
}

fn tell(readiness: &Readiness, status: &Result<(), String>) {
    match status {
        Ok(()) => readiness.connected(),
        Err(why) => readiness.disconnected(why.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_the_link_from_attach_on() {
        let link = Link::new("g");
        let readiness = Readiness::default();
        link.attach(readiness.clone());
        assert_eq!(
            readiness.connection(),
            Err("joining the consumer group \"g\"".to_owned())
        );
        // Reachable is not joined.
        link.up();
        assert!(readiness.connection().is_err());
        link.joined();
        assert_eq!(readiness.connection(), Ok(()));
        link.down("all brokers down".to_owned());
        assert_eq!(readiness.connection(), Err("all brokers down".to_owned()));
        link.up();
        assert_eq!(readiness.connection(), Ok(()));
    }
}
