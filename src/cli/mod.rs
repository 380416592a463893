//! The binary's own parts, above every layer of the library (`admin` included): the
//! command line's shape (`args.rs`), the jobs besides the proxy (`jobs.rs`), running the
//! proxy (`serve.rs`) and becoming a daemon (`daemon.rs`). Nothing in the library
//! imports them.

pub mod args;
pub mod daemon;
pub mod jobs;
pub mod serve;

use std::process::ExitCode;

/// Print an error and return a failing exit code.
fn fail(message: &str) -> ExitCode {
    eprintln!("cutover: {message}");
    ExitCode::FAILURE
}
