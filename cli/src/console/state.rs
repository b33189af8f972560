//! [`Console`]: what every request shares: the configuration, the DLQs
//! found with their indexes, the job store and the CSRF token.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::clusters::{DlqRef, Found, discover};
use super::config::ConsoleConfig;
use super::error::ConsoleError;
use super::index::Index;
use super::store::Store;

/// Where a DLQ's index stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Indexing {
    /// Nothing runs.
    Idle,
    /// A build or refresh runs.
    Running,
    /// The last one failed with this message.
    Failed(String),
}

/// One DLQ: its index and the lock that keeps broker walks one at a time.
#[derive(Debug)]
pub struct DlqState {
    /// The DLQ.
    pub at: DlqRef,
    index: Arc<Index>,
    /// Held by every walk of the broker (an action, a RabbitMQ index
    /// walk): two walks of one RabbitMQ queue at once would interfere.
    pub lock: tokio::sync::Mutex<()>,
    indexing: Mutex<Indexing>,
    seen: Arc<AtomicU64>,
}

impl DlqState {
    /// Its index.
    pub fn index(&self) -> Arc<Index> {
        Arc::clone(&self.index)
    }

    /// Letters read by the current or last index build.
    pub fn seen(&self) -> u64 {
        self.seen.load(Ordering::Relaxed)
    }

    pub(crate) fn seen_counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.seen)
    }

    /// Where its index stands.
    pub fn indexing(&self) -> Indexing {
        self.indexing
            .lock()
            .map(|i| i.clone())
            .unwrap_or(Indexing::Idle)
    }

    /// Marks the start of an index run; false when one runs already.
    pub fn start_indexing(&self) -> bool {
        let Ok(mut i) = self.indexing.lock() else {
            return false;
        };
        if *i == Indexing::Running {
            return false;
        }
        *i = Indexing::Running;
        self.seen.store(0, Ordering::Relaxed);
        true
    }

    /// Marks the end of an index run.
    pub fn end_indexing(&self, result: Result<(), ConsoleError>) {
        if let Ok(mut i) = self.indexing.lock() {
            *i = match result {
                Ok(()) => Indexing::Idle,
                Err(e) => Indexing::Failed(crate::redact::redact_all(&e.to_string())),
            };
        }
    }
}

/// The console's shared state.
#[derive(Debug)]
pub struct Console {
    /// The configuration.
    pub config: ConsoleConfig,
    /// Jobs, the audit log and redrive counts.
    pub store: Store,
    /// The token every action's form carries (see [`super::auth`]).
    pub csrf: String,
    /// No action allowed.
    pub read_only: bool,
    /// The `Host` headers requests may carry, lowercase (see
    /// [`super::auth::host_allowed`]).
    pub hosts: Vec<String>,
    /// The stop flags of the jobs this process runs, by job number.
    pub(crate) stops: Mutex<HashMap<i64, Arc<std::sync::atomic::AtomicBool>>>,
    dlqs: Mutex<HashMap<String, Arc<DlqState>>>,
    index_dir: PathBuf,
}

/// A file name for `key` (`<cluster>/<name>`): safe characters kept,
/// others as `_` plus their code, so two names never share a file.
fn file_name(key: &str) -> String {
    let mut out = String::new();
    for c in key.chars() {
        if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
            out.push(c);
        } else {
            out.push_str(&format!("_{:x}", u32::from(c)));
        }
    }
    out
}

/// Creates `dir` (and its parents) readable by this user only (mode 0700
/// on Unix), and makes an existing one so.
fn private_dir(dir: &std::path::Path) -> Result<(), ConsoleError> {
    let failed = |e: std::io::Error| ConsoleError::State {
        path: dir.display().to_string(),
        reason: e.to_string(),
    };
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
        builder.mode(0o700).create(dir).map_err(failed)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(failed)
    }
    #[cfg(not(unix))]
    builder.create(dir).map_err(failed)
}

impl Console {
    /// The console of `config` listening on `listen`, its state directory
    /// created (mode 0700: the indexes hold letter bodies).
    pub fn new(
        config: ConsoleConfig,
        read_only: bool,
        listen: std::net::SocketAddr,
    ) -> Result<Self, ConsoleError> {
        let dir = config.state_dir();
        let index_dir = dir.join("index");
        private_dir(&dir)?;
        private_dir(&index_dir)?;
        let store = Store::open(&dir.join("console.sqlite"))?;
        let hosts = super::auth::allowed_hosts(&config.auth, listen);
        Ok(Console {
            read_only: read_only || config.read_only,
            config,
            store,
            csrf: hex::encode(rand::random::<[u8; 32]>()),
            hosts,
            stops: Mutex::new(HashMap::new()),
            dlqs: Mutex::new(HashMap::new()),
            index_dir,
        })
    }

    fn state_of(&self, at: &DlqRef) -> Result<Arc<DlqState>, ConsoleError> {
        let key = at.key();
        let mut dlqs = self.dlqs.lock().map_err(|_| ConsoleError::State {
            path: key.clone(),
            reason: "a request panicked".into(),
        })?;
        if let Some(s) = dlqs.get(&key) {
            return Ok(Arc::clone(s));
        }
        let path = self.index_dir.join(format!("{}.sqlite", file_name(&key)));
        let state = Arc::new(DlqState {
            at: at.clone(),
            index: Arc::new(Index::open(&path)?),
            lock: tokio::sync::Mutex::new(()),
            indexing: Mutex::new(Indexing::Idle),
            seen: Arc::new(AtomicU64::new(0)),
        });
        dlqs.insert(key, Arc::clone(&state));
        Ok(state)
    }

    /// Every DLQ of the configured brokers, with its state, and the
    /// brokers that failed.
    pub async fn discover(&self) -> (Vec<(Found, Arc<DlqState>)>, Vec<(String, String)>) {
        let d = discover(&self.config).await;
        let mut out = Vec::new();
        let mut errors = d.errors;
        for f in d.found {
            match self.state_of(&f.at) {
                Ok(s) => out.push((f, s)),
                Err(e) => errors.push((f.at.key(), e.to_string())),
            }
        }
        (out, errors)
    }

    /// The DLQ `name` of the broker `cluster`, if the console manages it.
    pub async fn dlq(&self, cluster: &str, name: &str) -> Result<Arc<DlqState>, ConsoleError> {
        let key = format!("{cluster}/{name}");
        if let Some(s) = self.dlqs.lock().ok().and_then(|d| d.get(&key).cloned()) {
            return Ok(s);
        }
        let (found, _) = self.discover().await;
        found
            .into_iter()
            .find(|(f, _)| f.at.cluster == cluster && f.at.name == name)
            .map(|(_, s)| s)
            .ok_or_else(|| ConsoleError::UnknownDlq {
                cluster: cluster.to_owned(),
                dlq: name.to_owned(),
            })
    }
}

/// Starts an index run of `dlq` in the background unless one runs.
pub fn spawn_index(dlq: Arc<DlqState>, rewalk: bool) {
    if !dlq.start_indexing() {
        return;
    }
    tokio::spawn(async move {
        let result = super::indexer::refresh(&dlq, rewalk).await;
        dlq.end_indexing(result);
    });
}

/// The background indexer: every `refresh_secs`, finds the DLQs and
/// brings each index up to date (Kafka: extended; RabbitMQ: built once,
/// never by a read-only console).
pub async fn index_loop(console: Arc<Console>) {
    let every = std::time::Duration::from_secs(console.config.refresh_secs.max(1));
    loop {
        let (found, _) = console.discover().await;
        for (_, dlq) in found {
            // Read-only: no RabbitMQ walk (it takes and puts back letters).
            if console.read_only && !dlq.at.is_kafka() {
                continue;
            }
            if dlq.start_indexing() {
                let result = super::indexer::refresh(&dlq, false).await;
                dlq.end_indexing(result);
            }
        }
        tokio::time::sleep(every).await;
    }
}
