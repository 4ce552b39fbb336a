//! The `chronicle` binary: parse the command line and run it; errors end as one line.

use std::process::ExitCode;

use chronicle::cli::Cli;
use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("chronicle: {error:#}");
            ExitCode::FAILURE
        }
    }
}
