//! The command line's shape: nutcracker's flags with nutcracker's meanings and defaults,
//! cutover's own (admin API, request limits, threads, busy polling), and the subcommands'
//! options. Only parsing lives here; what each job does is in `jobs.rs` and `serve.rs`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use cutover::proxy::PollWindow;
use cutover::resp::RequestLimits;

/// Smallest and largest `-m` nutcracker accepts (src/nc_mbuf.h).
const MBUF_MIN: u64 = 512;
const MBUF_MAX: u64 = 16 * 1024 * 1024;

/// A twemproxy-compatible Redis proxy that migrates a pool to new servers with no
/// downtime and no lost write.
#[derive(Debug, Parser)]
#[command(name = "cutover", about, long_about = None, args_conflicts_with_subcommands = true,
          disable_version_flag = true)]
pub struct Cli {
    /// Print the version (`This is cutover-VERSION`, the line nutcracker prints as `This is
    /// nutcracker-0.5.0`) and exit.
    #[arg(short = 'V', long = "version")]
    pub version: bool,

    /// A job other than running the proxy.
    #[command(subcommand)]
    pub command: Option<Job>,

    /// Configuration file (nutcracker YAML, plus cutover's migration keys).
    #[arg(
        short = 'c',
        long = "conf-file",
        value_name = "FILE",
        default_value = "conf/nutcracker.yml"
    )]
    pub conf_file: PathBuf,

    /// Test the configuration for errors and exit.
    #[arg(short = 't', long = "test-conf")]
    pub test_conf: bool,

    /// Run as a daemon.
    #[arg(short = 'd', long = "daemonize")]
    pub daemonize: bool,

    /// Print the stats description and exit.
    #[arg(short = 'D', long = "describe-stats")]
    pub describe_stats: bool,

    /// Logging level, 0 (emergencies only) to 11 (everything), as in nutcracker.
    #[arg(short = 'v', long = "verbose", value_name = "N", default_value_t = 5,
          value_parser = clap::value_parser!(u8).range(0..=11))]
    pub verbose: u8,

    /// Log file (default: standard error).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Stats monitoring port (nutcracker's JSON).
    #[arg(
        short = 's',
        long = "stats-port",
        value_name = "N",
        default_value_t = 22222
    )]
    pub stats_port: u16,

    /// Stats monitoring address.
    #[arg(
        short = 'a',
        long = "stats-addr",
        value_name = "ADDR",
        default_value = "0.0.0.0"
    )]
    pub stats_addr: String,

    /// Stats aggregation interval in milliseconds.
    #[arg(
        short = 'i',
        long = "stats-interval",
        value_name = "MS",
        default_value_t = 30_000
    )]
    pub stats_interval: u64,

    /// Pid file.
    #[arg(short = 'p', long = "pid-file", value_name = "FILE")]
    pub pid_file: Option<PathBuf>,

    /// Size of nutcracker's mbuf chunk in bytes (accepted for compatibility; cutover's
    /// buffers grow as needed, and keys of any length are forwarded).
    #[arg(short = 'm', long = "mbuf-size", value_name = "N", default_value_t = 16384,
          value_parser = clap::value_parser!(u64).range(MBUF_MIN..=MBUF_MAX))]
    pub mbuf_size: u64,

    /// Admin HTTP listener: /metrics, /status and the migration controls.
    #[arg(
        long = "admin",
        value_name = "HOST:PORT",
        default_value = "127.0.0.1:22223"
    )]
    pub admin: String,

    /// Token that admin calls which change anything (POST) must carry as
    /// `Authorization: Bearer TOKEN`; also read from CUTOVER_ADMIN_TOKEN. Without it, a
    /// random token is made at start and written to --admin-token-file.
    #[arg(
        long = "admin-token",
        value_name = "TOKEN",
        env = "CUTOVER_ADMIN_TOKEN"
    )]
    pub admin_token: Option<String>,

    /// Where the token made at start is written, readable by this user only, and where
    /// `cutover ctl` looks for it (default: the temporary directory's
    /// cutover-admin-PORT.token, PORT being --admin's).
    #[arg(long = "admin-token-file", value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// Let any local process call the admin API's controls without a token (no token is
    /// made or required).
    #[arg(long = "no-admin-token", conflicts_with = "admin_token")]
    pub no_admin_token: bool,

    /// Most client connections open at once, across every pool; a client over it gets
    /// `-ERR max number of clients reached` and is closed (default: the process's
    /// open-file limit less 256, kept for server connections, listeners, logs and the
    /// admin API).
    #[arg(long = "max-clients", value_name = "N")]
    pub max_clients: Option<usize>,

    /// Worker threads serving clients (default: half the cores, at least 1; measured on a
    /// 2-core host shared with its Redis servers, one thread beat two).
    #[arg(long = "threads", value_name = "N")]
    pub threads: Option<usize>,

    /// Busy polling: keep polling the sockets after each client read or reply, instead of
    /// sleeping, while at most four clients are owed replies. `auto` (the default): for
    /// 50 µs, while clients send their next request within 200 µs of a reply, and not
    /// under a CPU quota; MICROSECONDS: for that long, always; `off` (or 0): never. Lower
    /// latency for a few clients at the cost of a busy core while they talk; see README.md.
    #[arg(long = "busy-poll", value_name = "auto|off|MICROSECONDS", default_value = "auto", value_parser = parse_busy_poll)]
    pub busy_poll: BusyPollArg,

    /// Largest single argument a client may send, in bytes.
    #[arg(long = "max-bulk-bytes", value_name = "N", default_value_t = RequestLimits::default().max_bulk)]
    pub max_bulk_bytes: usize,

    /// Most arguments in one client request.
    #[arg(long = "max-args", value_name = "N", default_value_t = RequestLimits::default().max_args)]
    pub max_args: usize,

    /// Largest whole client request, in bytes.
    #[arg(long = "max-request-bytes", value_name = "N", default_value_t = RequestLimits::default().max_request)]
    pub max_request_bytes: usize,
}

/// Jobs besides running the proxy.
#[derive(Debug, clap::Subcommand)]
pub enum Job {
    /// Copy one running Redis into a pool offline, placed as nutcracker would place it
    /// (the one-off DUMP/RESTORE job), with progress, rate limit, resume and a summary.
    Migrate(MigrateArgs),
    /// Compare one running Redis with a pool key by key (missing, extra, type, value,
    /// TTL), in rounds that re-check what differed; with --repair, copy differences again.
    Verify(VerifyArgs),
    /// Talk to a running cutover's admin API: status, cutover, rollback, finalize, verify,
    /// pause, resume.
    Ctl(CtlArgs),
}

/// The two ends of an offline job (`cutover migrate`, `cutover verify`), and how it reads
/// the source.
#[derive(Debug, clap::Args)]
pub struct Ends {
    /// The source Redis.
    #[arg(long, value_name = "HOST:PORT")]
    pub from: String,
    /// The target: a nutcracker config, and the pool in it when it has several.
    #[arg(long, value_name = "FILE[:POOL]")]
    pub to: String,
    /// The source's password.
    #[arg(long)]
    pub password: Option<String>,
    /// COUNT for each SCAN (of the source, and for verify of the target too).
    #[arg(long, default_value_t = 1000)]
    pub scan_count: u32,
}

/// `cutover verify` options.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// Where from, where to.
    #[command(flatten)]
    pub ends: Ends,
    /// Copy every key that still differs after the last round again.
    #[arg(long)]
    pub repair: bool,
    /// Rounds: the full pass, then re-checks of what differed.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
}

/// `cutover ctl` options.
#[derive(Debug, clap::Args)]
pub struct CtlArgs {
    /// The admin API of the running cutover.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:22223")]
    pub admin: String,
    /// Token for calls that change anything (the proxy's --admin-token). Without it, the
    /// token the proxy made is read from --token-file.
    #[arg(long, value_name = "TOKEN", env = "CUTOVER_ADMIN_TOKEN")]
    pub token: Option<String>,
    /// Where the proxy wrote the token it made (default: the temporary directory's
    /// cutover-admin-PORT.token, PORT being --admin's; the proxy's --admin-token-file).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The migrating pool, when the proxy has several.
    #[arg(long, value_name = "POOL")]
    pub pool: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub action: CtlAction,
}

/// `cutover ctl` actions.
#[derive(Debug, clap::Subcommand)]
pub enum CtlAction {
    /// Phase, backfill progress, mirror lag, shadow mismatches, verify result, readiness.
    Status,
    /// Make the target pool authoritative (refused with reasons unless ready).
    Cutover {
        /// Override the readiness checks (logged).
        #[arg(long)]
        force: bool,
    },
    /// Make the source pool authoritative again.
    Rollback {
        /// Override the dirty-key check.
        #[arg(long)]
        force: bool,
    },
    /// Stop mirroring to the source: serve the target pool alone.
    Finalize,
    /// Run a verify pass in the proxy and print its report.
    Verify {
        /// Copy differing keys again.
        #[arg(long)]
        repair: bool,
        /// Start it and return at once.
        #[arg(long)]
        no_wait: bool,
    },
    /// Pause the backfill.
    Pause,
    /// Resume the backfill.
    Resume,
}

/// `cutover migrate` options.
#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// Where from, where to.
    #[command(flatten)]
    pub ends: Ends,
    /// Keys per second (0: unlimited).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Keep progress in FILE and resume from it after an interruption.
    #[arg(long, value_name = "FILE")]
    pub checkpoint: Option<PathBuf>,
    /// Copies in flight at once.
    #[arg(long, default_value_t = 64)]
    pub parallel: u32,
    /// Give up, with the failing target servers named, when no key was scanned or copied
    /// for this many seconds while keys are left to copy (0: wait for ever).
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub give_up_after: u64,
    /// After the copy, compare source and target key by key (as `cutover verify`); the
    /// exit status is 1 if they differ.
    #[arg(long)]
    pub verify: bool,
}

/// `--busy-poll`'s value: the window, or none for off.
#[derive(Debug, Clone, Copy)]
pub struct BusyPollArg(pub Option<PollWindow>);

/// Read `--busy-poll`: `auto`, `off`, or a window in microseconds (0 is off).
fn parse_busy_poll(text: &str) -> Result<BusyPollArg, String> {
    match text {
        "auto" => Ok(BusyPollArg(Some(PollWindow::Auto))),
        "off" => Ok(BusyPollArg(None)),
        _ => match text.parse::<u64>() {
            Ok(0) => Ok(BusyPollArg(None)),
            Ok(micros) => Ok(BusyPollArg(Some(PollWindow::Fixed(Duration::from_micros(
                micros,
            ))))),
            Err(_) => Err(format!(
                "expected auto, off or a number of microseconds, not {text:?}"
            )),
        },
    }
}
