//! Transfer jobs: DICOM studies moved between PACS servers over DICOMweb, optionally
//! pseudonymized — owner and admin actions, the CSV of a batch transfer, the DICOMweb
//! client, the pseudonymizer and the runner.

mod actions;
pub mod csv_rows;
pub mod dicomweb;
pub mod pseudonymize;
mod runner;

pub use actions::{JobAction, TransferActions};
pub use runner::{RunnerSettings, TransferRunner};
