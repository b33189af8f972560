//! The layout marker: which key layout the keys under a prefix follow.
//!
//! The marker is the key `<prefix>#layout` (a keyspaced key never starts
//! with `#`: [`Keyspace`](backstop::idempotency::Keyspace) escapes it), with
//! the value `keyspaced` or `migrating <until>` (milliseconds of the Redis
//! clock). It has no expiry. Without a marker, the prefix is searched for
//! any key with `SCAN … MATCH <prefix>*` until the first one is found (a
//! complete search, not a sample: an empty prefix is scanned to its end).

use std::sync::LazyLock;
use std::time::{Duration, SystemTime};

use backstop::idempotency::layout::{self, KeyLayout, Layout, LayoutAction};
use redis::Script;

use crate::{RedisStore, RedisStoreError};

/// How many keys one `SCAN` step looks at.
const SCAN_COUNT: usize = 1000;

/// Writes the marker (`ARGV[1]` the value, or `ARGV[2]` a window in
/// milliseconds for a migration marker ending then) unless one exists;
/// returns the marker's value.
static MARK_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local found = redis.call('GET', KEYS[1])
if found then return found end
local value = ARGV[1]
if ARGV[2] ~= '' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  value = 'migrating ' .. string.format('%.0f', now + tonumber(ARGV[2]))
end
redis.call('SET', KEYS[1], value)
return value
",
    )
});

/// The marker key of `prefix`.
pub(crate) fn marker_key(prefix: &str) -> String {
    format!("{prefix}#layout")
}

/// `text` with the glob characters of `MATCH` escaped.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The layout a marker's value records.
fn parse(value: &str) -> Result<Layout, RedisStoreError> {
    let unexpected = || RedisStoreError::UnexpectedReply {
        op: "layout",
        reply: value.to_owned(),
    };
    match value.split_once(' ') {
        None if value == "keyspaced" => Ok(Layout::Keyspaced),
        Some(("migrating", ms)) => {
            let ms: u64 = ms.parse().map_err(|_| unexpected())?;
            Ok(Layout::Migrating {
                until: SystemTime::UNIX_EPOCH + Duration::from_millis(ms),
            })
        }
        _ => Err(unexpected()),
    }
}

impl RedisStore {
    /// Reads the marker, searches the prefix for keys if there is none, and
    /// decides with `choice` (see [`layout::decide`]); writes the marker
    /// when the new layout starts here.
    pub(crate) async fn open_layout(&self, choice: KeyLayout) -> Result<Layout, RedisStoreError> {
        let marker = marker_key(self.prefix());
        let found: Option<String> = self
            .bounded("layout", |mut connection| {
                let marker = marker.clone();
                async move {
                    redis::cmd("GET")
                        .arg(&marker)
                        .query_async(&mut connection)
                        .await
                }
            })
            .await?;
        let found = found.as_deref().map(parse).transpose()?;
        let holds_keys = found.is_none() && self.holds_keys(&marker).await?;
        let store = format!("the Redis store under prefix {:?}", self.prefix());
        let (value, window) = match layout::decide(choice, found, holds_keys, &store)? {
            LayoutAction::Use(layout) => return Ok(layout),
            LayoutAction::MarkKeyspaced => ("keyspaced".to_owned(), String::new()),
            LayoutAction::MarkMigrating(window) => {
                (String::new(), crate::store::millis(window).to_string())
            }
        };
        let mut invocation = MARK_SCRIPT.key(&marker);
        invocation.arg(value).arg(window);
        let written: String = self
            .bounded("layout", |mut connection| async move {
                invocation.invoke_async(&mut connection).await
            })
            .await?;
        let layout = parse(&written)?;
        tracing::info!(prefix = self.prefix(), ?layout, "idempotency key layout");
        Ok(layout)
    }

    /// True if a key other than `marker` lives under the prefix.
    async fn holds_keys(&self, marker: &str) -> Result<bool, RedisStoreError> {
        let pattern = format!("{}*", glob_escape(self.prefix()));
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = self
                .bounded("layout scan", |mut connection| {
                    let pattern = pattern.clone();
                    async move {
                        redis::cmd("SCAN")
                            .arg(cursor)
                            .arg("MATCH")
                            .arg(&pattern)
                            .arg("COUNT")
                            .arg(SCAN_COUNT)
                            .query_async(&mut connection)
                            .await
                    }
                })
                .await?;
            if keys.iter().any(|k| k != marker) {
                return Ok(true);
            }
            if next == 0 {
                return Ok(false);
            }
            cursor = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_parse_and_globs_are_escaped() {
        assert_eq!(parse("keyspaced").unwrap(), Layout::Keyspaced);
        assert_eq!(
            parse("migrating 1500").unwrap(),
            Layout::Migrating {
                until: SystemTime::UNIX_EPOCH + Duration::from_millis(1500)
            }
        );
        assert!(parse("global").is_err());
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
        assert_eq!(
            marker_key("backstop:idempotency:"),
            "backstop:idempotency:#layout"
        );
    }
}
