//! Personal data in the log: sealed per subject on append, opened on every read, erased for
//! good when the subject's key is destroyed (`forgetSubject`).

mod personal;
mod vault;

pub use personal::holds_personal_data;
pub use vault::{PseudonymKey, Undecryptable, Vault, ERASED};
