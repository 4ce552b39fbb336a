//! LLM requests and batches: the service side of the domain — submitting requests into
//! batches, owner actions on batches and requests, the closer and the provider driver.

mod actions;
mod closer;
mod custom_ids;
mod driver;
mod open_batches;
mod prices;
mod submit;

pub use actions::LlmActions;
pub use closer::BatchCloser;
pub use driver::{DriverError, DriverSettings, ProviderDriver, Providers};
pub use prices::Prices;
pub use submit::{Accepted, Submitter};
