//! [`Filter`]: which dead letters an action applies to.

use std::time::SystemTime;

use backstop::wire;

use crate::args::FilterArgs;
use crate::dlq::Letter;
use crate::error::CliError;

/// A parsed [`FilterArgs`]: every given condition must match.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    error: Option<String>,
    kind: Option<String>,
    source: Option<String>,
    key: Option<String>,
    /// Looked up per letter: a set, as a console job may carry many.
    ids: std::collections::HashSet<String>,
    since: Option<SystemTime>,
    until: Option<SystemTime>,
}

fn time(flag: &str, text: &Option<String>) -> Result<Option<SystemTime>, CliError> {
    text.as_deref()
        .map(|t| crate::time::parse_flag(flag, t))
        .transpose()
}

impl Filter {
    /// Parses the command line filters.
    pub fn parse(args: &FilterArgs) -> Result<Self, CliError> {
        Ok(Filter {
            error: args.error.as_ref().map(|e| e.to_lowercase()),
            kind: args.kind.clone(),
            source: args.source.clone(),
            key: args.key.clone(),
            ids: args.ids.iter().cloned().collect(),
            since: time("--since", &args.since)?,
            until: time("--until", &args.until)?,
        })
    }

    /// A filter selecting exactly one message id.
    pub fn id(id: &str) -> Self {
        Filter {
            ids: std::iter::once(id.to_owned()).collect(),
            ..Filter::default()
        }
    }

    /// True when `letter` matches every condition.
    pub fn matches(&self, letter: &Letter) -> bool {
        let m = &letter.message;
        if let Some(e) = &self.error
            && !m
                .header(wire::ERROR)
                .is_some_and(|t| t.to_lowercase().contains(e))
        {
            return false;
        }
        if let Some(k) = &self.kind
            && m.header(wire::ERROR_KIND) != Some(k.as_str())
        {
            return false;
        }
        if let Some(s) = &self.source
            && letter.original_source() != Some(s.as_str())
        {
            return false;
        }
        if let Some(k) = &self.key {
            let key = m.key.as_ref().map(|k| String::from_utf8_lossy(k));
            if key.as_deref() != Some(k.as_str()) && letter.id() != k {
                return false;
            }
        }
        if !self.ids.is_empty() && !self.ids.contains(letter.id()) {
            return false;
        }
        let failed = letter.failed_at();
        if let Some(since) = self.since
            && failed.is_none_or(|t| t < since)
        {
            return false;
        }
        if let Some(until) = self.until
            && failed.is_none_or(|t| t >= until)
        {
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backstop::Message;

    fn letter(kind: &str, error: &str, at: &str) -> Letter {
        Letter::new(
            Message::new("{}")
                .with_message_id("m1")
                .with_header(wire::ERROR_KIND, kind)
                .with_header(wire::ERROR, error)
                .with_header(wire::ORIGINAL_SOURCE, "orders")
                .with_header(wire::LAST_FAILURE, at),
        )
    }

    #[test]
    fn all_conditions_must_match() {
        let l = letter("permanent", "Card Declined", "2024-01-01T00:00:00Z");
        let f = |a: FilterArgs| Filter::parse(&a).unwrap().matches(&l);
        assert!(f(FilterArgs::default()));
        assert!(f(FilterArgs {
            error: Some("declined".into()),
            ..Default::default()
        }));
        assert!(!f(FilterArgs {
            kind: Some("decode".into()),
            ..Default::default()
        }));
        assert!(f(FilterArgs {
            source: Some("orders".into()),
            key: Some("m1".into()),
            ..Default::default()
        }));
        assert!(f(FilterArgs {
            since: Some("2023-12-31T00:00:00Z".into()),
            until: Some("2024-01-02T00:00:00Z".into()),
            ..Default::default()
        }));
        assert!(!f(FilterArgs {
            since: Some("2024-01-02T00:00:00Z".into()),
            ..Default::default()
        }));
        assert!(f(FilterArgs {
            since: Some("2024-01-01T01:00:00+02:00".into()),
            until: Some("2023-12-31T20:00:01-04:00".into()),
            ..Default::default()
        }));
        assert!(
            Filter::parse(&FilterArgs {
                since: Some("2024-01-01T00:00:00".into()),
                ..Default::default()
            })
            .is_err()
        );
        assert!(
            Filter::parse(&FilterArgs {
                since: Some("yesterday".into()),
                ..Default::default()
            })
            .is_err()
        );
    }
}
