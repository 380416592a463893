//! The `cutover` command line: nutcracker's flags with nutcracker's meanings, plus the
//! admin address. Subcommands (`migrate`, `verify`, `ctl`) arrive with the migration engine.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use cutover::config::{Config, ConfigError};
use cutover::stats;

/// Smallest and largest `-m` nutcracker accepts (src/nc_mbuf.h).
const MBUF_MIN: u64 = 512;
const MBUF_MAX: u64 = 16 * 1024 * 1024;

/// A twemproxy-compatible Redis proxy that migrates a pool to new servers with no
/// downtime and no lost write.
#[derive(Debug, Parser)]
#[command(name = "cutover", version, about, long_about = None)]
struct Cli {
    /// Configuration file (nutcracker YAML, plus cutover's migration keys).
    #[arg(
        short = 'c',
        long = "conf-file",
        value_name = "FILE",
        default_value = "conf/nutcracker.yml"
    )]
    conf_file: PathBuf,

    /// Test the configuration for errors and exit.
    #[arg(short = 't', long = "test-conf")]
    test_conf: bool,

    /// Run as a daemon.
    #[arg(short = 'd', long = "daemonize")]
    daemonize: bool,

    /// Print the stats description and exit.
    #[arg(short = 'D', long = "describe-stats")]
    describe_stats: bool,

    /// Logging level, 0 (emergencies only) to 11 (everything), as in nutcracker.
    #[arg(short = 'v', long = "verbose", value_name = "N", default_value_t = 5,
          value_parser = clap::value_parser!(u8).range(0..=11))]
    verbose: u8,

    /// Log file (default: standard error).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: Option<PathBuf>,

    /// Stats monitoring port (nutcracker's JSON).
    #[arg(
        short = 's',
        long = "stats-port",
        value_name = "N",
        default_value_t = 22222
    )]
    stats_port: u16,

    /// Stats monitoring address.
    #[arg(
        short = 'a',
        long = "stats-addr",
        value_name = "ADDR",
        default_value = "0.0.0.0"
    )]
    stats_addr: String,

    /// Stats aggregation interval in milliseconds.
    #[arg(
        short = 'i',
        long = "stats-interval",
        value_name = "MS",
        default_value_t = 30_000
    )]
    stats_interval: u64,

    /// Pid file.
    #[arg(short = 'p', long = "pid-file", value_name = "FILE")]
    pid_file: Option<PathBuf>,

    /// Size of nutcracker's mbuf chunk in bytes; keys must be shorter than this minus 48.
    #[arg(short = 'm', long = "mbuf-size", value_name = "N", default_value_t = 16384,
          value_parser = clap::value_parser!(u64).range(MBUF_MIN..=MBUF_MAX))]
    mbuf_size: u64,

    /// Admin HTTP listener: /metrics, /status and the migration controls.
    #[arg(
        long = "admin",
        value_name = "HOST:PORT",
        default_value = "127.0.0.1:22223"
    )]
    admin: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    if let Err(message) = init_logging(&cli) {
        eprintln!("cutover: {message}");
        return ExitCode::FAILURE;
    }
    tracing::info!(pools = config.pools.len(), conf = %cli.conf_file.display(), "configuration loaded");
    eprintln!("cutover: serving is not built yet; use -t to check a configuration");
    ExitCode::from(2)
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

/// Route tracing to standard error or `-o FILE`, at the level `-v` asks for.
fn init_logging(cli: &Cli) -> Result<(), String> {
    let level = match cli.verbose {
        0..=3 => tracing::Level::ERROR,
        4 => tracing::Level::WARN,
        5 | 6 => tracing::Level::INFO,
        7 | 8 => tracing::Level::DEBUG,
        _ => tracing::Level::TRACE,
    };
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false);
    match &cli.output {
        None => builder.with_writer(std::io::stderr).init(),
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("cannot open log file '{}': {e}", path.display()))?;
            builder
                .with_writer(std::sync::Mutex::new(file))
                .with_ansi(false)
                .init();
        }
    }
    Ok(())
}
