//! Relay-style forward pagination shared by every connection field: page-size validation and
//! building a connection from a page fetched with one extra row.

use async_graphql::connection::{Connection, CursorType, Edge};
use async_graphql::OutputType;

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

/// Builds a connection from `rows`, fetched with a limit of `size + 1` so that the extra row,
/// if present, tells that a next page exists.
pub(crate) fn connection<C, N, R>(
    mut rows: Vec<R>,
    size: usize,
    has_previous: bool,
    edge: impl Fn(R) -> (C, N),
) -> Connection<C, N>
where
    C: CursorType + Send + Sync,
    N: OutputType,
{
    let has_next = rows.len() > size;
    rows.truncate(size);
    let mut connection = Connection::new(has_previous, has_next);
    connection.edges.extend(rows.into_iter().map(|row| {
        let (cursor, node) = edge(row);
        Edge::new(cursor, node)
    }));
    connection
}

#[cfg(test)]
mod tests {
    use super::{page_size, ApiError};

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
