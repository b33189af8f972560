//! `backstop console`: a web page over the DLQ library ([`crate::dlq`]),
//! the CLI's second front end. It lists every DLQ of the configured
//! RabbitMQ vhosts and Kafka clusters, shows their letters from a local
//! index ([`index`], kept current by [`indexer`]), and redrives or purges
//! them through the library as resumable jobs ([`actions`]), each in an
//! audit log ([`store`]).
//!
//! Safety ([`auth`]): it listens on 127.0.0.1 unless told otherwise, and
//! refuses any other address without authentication; read-only mode; every
//! action needs the console's CSRF token and a same-site request; every
//! value is escaped by the templates ([`templates`]); no URL is shown with
//! its password.
//!
//! One concept a file: [`config`] (the TOML file), [`clusters`] (finding
//! the DLQs), [`index`] and [`indexer`], [`query`] (the filters), [`store`]
//! (jobs, audit), [`actions`] (preview, jobs, resume), [`auth`],
//! [`routes`] (pages), [`post`] (actions), [`body`] (a letter's body),
//! [`templates`], [`server`] (the router).

pub mod actions;
pub mod auth;
pub mod body;
pub mod clusters;
pub mod config;
pub mod error;
pub mod index;
pub mod indexer;
pub mod post;
pub mod query;
pub mod routes;
pub mod server;
pub mod state;
pub mod store;
pub mod templates;

use std::sync::Arc;

pub use self::config::ConsoleConfig;
pub use self::error::ConsoleError;
pub use self::state::Console;

/// `backstop console`.
#[derive(Debug, Clone, clap::Args)]
pub struct ConsoleArgs {
    /// The console's configuration (TOML: brokers, auth, state directory).
    #[arg(long, value_name = "FILE")]
    pub config: std::path::PathBuf,
    /// Where to listen (default 127.0.0.1:8080, or the file's `listen`);
    /// any address but loopback needs authentication.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Browse and export only: refuse every action.
    #[arg(long)]
    pub read_only: bool,
}

/// Loads the configuration, resumes interrupted jobs, starts the indexer
/// and serves until Ctrl-C.
pub async fn run(args: &ConsoleArgs) -> Result<(), ConsoleError> {
    let config = ConsoleConfig::load(&args.config, |k| std::env::var(k).ok())?;
    let addr = config.listen_addr(args.listen.as_deref())?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ConsoleError::Listen {
            addr: addr.to_string(),
            source,
        })?;
    let bound = listener.local_addr().map_or(addr, |a| a);
    let console = Arc::new(Console::new(config, args.read_only, bound)?);
    let resumed = actions::resume_all(&console)?;
    if console.config.auto_index {
        tokio::spawn(state::index_loop(Arc::clone(&console)));
    }
    eprintln!(
        "backstop console on http://{bound}/{}{}",
        if console.read_only {
            " (read-only)"
        } else {
            ""
        },
        if resumed > 0 {
            format!("; resumed {resumed} interrupted job(s)")
        } else {
            String::new()
        }
    );
    axum::serve(listener, server::router(console))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|source| ConsoleError::Listen {
            addr: bound.to_string(),
            source,
        })
}
