//! The `cutover` command line: nutcracker's flags with nutcracker's meanings, plus the
//! admin address and the client request limits, and the subcommands `migrate` and
//! `verify` (offline jobs) and `ctl` (the admin API from a terminal). The pieces are in
//! `cli/`; this file only chooses which job runs.

mod cli;

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use cutover::config::{Config, ConfigError};
use cutover::stats;

use cli::args::{Cli, Job};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Job::Migrate(args)) => return cli::jobs::run_offline_migrate(args),
        Some(Job::Verify(args)) => return cli::jobs::run_offline_verify(args),
        Some(Job::Ctl(args)) => return cli::jobs::run_ctl(args),
        None => {}
    }
    if cli.version {
        // Scripts written for nutcracker read `This is NAME-VERSION` from -V.
        println!("This is cutover-{}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    if cli.describe_stats {
        print!("{}", stats::describe());
        return ExitCode::SUCCESS;
    }
    let config = match Config::load(&cli.conf_file) {
        Ok(config) => config,
        Err(error) => return report_config_error(&cli.conf_file, &error),
    };
    if cli.test_conf {
        eprintln!(
            "cutover: configuration file '{}' syntax is ok",
            cli.conf_file.display()
        );
        return ExitCode::SUCCESS;
    }
    cli::serve::run(&cli, config)
}

/// Print every config problem with its line, then nutcracker's verdict line.
fn report_config_error(path: &Path, error: &ConfigError) -> ExitCode {
    for line in error.to_string().lines() {
        eprintln!("cutover: {line}");
    }
    eprintln!(
        "cutover: configuration file '{}' syntax is invalid",
        path.display()
    );
    ExitCode::FAILURE
}
