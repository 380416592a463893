//! Running the proxy: the process around `Proxy` (log, pid file, daemon, runtime, the
//! admin token), its listeners (pools, stats port, admin API) and its signals, until
//! SIGTERM or SIGINT.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use cutover::config::Config;
use cutover::proxy::reload::Reloader;
use cutover::proxy::{PollWindow, Proxy};
use cutover::resp::RequestLimits;
use cutover::{admin, stats};

use super::args::Cli;
use super::daemon::daemonize;
use super::fail;

/// Run the proxy `cli` asks for on a checked `config`, until it is told to stop.
pub fn run(cli: &Cli, config: Config) -> ExitCode {
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
    let token = match admin_token(cli) {
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
            .with_busy_poll(proxy.busy_poll.clone())
            .with_stopping(proxy.stopping()),
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
