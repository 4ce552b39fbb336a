//! Who may call and what the service may reach: API keys (stored as a keyed hash, compared
//! in constant time), the bootstrap admin key, per-client rate limits on mutations, revocations
//! pushed to open websockets, and the egress policy for webhook and DICOMweb targets.

mod bootstrap;
mod egress;
mod keys;
mod known_keys;
mod pepper;
mod rate_limit;
mod revocations;

pub use bootstrap::{bootstrap_admin, ADMIN_CLIENT};
pub use egress::{EgressPolicy, Refused};
pub use keys::{Authenticator, Identity, KeyHasher, NewKey};
pub use known_keys::KnownKeys;
pub use pepper::{Pepper, PepperError};
pub use rate_limit::{MutationCost, RateLimiter, RateLimits};
pub use revocations::{KeyNews, Revocation, RevocationWatch, Revocations};
