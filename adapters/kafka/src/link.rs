//! [`Link`]: whether the consumer is joined to its group and reaches the
//! cluster, told to the runner's [`Readiness`] once it is attached.

use std::sync::Mutex;

use backstop::Readiness;

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
}

impl Link {
    /// Not joined yet.
    pub(crate) fn new(group: &str) -> Self {
        Link {
            state: Mutex::new(State {
                status: Err(format!("joining the consumer group {group:?}")),
                readiness: None,
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

    /// Joined (an assignment, even an empty one) or reaching the cluster again.
    pub(crate) fn up(&self) {
        self.set(Ok(()));
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
        link.up();
        let readiness = Readiness::default();
        link.attach(readiness.clone());
        // "starting" is the runner's part; the link's part is up.
        assert_eq!(readiness.get(), Err("starting".to_owned()));
        link.down("all brokers down".to_owned());
        assert_eq!(link.lock().status, Err("all brokers down".to_owned()));
        link.up();
        assert_eq!(link.lock().status, Ok(()));
    }
}
