//! Relay-style forward pagination shared by every connection field: page-size validation and
//! building a connection from a page fetched with one extra row.

use async_graphql::connection::{Connection, CursorType, Edge};
use async_graphql::OutputType;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::ApiError;

const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

/// The validated page size for a `first` argument.
///
/// # Errors
/// `VALIDATION` when `first` is outside 1..=1000.
pub(crate) fn page_size(first: Option<i32>) -> Result<usize, ApiError> {
    let Some(first) = first else {
        return Ok(DEFAULT_PAGE);
    };
    usize::try_from(first)
        .ok()
        .filter(|size| (1..=MAX_PAGE).contains(size))
        .ok_or_else(|| ApiError::Validation(format!("`first` must be between 1 and {MAX_PAGE}")))
}

/// The complexity of a page: its items' cost times the page size asked for (an invalid size
/// is refused later by [`page_size`]).
pub(crate) fn cost(first: Option<i32>, child_complexity: usize) -> usize {
    let size = first.map_or(DEFAULT_PAGE, |first| {
        usize::try_from(first).map_or(1, |size| size.clamp(1, MAX_PAGE))
    });
    size.saturating_mul(child_complexity.max(1))
}

/// Builds a connection from `rows`, fetched with a limit of `size + 1` so that the extra row,
/// if present, tells that a next page exists (as does `more`, when the source knows it).
pub(crate) fn connection<C, N, R>(
    mut rows: Vec<R>,
    size: usize,
    has_previous: bool,
    more: bool,
    edge: impl Fn(R) -> (C, N),
) -> Connection<C, N>
where
    C: CursorType + Send + Sync,
    N: OutputType,
{
    let has_next = more || rows.len() > size;
    rows.truncate(size);
    let mut connection = Connection::new(has_previous, has_next);
    connection.edges.extend(rows.into_iter().map(|row| {
        let (cursor, node) = edge(row);
        Edge::new(cursor, node)
    }));
    connection
}

/// A position in a newest-first list: the (created at, id) of the last row seen.
pub(crate) struct KeysetCursor(pub(crate) DateTime<Utc>, pub(crate) Uuid);

impl CursorType for KeysetCursor {
    type Error = String;

    fn decode_cursor(text: &str) -> Result<Self, Self::Error> {
        let invalid = || format!("`{text}` is not a cursor issued by this service");
        let rest = text.strip_prefix("k1.").ok_or_else(invalid)?;
        let (micros, id) = rest.split_once('.').ok_or_else(invalid)?;
        let micros: i64 = micros.parse().map_err(|_| invalid())?;
        let at = DateTime::from_timestamp_micros(micros).ok_or_else(invalid)?;
        Ok(Self(at, id.parse().map_err(|_| invalid())?))
    }

    fn encode_cursor(&self) -> String {
        format!("k1.{}.{}", self.0.timestamp_micros(), self.1)
    }
}

/// Decodes an optional `after` argument of a keyset-paginated list.
///
/// # Errors
/// `VALIDATION` when the cursor was not issued by this service.
fn keyset_after(after: Option<&str>) -> Result<Option<(DateTime<Utc>, Uuid)>, ApiError> {
    after
        .map(|text| KeysetCursor::decode_cursor(text).map(|c| (c.0, c.1)))
        .transpose()
        .map_err(ApiError::Validation)
}

/// One page of a newest-first keyset listing: its size, where it starts, and the rows to
/// fetch (one more than the size, to learn whether another page follows).
pub(crate) struct KeysetPage {
    /// Rows to return.
    pub(crate) size: usize,
    /// Start after this (created at, id); from the newest when `None`.
    pub(crate) after: Option<(DateTime<Utc>, Uuid)>,
    /// Rows to fetch.
    pub(crate) limit: i64,
}

/// The page `first` rows after the cursor `after` asks for.
///
/// # Errors
/// `VALIDATION` for a page size out of range or a cursor not issued by this service.
pub(crate) fn keyset_page(first: Option<i32>, after: Option<&str>) -> Result<KeysetPage, ApiError> {
    let size = page_size(first)?;
    Ok(KeysetPage {
        size,
        after: keyset_after(after)?,
        limit: i64::try_from(size + 1).unwrap_or(i64::MAX),
    })
}

#[cfg(test)]
mod tests {
    use async_graphql::connection::CursorType;

    use super::{keyset_after, page_size, ApiError, KeysetCursor};

    #[test]
    fn keyset_cursors_survive_their_wire_form_and_forgeries_are_rejected() {
        let at = chrono::DateTime::from_timestamp_micros(1_795_400_000_123_456).unwrap();
        let id = uuid::Uuid::from_u128(42);
        let text = KeysetCursor(at, id).encode_cursor();
        assert_eq!(keyset_after(Some(&text)).ok().flatten(), Some((at, id)));
        for forged in [
            "",
            "k1.",
            "k1.x.y",
            "k2.1.00000000-0000-0000-0000-000000000000",
        ] {
            assert!(keyset_after(Some(forged)).is_err(), "{forged}");
        }
    }

    #[test]
    fn page_sizes_default_to_100_and_stay_within_1_to_1000() {
        assert_eq!(page_size(None).ok(), Some(100));
        assert_eq!(page_size(Some(1)).ok(), Some(1));
        assert_eq!(page_size(Some(1000)).ok(), Some(1000));
        for invalid in [0, -1, 1001, i32::MIN, i32::MAX] {
            assert!(matches!(
                page_size(Some(invalid)),
                Err(ApiError::Validation(_))
            ));
        }
    }
}
