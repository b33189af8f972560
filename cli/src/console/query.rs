//! [`Query`]: the filter form of a DLQ page, as the library's
//! [`FilterArgs`] (for actions) and as SQL over the index (for pages).
//!
//! Both read the same fields the same way (the tests below hold them to
//! it): the error text contains the words (case-insensitive), kind, source
//! and key are exact (the key matches the record key or the message id),
//! and the time range (RFC 3339 with an offset) is on the letter's last
//! failure, from `since` included to `until` excluded.

use serde::{Deserialize, Serialize};

use crate::args::FilterArgs;
use crate::dlq::Filter;

use super::error::ConsoleError;

/// The filters of a DLQ page; an empty field is no filter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Query {
    /// The error kind.
    pub kind: String,
    /// Text in the error message.
    pub error: String,
    /// The original source.
    pub source: String,
    /// The record key or message id.
    pub key: String,
    /// Failed at or after (RFC 3339 with an offset).
    pub since: String,
    /// Failed before (RFC 3339 with an offset).
    pub until: String,
    /// Only these message ids (the letters selected on a page).
    pub ids: Vec<String>,
}

fn some(text: &str) -> Option<String> {
    let t = text.trim();
    (!t.is_empty()).then(|| t.to_owned())
}

/// A bound value of an index query.
pub type SqlValue = rusqlite::types::Value;

impl Query {
    /// True when no field is set.
    pub fn is_empty(&self) -> bool {
        self == &Query::default()
    }

    /// The library's filter arguments (the CLI's flags) for these fields.
    pub fn filter_args(&self) -> FilterArgs {
        FilterArgs {
            error: some(&self.error),
            kind: some(&self.kind),
            source: some(&self.source),
            key: some(&self.key),
            ids: self.ids.clone(),
            since: some(&self.since),
            until: some(&self.until),
        }
    }

    /// The library's [`Filter`], checked (a time without an offset is refused).
    pub fn filter(&self) -> Result<Filter, ConsoleError> {
        Ok(Filter::parse(&self.filter_args())?)
    }

    /// The query of the fields `name=value` of a query string or form
    /// (`id` repeats: the selected letters).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut q = Query::default();
        for (k, v) in pairs {
            let v = v.to_owned();
            match k {
                "kind" => q.kind = v,
                "error" => q.error = v,
                "source" => q.source = v,
                "key" => q.key = v,
                "since" => q.since = v,
                "until" => q.until = v,
                "id" if !v.is_empty() => q.ids.push(v),
                _ => {}
            }
        }
        q
    }

    /// The condition of an index query (over the `letters` table) and its
    /// values; live letters only unless `done`.
    pub fn sql(&self, done: bool) -> Result<(String, Vec<SqlValue>), ConsoleError> {
        self.filter()?; // the same checks as an action
        let mut parts = vec![if done { "1" } else { "state IS NULL" }.to_owned()];
        let mut values = Vec::new();
        if let Some(e) = some(&self.error) {
            parts.push("instr(error_lc, ?) > 0".into());
            values.push(SqlValue::Text(e.to_lowercase()));
        }
        for (column, value) in [("kind", &self.kind), ("source", &self.source)] {
            if let Some(v) = some(value) {
                parts.push(format!("{column} = ?"));
                values.push(SqlValue::Text(v));
            }
        }
        if let Some(k) = some(&self.key) {
            parts.push("(rkey = ? OR id = ?)".into());
            values.push(SqlValue::Text(k.clone()));
            values.push(SqlValue::Text(k));
        }
        if !self.ids.is_empty() {
            let marks = vec!["?"; self.ids.len()].join(", ");
            parts.push(format!("id IN ({marks})"));
            values.extend(self.ids.iter().cloned().map(SqlValue::Text));
        }
        for (flag, text, op) in [("since", &self.since, ">="), ("until", &self.until, "<")] {
            if let Some(t) = some(text) {
                let at = crate::time::parse_flag(flag, &t)?;
                parts.push(format!("failed_at IS NOT NULL AND failed_at {op} ?"));
                values.push(SqlValue::Integer(millis(at)));
            }
        }
        Ok((parts.join(" AND "), values))
    }

    /// The fields as a URL query string (for links that keep the filters).
    pub fn to_query_string(&self) -> String {
        let mut out = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("kind", &self.kind),
            ("error", &self.error),
            ("source", &self.source),
            ("key", &self.key),
            ("since", &self.since),
            ("until", &self.until),
        ] {
            if !v.trim().is_empty() {
                out.append_pair(k, v);
            }
        }
        for id in &self.ids {
            out.append_pair("id", id);
        }
        out.finish()
    }
}

/// Milliseconds since the Unix epoch (negative before it).
pub fn millis(t: std::time::SystemTime) -> i64 {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::index::Index;
    use crate::dlq::Letter;
    use backstop::{Message, wire};

    fn letter(id: &str, kind: &str, error: &str, at: &str, key: Option<&str>) -> Letter {
        let mut m = Message::new("{}")
            .with_message_id(id)
            .with_header(wire::ERROR_KIND, kind)
            .with_header(wire::ERROR, error)
            .with_header(wire::ORIGINAL_SOURCE, "orders")
            .with_header(wire::LAST_FAILURE, at);
        if let Some(k) = key {
            m = m.with_key(k.to_owned());
        }
        Letter::new(m)
    }

    /// Every query selects the same letters from the index as the library's
    /// filter does from the letters.
    #[test]
    fn the_index_and_the_library_select_the_same_letters() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("i.sqlite")).unwrap();
        let letters = [
            letter(
                "a",
                "permanent",
                "Card DECLINED",
                "2024-01-01T00:00:00Z",
                Some("k1"),
            ),
            letter("b", "decode", "bad json", "2024-01-01T01:00:00Z", None),
            letter(
                "c",
                "permanent",
                "Ünïcode déclined",
                "2024-01-02T00:00:00+02:00",
                Some("k2"),
            ),
            letter("d", "timeout", "", "not a time", Some("a")),
        ];
        {
            let mut w = index.writer().unwrap();
            for l in &letters {
                w.upsert(l, l.id()).unwrap();
            }
            w.commit().unwrap();
        }
        let q = |f: fn(&mut Query)| {
            let mut q = Query::default();
            f(&mut q);
            q
        };
        let queries = [
            Query::default(),
            q(|q| q.error = "declined".into()),
            q(|q| q.error = "DÉCLINED".into()),
            q(|q| q.kind = "permanent".into()),
            q(|q| q.source = "orders".into()),
            q(|q| q.key = "a".into()),
            q(|q| q.key = "k2".into()),
            q(|q| q.since = "2024-01-01T00:30:00Z".into()),
            q(|q| q.until = "2024-01-01T01:00:00Z".into()),
            q(|q| q.ids = vec!["b".into(), "c".into(), "x".into()]),
            q(|q| {
                q.since = "2024-01-01T02:00:00+03:00".into();
                q.kind = "decode".into();
            }),
        ];
        for query in queries {
            let filter = query.filter().unwrap();
            let expected: Vec<&str> = letters
                .iter()
                .filter(|l| filter.matches(l))
                .map(|l| l.id())
                .collect();
            let page = index.page(&query, false, None, 10).unwrap();
            let got: Vec<&str> = page.rows.iter().map(|r| r.id.as_str()).collect();
            assert_eq!(got, expected, "{query:?}");
        }
        assert!(q(|q| q.since = "2024-01-01".into()).sql(false).is_err());
    }
}
