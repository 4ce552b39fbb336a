//! Newest-first keyset lists over read-model tables, with only the filters a query gives in
//! its SQL. A catch-all form (`$1 IS NULL OR owner = $1`) is one prepared statement whose
//! generic plan cannot use the index a filter fits, and walks the list order's index past
//! every row that does not match; each combination of filters here is its own statement,
//! planned for the indexes it can use.

use chrono::{DateTime, Utc};
use sqlx::{Postgres, QueryBuilder};

/// A list query being built: `SELECT <columns> FROM <table> WHERE ...`.
pub(crate) struct Listing<'a> {
    query: QueryBuilder<'a, Postgres>,
}

impl<'a> Listing<'a> {
    /// Every row of `table`, as `columns`.
    pub(crate) fn of(table: &str, columns: &str) -> Self {
        Self {
            query: QueryBuilder::new(format!("SELECT {columns} FROM {table} WHERE true")),
        }
    }

    /// Only rows whose `column` equals `value`, when a value is given.
    pub(crate) fn equal<T>(mut self, column: &str, value: Option<T>) -> Self
    where
        T: 'a + sqlx::Encode<'a, Postgres> + sqlx::Type<Postgres> + Send,
    {
        if let Some(value) = value {
            self.query
                .push(format!(" AND {column} = "))
                .push_bind(value);
        }
        self
    }

    /// Only rows for which `condition` (SQL without parameters) holds, when `applies`.
    pub(crate) fn when(mut self, applies: bool, condition: &str) -> Self {
        if applies {
            self.query.push(format!(" AND ({condition})"));
        }
        self
    }

    /// Only rows created in `[from, until)`, where those bounds are given.
    pub(crate) fn created(
        mut self,
        from: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
    ) -> Self {
        if let Some(from) = from {
            self.query.push(" AND created_at >= ").push_bind(from);
        }
        if let Some(until) = until {
            self.query.push(" AND created_at < ").push_bind(until);
        }
        self
    }

    /// The page of at most `limit` rows after the keyset position `after`, newest first.
    pub(crate) fn page(
        mut self,
        after: Option<(DateTime<Utc>, uuid::Uuid)>,
        limit: i64,
    ) -> QueryBuilder<'a, Postgres> {
        if let Some((at, id)) = after {
            self.query.push(" AND (created_at, id) < (").push_bind(at);
            self.query.push(", ").push_bind(id).push(")");
        }
        self.query
            .push(" ORDER BY created_at DESC, id DESC LIMIT ")
            .push_bind(limit);
        self.query
    }
}
