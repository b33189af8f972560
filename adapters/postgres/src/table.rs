//! [`TableName`]: a validated, quoted table name for generated SQL.

use std::fmt;

use crate::PostgresError;

/// A table name checked to be `table` or `schema.table` of plain identifiers,
/// so it can be placed into SQL text safely; rendered double-quoted (case kept).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TableName {
    parts: Vec<String>,
}

fn valid(part: &str) -> bool {
    !part.is_empty()
        && part.len() <= 63
        && !part.starts_with(|c: char| c.is_ascii_digit())
        && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl TableName {
    /// Checks `name` (`table` or `schema.table`).
    pub fn new(name: &str) -> Result<Self, PostgresError> {
        let parts: Vec<String> = name.split('.').map(str::to_owned).collect();
        if parts.len() > 2 || !parts.iter().all(|p| valid(p)) {
            return Err(PostgresError::InvalidTableName(name.to_owned()));
        }
        Ok(TableName { parts })
    }

    /// One of this crate's default names (checked by a test).
    pub(crate) fn known(name: &'static str) -> Self {
        TableName {
            parts: vec![name.to_owned()],
        }
    }

    /// The table's own name, without the schema.
    pub fn table(&self) -> &str {
        self.parts.last().map_or("", String::as_str)
    }

    /// The table `name` in this table's schema (or unqualified, like this one).
    pub(crate) fn sibling(&self, name: &str) -> TableName {
        let mut parts = self.parts.clone();
        if let Some(last) = parts.last_mut() {
            name.clone_into(last);
        }
        TableName { parts }
    }

    /// A quoted name for an object named after this table (`"<table>_<suffix>"`, no schema).
    pub(crate) fn derived(&self, suffix: &str) -> String {
        let mut name = format!("{}_{suffix}", self.table());
        name.truncate(63);
        format!("\"{name}\"")
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let quoted: Vec<String> = self.parts.iter().map(|p| format!("\"{p}\"")).collect();
        f.write_str(&quoted.join("."))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_schema_names_are_quoted() {
        assert_eq!(TableName::new("dedup").unwrap().to_string(), "\"dedup\"");
        assert_eq!(
            TableName::new("app.Dedup_2").unwrap().to_string(),
            "\"app\".\"Dedup_2\""
        );
        assert_eq!(
            TableName::new("app.dedup").unwrap().derived("expires"),
            "\"dedup_expires\""
        );
    }

    #[test]
    fn default_names_are_valid() {
        for name in [
            crate::store::DEFAULT_STORE_TABLE,
            crate::inbox::DEFAULT_INBOX_TABLE,
        ] {
            assert_eq!(TableName::new(name).unwrap(), TableName::known(name));
        }
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            "",
            "a.b.c",
            "1abc",
            "a b",
            "a;drop table x",
            "a\"b",
            ".a",
            "a.",
            &"x".repeat(64),
        ] {
            assert!(
                matches!(TableName::new(bad), Err(PostgresError::InvalidTableName(_))),
                "{bad:?}"
            );
        }
    }
}
