//! The `cutover` command line: nutcracker's flags with nutcracker's meanings, plus the
//! admin address and the client request limits, and the subcommands `migrate` and
//! `verify` (offline jobs) and `ctl` (the admin API from a terminal).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use cutover::config::{Config, ConfigError};
use cutover::proxy::reload::Reloader;
use cutover::proxy::{PollWindow, Proxy};
use cutover::resp::RequestLimits;
use cutover::{admin, stats};

/// Smallest and largest `-m` nutcracker accepts (src/nc_mbuf.h).
const MBUF_MIN: u64 = 512;
const MBUF_MAX: u64 = 16 * 1024 * 1024;

/// A twemproxy-compatible Redis proxy that migrates a pool to new servers with no
/// downtime and no lost write.
#[derive(Debug, Parser)]
#[command(name = "cutover", about, long_about = None, args_conflicts_with_subcommands = true,
          disable_version_flag = true)]
struct Cli {
    /// Print the version (`This is cutover-VERSION`, the line nutcracker prints as `This is
    /// nutcracker-0.5.0`) and exit.
    #[arg(short = 'V', long = "version")]
    version: bool,

    /// A job other than running the proxy.
    #[command(subcommand)]
    command: Option<Job>,

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

    /// Size of nutcracker's mbuf chunk in bytes (accepted for compatibility; cutover's
    /// buffers grow as needed, and keys of any length are forwarded).
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

    /// Token that admin calls which change anything (POST) must carry as
    /// `Authorization: Bearer TOKEN`; also read from CUTOVER_ADMIN_TOKEN. Without it, a
    /// random token is made at start and written to --admin-token-file.
    #[arg(
        long = "admin-token",
        value_name = "TOKEN",
        env = "CUTOVER_ADMIN_TOKEN"
    )]
    admin_token: Option<String>,

    /// Where the token made at start is written, readable by this user only, and where
    /// `cutover ctl` looks for it (default: the temporary directory's
    /// cutover-admin-PORT.token, PORT being --admin's).
    #[arg(long = "admin-token-file", value_name = "FILE")]
    admin_token_file: Option<PathBuf>,

    /// Let any local process call the admin API's controls without a token (no token is
    /// made or required).
    #[arg(long = "no-admin-token", conflicts_with = "admin_token")]
    no_admin_token: bool,

    /// Most client connections open at once, across every pool; a client over it gets
    /// `-ERR max number of clients reached` and is closed (default: the process's
    /// open-file limit less 256, kept for server connections, listeners, logs and the
    /// admin API).
    #[arg(long = "max-clients", value_name = "N")]
    max_clients: Option<usize>,

    /// Worker threads serving clients (default: half the cores, at least 1; measured on a
    /// 2-core host shared with its Redis servers, one thread beat two).
    #[arg(long = "threads", value_name = "N")]
    threads: Option<usize>,

    /// Busy polling: keep polling the sockets after each client read or reply, instead of
    /// sleeping, while at most four clients are owed replies. `auto` (the default): for
    /// 50 µs, while clients send their next request within 200 µs of a reply, and not
    /// under a CPU quota; MICROSECONDS: for that long, always; `off` (or 0): never. Lower
    /// latency for a few clients at the cost of a busy core while they talk; see README.md.
    #[arg(long = "busy-poll", value_name = "auto|off|MICROSECONDS", default_value = "auto", value_parser = parse_busy_poll)]
    busy_poll: BusyPollArg,

    /// Largest single argument a client may send, in bytes.
    #[arg(long = "max-bulk-bytes", value_name = "N", default_value_t = RequestLimits::default().max_bulk)]
    max_bulk_bytes: usize,

    /// Most arguments in one client request.
    #[arg(long = "max-args", value_name = "N", default_value_t = RequestLimits::default().max_args)]
    max_args: usize,

    /// Largest whole client request, in bytes.
    #[arg(long = "max-request-bytes", value_name = "N", default_value_t = RequestLimits::default().max_request)]
    max_request_bytes: usize,
}

/// Jobs besides running the proxy.
#[derive(Debug, clap::Subcommand)]
enum Job {
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

/// `cutover verify` options.
#[derive(Debug, clap::Args)]
struct VerifyArgs {
    /// The source Redis.
    #[arg(long, value_name = "HOST:PORT")]
    from: String,
    /// The target: a nutcracker config, and the pool in it when it has several.
    #[arg(long, value_name = "FILE[:POOL]")]
    to: String,
    /// The source's password.
    #[arg(long)]
    password: Option<String>,
    /// Copy every key that still differs after the last round again.
    #[arg(long)]
    repair: bool,
    /// Rounds: the full pass, then re-checks of what differed.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// COUNT for each SCAN.
    #[arg(long, default_value_t = 1000)]
    scan_count: u32,
}

/// `cutover ctl` options.
#[derive(Debug, clap::Args)]
struct CtlArgs {
    /// The admin API of the running cutover.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:22223")]
    admin: String,
    /// Token for calls that change anything (the proxy's --admin-token). Without it, the
    /// token the proxy made is read from --token-file.
    #[arg(long, value_name = "TOKEN", env = "CUTOVER_ADMIN_TOKEN")]
    token: Option<String>,
    /// Where the proxy wrote the token it made (default: the temporary directory's
    /// cutover-admin-PORT.token, PORT being --admin's; the proxy's --admin-token-file).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// The migrating pool, when the proxy has several.
    #[arg(long, value_name = "POOL")]
    pool: Option<String>,
    /// What to do.
    #[command(subcommand)]
    action: CtlAction,
}

/// `cutover ctl` actions.
#[derive(Debug, clap::Subcommand)]
enum CtlAction {
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

/// Run `cutover ctl`.
fn run_ctl(args: CtlArgs) -> ExitCode {
    use cutover::admin::ctl::{self, CtlCommand, CtlOptions};
    let command = match args.action {
        CtlAction::Status => CtlCommand::Status,
        CtlAction::Cutover { force } => CtlCommand::Cutover { force },
        CtlAction::Rollback { force } => CtlCommand::Rollback { force },
        CtlAction::Finalize => CtlCommand::Finalize,
        CtlAction::Verify { repair, no_wait } => CtlCommand::Verify {
            repair,
            wait: !no_wait,
        },
        CtlAction::Pause => CtlCommand::Pause,
        CtlAction::Resume => CtlCommand::Resume,
    };
    let token = args.token.or_else(|| {
        let path = args
            .token_file
            .clone()
            .unwrap_or_else(|| cutover::admin::token::default_path(&args.admin));
        cutover::admin::token::read(&path)
    });
    let options = CtlOptions {
        admin: args.admin,
        token,
        pool: args.pool,
    };
    match ctl::run(&options, &command) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(ctl::CtlError::Differences(report)) => {
            print!("{report}");
            ExitCode::FAILURE
        }
        Err(error) => fail(&error.to_string()),
    }
}

/// Run `cutover verify`.
fn run_offline_verify(args: VerifyArgs) -> ExitCode {
    let runtime = match offline_runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let options = cutover::migrate::offline::OfflineOptions {
        from: args.from,
        to: args.to,
        password: args.password,
        rate: 0,
        scan_count: args.scan_count,
        checkpoint: None,
        parallel: 16,
    };
    let verify = cutover::migrate::verify::VerifyOptions {
        repair: args.repair,
        rounds: args.rounds.max(1),
        scan_count: args.scan_count.max(1),
    };
    run_verify(&runtime, options, verify)
}

/// Logging to standard error and a runtime, for the offline jobs.
fn offline_runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(std::io::stderr)
        .try_init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(&format!("cannot start the runtime: {e}")))
}

/// Run an offline verify pass and print its report; differences left unrepaired make the
/// exit status 1, for scripts.
fn run_verify(
    runtime: &tokio::runtime::Runtime,
    options: cutover::migrate::offline::OfflineOptions,
    verify: cutover::migrate::verify::VerifyOptions,
) -> ExitCode {
    match runtime.block_on(cutover::migrate::offline::verify(options, verify)) {
        Err(error) => fail(&error.to_string()),
        Ok(report) => {
            print!("{}", report.text());
            if report.differences() > 0 && !report.repair {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
    }
}

/// `cutover migrate` options.
#[derive(Debug, clap::Args)]
struct MigrateArgs {
    /// The source Redis.
    #[arg(long, value_name = "HOST:PORT")]
    from: String,
    /// The target: a nutcracker config, and the pool in it when it has several.
    #[arg(long, value_name = "FILE[:POOL]")]
    to: String,
    /// The source's password.
    #[arg(long)]
    password: Option<String>,
    /// Keys per second (0: unlimited).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// COUNT for each SCAN of the source.
    #[arg(long, default_value_t = 1000)]
    scan_count: u32,
    /// Keep progress in FILE and resume from it after an interruption.
    #[arg(long, value_name = "FILE")]
    checkpoint: Option<PathBuf>,
    /// Copies in flight at once.
    #[arg(long, default_value_t = 64)]
    parallel: u32,
    /// After the copy, compare source and target key by key (as `cutover verify`); the
    /// exit status is 1 if they differ.
    #[arg(long)]
    verify: bool,
}

/// Run `cutover migrate`.
fn run_offline_migrate(args: MigrateArgs) -> ExitCode {
    let runtime = match offline_runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let options = cutover::migrate::offline::OfflineOptions {
        from: args.from,
        to: args.to,
        password: args.password,
        rate: args.rate,
        scan_count: args.scan_count,
        checkpoint: args.checkpoint,
        parallel: args.parallel,
    };
    let verify_after = args.verify.then(|| options.clone());
    match runtime.block_on(cutover::migrate::offline::run(options)) {
        Err(error) => fail(&error.to_string()),
        Ok(s) => {
            println!(
                "cutover migrate: {} keys scanned, {} copied, {:.1} MB in {:.1} s ({:.0} keys/s, {:.1} MB/s)",
                s.scanned,
                s.copied,
                s.bytes as f64 / 1e6,
                s.seconds,
                s.scanned as f64 / s.seconds.max(0.001),
                s.bytes as f64 / 1e6 / s.seconds.max(0.001)
            );
            println!(
                "cutover migrate: skipped {} already copied by an earlier run; {} copied by type (DUMP payload refused by the target or over the copy limit); {} failed at first and were copied again",
                s.skipped, s.rejected, s.retried
            );
            let Some(options) = verify_after else {
                return ExitCode::SUCCESS;
            };
            let verify = cutover::migrate::verify::VerifyOptions {
                scan_count: options.scan_count.max(1),
                ..Default::default()
            };
            run_verify(&runtime, options, verify)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Job::Migrate(args)) => return run_offline_migrate(args),
        Some(Job::Verify(args)) => return run_offline_verify(args),
        Some(Job::Ctl(args)) => return run_ctl(args),
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
    // The log file's path is made absolute: a daemon's working directory is `/`, and
    // SIGHUP reopens it by path.
    let output = cli
        .output
        .as_ref()
        .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()));
    let logging = match cutover::logging::Logging::init(output.as_deref(), cli.verbose) {
        Ok(logging) => logging,
        Err(message) => return fail(&message),
    };
    let stats_addr = match resolve(&format!("{}:{}", cli.stats_addr, cli.stats_port)) {
        Ok(addr) => addr,
        Err(message) => return fail(&format!("stats address: {message}")),
    };
    let admin_addr = match resolve(&cli.admin) {
        Ok(addr) => addr,
        Err(message) => return fail(&format!("--admin: {message}")),
    };
    let pid_file = cli
        .pid_file
        .as_ref()
        .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()));
    if cli.daemonize
        && let Err(message) = daemonize()
    {
        return fail(&message);
    }
    if let Some(path) = &pid_file
        && let Err(e) = std::fs::write(path, format!("{}\n", std::process::id()))
    {
        return fail(&format!("cannot write pid file '{}': {e}", path.display()));
    }
    let threads = cli.threads.unwrap_or_else(default_threads).max(1);
    // One thread: the current-thread scheduler, without work-stealing's atomics.
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    let limits = RequestLimits {
        max_args: cli.max_args,
        max_bulk: cli.max_bulk_bytes,
        max_request: cli.max_request_bytes,
        ..RequestLimits::default()
    };
    let token = match admin_token(&cli) {
        Ok(token) => token,
        Err(message) => return fail(&message),
    };
    let conf_file = std::path::absolute(&cli.conf_file).unwrap_or_else(|_| cli.conf_file.clone());
    let served = runtime.block_on(serve(Serving {
        conf_file,
        config,
        limits,
        max_clients: cli.max_clients.unwrap_or_else(default_max_clients),
        stats_addr,
        stats_interval: Duration::from_millis(cli.stats_interval),
        admin_addr,
        busy_poll: cli.busy_poll.0,
        token,
        logging,
    }));
    if let Some(path) = &pid_file {
        let _ = std::fs::remove_file(path);
    }
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => fail(&message),
    }
}

/// What running the proxy needs.
struct Serving {
    /// The configuration file (absolute), read again by a reload.
    conf_file: PathBuf,
    /// The configuration.
    config: Config,
    /// Client request limits.
    limits: RequestLimits,
    /// Most client connections at once.
    max_clients: usize,
    /// The stats port's address.
    stats_addr: SocketAddr,
    /// How often the stats JSON is rebuilt.
    stats_interval: Duration,
    /// The admin API's address.
    admin_addr: SocketAddr,
    /// Busy polling's window (none: off).
    busy_poll: Option<PollWindow>,
    /// The admin API's token, and the file it was written to (to remove at the end).
    token: AdminToken,
    /// The log, for SIGHUP, SIGTTIN and SIGTTOU.
    logging: cutover::logging::Logging,
}

/// The admin API's token.
enum AdminToken {
    /// None required (`--no-admin-token`).
    Off,
    /// Given with --admin-token.
    Given(String),
    /// Made at start and written to this file.
    Made(String, PathBuf),
}

/// The admin token as the command line asks: given, off, or made now and written to its
/// file (the path said in the log).
fn admin_token(cli: &Cli) -> Result<AdminToken, String> {
    if cli.no_admin_token {
        return Ok(AdminToken::Off);
    }
    if let Some(token) = &cli.admin_token {
        return Ok(AdminToken::Given(token.clone()));
    }
    let path = cli
        .admin_token_file
        .clone()
        .unwrap_or_else(|| admin::token::default_path(&cli.admin));
    let token = admin::token::generate()?;
    admin::token::write(&path, &token)?;
    Ok(AdminToken::Made(token, path))
}

/// `--busy-poll`'s value: the window, or none for off.
#[derive(Debug, Clone, Copy)]
struct BusyPollArg(Option<PollWindow>);

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

/// The default for --max-clients: the open-file limit less 256, at least 16.
fn default_max_clients() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass; no other effect.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    let files = if ok { limit.rlim_cur as usize } else { 1024 };
    files.saturating_sub(256).max(16)
}

/// Run the proxy until SIGTERM or SIGINT, then shut down gracefully. SIGHUP reopens the
/// log file, SIGTTIN and SIGTTOU raise and lower the log level, SIGUSR1 reloads the
/// configuration (what can change on a live pool; see `proxy::reload`), SIGUSR2 is logged
/// and otherwise ignored (nutcracker ignores both).
async fn serve(serving: Serving) -> Result<(), String> {
    use tokio::signal::unix::{SignalKind, signal};
    let Serving {
        conf_file,
        config,
        limits,
        max_clients,
        stats_addr,
        stats_interval,
        admin_addr,
        busy_poll,
        token,
        logging,
    } = serving;
    let metrics = admin::install_metrics();
    let stats_listener = stats::bind(stats_addr)
        .await
        .map_err(|e| format!("cannot listen on stats address {stats_addr}: {e}"))?;
    let admin_listener = tokio::net::TcpListener::bind(admin_addr)
        .await
        .map_err(|e| format!("cannot listen on admin address {admin_addr}: {e}"))?;
    let admin_at = admin_listener.local_addr().ok().map(|a| a.to_string());
    let proxy = Proxy::start(&config, limits, max_clients, admin_at, busy_poll)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(stats::serve(
        stats_listener,
        stats::StatsReporter::new(proxy.pools.iter().map(|s| s.pool.clone()).collect()),
        stats_interval,
    ));
    let required = match &token {
        AdminToken::Off => {
            tracing::warn!("--no-admin-token: any local process may call the admin API's controls");
            None
        }
        AdminToken::Given(token) => Some(token.clone()),
        AdminToken::Made(token, path) => {
            tracing::info!(file = %path.display(), "admin token made; cutover ctl reads it from this file");
            Some(token.clone())
        }
    };
    let reloader = Arc::new(Reloader::new(conf_file, config, proxy.pools.clone()));
    tokio::spawn(admin::serve(
        admin_listener,
        admin::Admin::new(metrics, proxy.pools.clone(), required)
            .with_reloader(reloader.clone())
            .with_busy_poll(proxy.busy_poll.clone()),
    ));
    tracing::info!(%stats_addr, %admin_addr, max_clients, "cutover {} started", env!("CARGO_PKG_VERSION"));

    let install =
        |kind: SignalKind| signal(kind).map_err(|e| format!("cannot install signal handlers: {e}"));
    let mut term = install(SignalKind::terminate())?;
    let mut int = install(SignalKind::interrupt())?;
    let mut hup = install(SignalKind::hangup())?;
    let mut ttin = install(SignalKind::from_raw(libc::SIGTTIN))?;
    let mut ttou = install(SignalKind::from_raw(libc::SIGTTOU))?;
    let mut usr1 = install(SignalKind::user_defined1())?;
    let mut usr2 = install(SignalKind::user_defined2())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => logging.reopen(),
            _ = ttin.recv() => logging.step(true),
            _ = ttou.recv() => logging.step(false),
            _ = usr1.recv() => {
                tracing::info!("SIGUSR1: reloading the configuration");
                if let Err(error) = reloader.reload().await {
                    for line in error.to_string().lines() {
                        tracing::error!("reload refused, nothing changed: {line}");
                    }
                }
            }
            _ = usr2.recv() => tracing::info!("SIGUSR2 ignored"),
        }
    }
    tracing::info!("shutting down: no new clients; finishing requests in flight");
    proxy.shutdown().await;
    if let AdminToken::Made(_, path) = &token {
        let _ = std::fs::remove_file(path);
    }
    tracing::info!("stopped");
    Ok(())
}

/// Half the cores, at least one: the rest is left to the kernel's network stack and to
/// whatever shares the host (often the Redis servers themselves).
fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// `host:port` to a socket address.
fn resolve(text: &str) -> Result<SocketAddr, String> {
    text.to_socket_addrs()
        .map_err(|e| format!("'{text}': {e}"))?
        .next()
        .ok_or_else(|| format!("'{text}' resolves to no address"))
}

/// Print an error and return a failing exit code.
fn fail(message: &str) -> ExitCode {
    eprintln!("cutover: {message}");
    ExitCode::FAILURE
}

/// Become a daemon as nutcracker does: fork, new session, fork again, `/` as working
/// directory, standard streams on /dev/null. Must run before any thread is started.
fn daemonize() -> Result<(), String> {
    // SAFETY: called before the runtime starts any thread; only async-signal-safe calls
    // happen between fork and the parent's exit.
    unsafe {
        match libc::fork() {
            -1 => return Err(format!("fork: {}", std::io::Error::last_os_error())),
            0 => {}
            _ => libc::_exit(0),
        }
        if libc::setsid() == -1 {
            return Err(format!("setsid: {}", std::io::Error::last_os_error()));
        }
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        match libc::fork() {
            -1 => return Err(format!("fork: {}", std::io::Error::last_os_error())),
            0 => {}
            _ => libc::_exit(0),
        }
        libc::umask(0);
        let root = c"/";
        libc::chdir(root.as_ptr());
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::dup2(null, 1);
            libc::dup2(null, 2);
            if null > 2 {
                libc::close(null);
            }
        }
    }
    Ok(())
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
