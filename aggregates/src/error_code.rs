//! The one list of error codes that clients see in a GraphQL error's `code` extension.

use std::fmt;

/// A stable, machine-readable error code. Never rename a variant's string: clients match on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The object does not exist, or belongs to someone else.
    NotFound,
    /// The command is not allowed in the aggregate's current state.
    InvalidTransition,
    /// The input is malformed or breaks a rule that does not depend on state.
    Validation,
    /// A concurrent writer changed the aggregate first; retrying may succeed.
    Conflict,
    /// No valid credentials were presented.
    Unauthenticated,
    /// The caller is known but may not do this.
    Forbidden,
    /// The caller sent more mutations than its rate limit allows; retry after a while.
    RateLimited,
    /// The request exceeds a fixed budget (a socket's operations, a document's size); a
    /// smaller request may pass.
    LimitExceeded,
    /// A dependency (the database) is unreachable for now; retrying later may succeed.
    Unavailable,
    /// A projection failed on the event it was asked to apply (the error says why).
    ProjectionFailed,
    /// The deployment is not set up to serve this (a request for an endpoint no configured
    /// provider serves); the same request will not pass until an operator configures it.
    NotServed,
    /// Something failed on our side; details are in the server log under the correlation id.
    Internal,
}

impl ErrorCode {
    /// Every code, for exhaustive tests and parsing.
    pub const ALL: [Self; 12] = [
        Self::NotFound,
        Self::InvalidTransition,
        Self::Validation,
        Self::Conflict,
        Self::Unauthenticated,
        Self::Forbidden,
        Self::RateLimited,
        Self::LimitExceeded,
        Self::Unavailable,
        Self::ProjectionFailed,
        Self::NotServed,
        Self::Internal,
    ];

    /// The wire form, e.g. `INVALID_TRANSITION`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::NotFound => "NOT_FOUND",
            Self::InvalidTransition => "INVALID_TRANSITION",
            Self::Validation => "VALIDATION",
            Self::Conflict => "CONFLICT",
            Self::Unauthenticated => "UNAUTHENTICATED",
            Self::Forbidden => "FORBIDDEN",
            Self::RateLimited => "RATE_LIMITED",
            Self::LimitExceeded => "LIMIT_EXCEEDED",
            Self::Unavailable => "UNAVAILABLE",
            Self::ProjectionFailed => "PROJECTION_FAILED",
            Self::NotServed => "NOT_SERVED",
            Self::Internal => "INTERNAL",
        }
    }

    /// Parses the wire form back (used when replaying a stored command outcome).
    pub fn parse(code: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|candidate| candidate.as_str() == code)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An aggregate's rejection of a command: a message for people and a code for programs.
pub trait DomainError: std::error::Error + Send + Sync + 'static {
    /// The stable code this rejection is reported under.
    fn code(&self) -> ErrorCode;
}

#[cfg(test)]
mod tests {
    use super::ErrorCode;

    #[test]
    fn every_code_parses_back_from_its_wire_form() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
        }
        assert_eq!(ErrorCode::parse("TEAPOT"), None);
    }
}
