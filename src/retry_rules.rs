//! Which HTTP answers are worth retrying, shared by provider calls and webhook deliveries:
//! 408, 429 and 5xx are; other failures are final. `Retry-After` (in seconds) says how long.

use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::StatusCode;

/// True for 408, 429 and 5xx.
pub fn retryable_status(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
        || status.is_server_error()
}

/// The `Retry-After` delay, when given in seconds.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}
