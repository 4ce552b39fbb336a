//! The one mapping from failures to GraphQL errors: a message plus a stable `code` extension.
//!
//! `ApiError` deliberately does not implement `Display`, so async-graphql's blanket
//! `From<T: Display>` cannot turn it into a code-less error: every resolver error passes here.

use async_graphql::ErrorExtensions;
use chronicle_aggregates::ErrorCode;
use chronicle_projections::{CursorError, ProjectionError};

use crate::command::{is_unavailable, CommandError};
use crate::projection::{ParkedError, RunnerError};

/// One invalid item of a bulk input: its index and every rule it breaks.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ItemProblem {
    /// The item's 0-based index in the input list.
    pub index: usize,
    /// What is wrong with it.
    pub reasons: Vec<String>,
}

/// A resolver's failure.
#[derive(Debug)]
pub enum ApiError {
    /// A command did not take effect.
    Command(CommandError),
    /// The request's arguments are invalid.
    Validation(String),
    /// The database failed.
    Database(sqlx::Error),
    /// The request carries no caller identity.
    Unauthenticated,
    /// The object does not exist or is not the caller's.
    NotFound(&'static str),
    /// Only an admin may do this.
    AdminOnly,
    /// Items of a bulk input break rules; nothing was written.
    InvalidItems(Vec<ItemProblem>),
    /// An action on a parked event did not take effect.
    Parked(ParkedError),
    /// A projection could not be reset for a rebuild.
    Rebuild(RunnerError),
}

impl ApiError {
    /// The stable code clients match on.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Command(CommandError::Rejected { code, .. }) => *code,
            Self::Command(CommandError::Conflict | CommandError::Duplicate(_)) => {
                ErrorCode::Conflict
            }
            Self::Command(
                CommandError::IdempotencyKeyReused(_) | CommandError::InvalidIdempotencyKey,
            )
            | Self::Validation(_) => ErrorCode::Validation,
            Self::Command(CommandError::Unavailable(_)) => ErrorCode::Unavailable,
            Self::Database(error) if is_unavailable(error) => ErrorCode::Unavailable,
            Self::Database(error) if is_bad_argument(error) => ErrorCode::Validation,
            Self::Command(CommandError::Internal(_)) | Self::Database(_) => ErrorCode::Internal,
            Self::Unauthenticated => ErrorCode::Unauthenticated,
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::AdminOnly => ErrorCode::Forbidden,
            Self::InvalidItems(_) => ErrorCode::Validation,
            Self::Parked(error) => parked_code(error),
            Self::Rebuild(
                RunnerError::Database(error)
                | RunnerError::Projection(ProjectionError::Database(error)),
            ) if is_unavailable(error) => ErrorCode::Unavailable,
            Self::Rebuild(_) => ErrorCode::Internal,
        }
    }

    fn client_message(&self) -> String {
        match self.code() {
            ErrorCode::Internal => {
                "internal error; see the server log for this correlation id".into()
            }
            ErrorCode::Unavailable => "the database is unavailable; retry later".into(),
            ErrorCode::NotFound
            | ErrorCode::InvalidTransition
            | ErrorCode::Validation
            | ErrorCode::Conflict
            | ErrorCode::Unauthenticated
            | ErrorCode::Forbidden
            | ErrorCode::RateLimited
            | ErrorCode::LimitExceeded
            | ErrorCode::ProjectionFailed
            | ErrorCode::NotServed => match self {
                Self::Command(error) => error.to_string(),
                Self::Validation(message) => message.clone(),
                Self::Database(_) => "an argument holds text or a date the store cannot keep".into(),
                Self::Unauthenticated => "no caller identity on this request".into(),
                Self::NotFound(what) => format!("{what} not found"),
                Self::AdminOnly => "only an admin may do this".into(),
                Self::InvalidItems(items) => format!(
                    "{} of the submitted items are invalid; nothing was submitted (see extensions.items)",
                    items.len()
                ),
                Self::Parked(error) => error.to_string(),
                Self::Rebuild(error) => error.to_string(),
            },
        }
    }
}

fn parked_code(error: &ParkedError) -> ErrorCode {
    match error {
        ParkedError::UnknownProjection(_) | ParkedError::NotParked(..) => ErrorCode::NotFound,
        ParkedError::Resolved(_) => ErrorCode::InvalidTransition,
        ParkedError::FailedAgain(_) => ErrorCode::ProjectionFailed,
        ParkedError::Database(error) if is_unavailable(error) => ErrorCode::Unavailable,
        ParkedError::Database(_) => ErrorCode::Internal,
    }
}

/// Argument text or dates PostgreSQL cannot hold (NUL characters, dates out of range): the
/// caller's input was bad, not our server.
fn is_bad_argument(error: &sqlx::Error) -> bool {
    const CODES: [&str; 4] = ["22021", "22P05", "22008", "22007"];
    error
        .as_database_error()
        .and_then(|db| db.code())
        .is_some_and(|code| CODES.contains(&code.as_ref()))
}

impl From<CommandError> for ApiError {
    fn from(error: CommandError) -> Self {
        Self::Command(error)
    }
}

impl From<RunnerError> for ApiError {
    fn from(error: RunnerError) -> Self {
        Self::Rebuild(error)
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        Self::Database(error)
    }
}

impl From<CursorError> for ApiError {
    fn from(error: CursorError) -> Self {
        Self::Validation(error.to_string())
    }
}

impl From<ApiError> for async_graphql::Error {
    fn from(error: ApiError) -> Self {
        let code = error.code();
        if matches!(code, ErrorCode::Internal | ErrorCode::Unavailable) {
            // Logged once, here, inside the request's span (which carries the correlation id).
            tracing::error!(error.code = %code, error.detail = ?error, "request failed");
        }
        let items = if let ApiError::InvalidItems(items) = &error {
            async_graphql::Value::from_json(serde_json::to_value(items).unwrap_or_default()).ok()
        } else {
            None
        };
        async_graphql::Error::new(error.client_message()).extend_with(|_, extensions| {
            extensions.set("code", code.as_str());
            if let Some(items) = items {
                extensions.set("items", items);
            }
        })
    }
}
