//! `cutover migrate --from HOST:PORT --to FILE[:POOL]`: copy one running Redis into a pool,
//! placed as nutcracker would place it, with the same engine the proxy's backfill uses.
//! Shows progress (a line redrawn on a terminal, log lines otherwise), resumes from a
//! checkpoint file, and ends with a summary.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use super::Migration;
use crate::config::{Config, MigrateSettings, Migration as MigrationConfig, PoolConfig};
use crate::proxy::Pool;

/// What `cutover migrate` was asked to do.
#[derive(Debug, Clone)]
pub struct OfflineOptions {
    /// The source Redis, `host:port`.
    pub from: String,
    /// `FILE` or `FILE:POOL`: the target pool's config.
    pub to: String,
    /// The source's password, if it needs one.
    pub password: Option<String>,
    /// Keys per second (0: unlimited).
    pub rate: u64,
    /// SCAN COUNT.
    pub scan_count: u32,
    /// Where progress is kept, to resume after an interruption.
    pub checkpoint: Option<PathBuf>,
    /// Copies in flight at once.
    pub parallel: u32,
}

/// What a finished run did.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Keys scanned on the source.
    pub scanned: u64,
    /// Keys copied.
    pub copied: u64,
    /// Keys skipped because a resumed run had copied them already.
    pub skipped: u64,
    /// Payload bytes copied.
    pub bytes: u64,
    /// Keys copied structurally (payload refused by the target or over the copy limit).
    pub rejected: u64,
    /// Keys that failed and were copied again.
    pub retried: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// Why the job could not run.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    /// The target config is unusable.
    #[error("{0}")]
    Config(String),
    /// The source cannot be reached.
    #[error("cannot reach the source {from}: {reason}")]
    Source {
        /// The source address.
        from: String,
        /// Why.
        reason: String,
    },
}

/// The target pool named by `FILE[:POOL]`.
fn target_pool(to: &str) -> Result<PoolConfig, OfflineError> {
    let (file, pool) = match to.rsplit_once(':') {
        Some((file, pool)) if !std::path::Path::new(to).exists() => (file, Some(pool)),
        _ => (to, None),
    };
    let config = Config::load_servers_only(std::path::Path::new(file))
        .map_err(|e| OfflineError::Config(e.to_string()))?;
    let names: Vec<&str> = config.pools.iter().map(|p| p.name.as_str()).collect();
    let chosen = match pool {
        Some(name) => config.pool(name).ok_or_else(|| {
            OfflineError::Config(format!(
                "{file} has no pool '{name}' (pools: {})",
                names.join(", ")
            ))
        })?,
        None if config.pools.len() == 1 => &config.pools[0],
        None => {
            return Err(OfflineError::Config(format!(
                "{file} has several pools; name one as {file}:POOL (pools: {})",
                names.join(", ")
            )));
        }
    };
    if !chosen.redis {
        return Err(OfflineError::Config(format!(
            "pool '{}' is not a redis pool (redis: true)",
            chosen.name
        )));
    }
    Ok(chosen.clone())
}

/// The source as a one-server pool, through the config reader so a bad address gets its
/// usual message.
fn source_pool(options: &OfflineOptions, target: &PoolConfig) -> Result<PoolConfig, OfflineError> {
    let yaml = format!(
        "source:\n  listen: 127.0.0.1:1\n  redis: true\n  timeout: 30000\n  server_connections: 4\n  servers:\n   - \"{}:1 source\"\n",
        options.from.replace('"', "")
    );
    let config = Config::parse(&yaml, "--from")
        .map_err(|e| OfflineError::Config(format!("--from {}: {e}", options.from)))?;
    let mut pool = config.pools[0].clone();
    pool.redis_auth = options.password.clone();
    let settings = MigrateSettings {
        lanes: options.parallel.max(1),
        scan_count: options.scan_count.max(1),
        backfill_keys_per_second: options.rate,
        copies_in_flight: options.parallel.max(1),
        state_file: options.checkpoint.clone(),
        ..MigrateSettings::default()
    };
    pool.migration = Some(MigrationConfig {
        target: target.name.clone(),
        line: 0,
        settings,
    });
    Ok(pool)
}

/// The two sides of an offline job, opened.
struct Opened {
    /// The source as a one-server pool config.
    source: PoolConfig,
    /// The target pool config.
    target: PoolConfig,
    /// The running source pool.
    pool: std::sync::Arc<Pool>,
    /// Keys on the source (DBSIZE), for progress.
    total: u64,
}

/// Read the target config, start the source pool and count its keys (which also shows it
/// answers).
async fn open(options: &OfflineOptions) -> Result<Opened, OfflineError> {
    let target = target_pool(&options.to)?;
    let source = source_pool(options, &target)?;
    let pool = Pool::start(source.clone());
    let total = super::backfill::dbsize(&pool, 0)
        .await
        .map_err(|reason| OfflineError::Source {
            from: options.from.clone(),
            reason,
        })?;
    Ok(Opened {
        source,
        target,
        pool,
        total,
    })
}

/// Run the job to the end.
pub async fn run(options: OfflineOptions) -> Result<Summary, OfflineError> {
    let started = Instant::now();
    let Opened {
        source,
        target,
        pool,
        total,
    } = open(&options).await?;
    let migration = Migration::start(pool, &source, &target);
    let terminal = std::io::stderr().is_terminal();
    let every = report_every(terminal);
    let mut last_print = Instant::now() - every;
    loop {
        let finished = migration.drained();
        if finished || last_print.elapsed() >= every {
            print_progress(&migration, total, started, terminal);
            last_print = Instant::now();
        }
        if finished {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if terminal {
        eprintln!();
    }
    migration.stop(Duration::from_secs(5)).await;
    let t = &migration.totals;
    Ok(Summary {
        scanned: t.scanned.load(Relaxed),
        copied: t.backfill_copied.load(Relaxed) + t.write_copies.load(Relaxed),
        skipped: t.skipped.load(Relaxed),
        bytes: t.bytes.load(Relaxed),
        rejected: t.rejected.load(Relaxed),
        retried: t.dirtied.load(Relaxed),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// One progress report: keys, bytes, rate, ETA.
fn print_progress(migration: &Migration, total: u64, started: Instant, terminal: bool) {
    let t = &migration.totals;
    let copied = t.backfill_copied.load(Relaxed);
    let bytes = t.bytes.load(Relaxed);
    let seconds = started.elapsed().as_secs_f64().max(0.001);
    let line = format!(
        "{}, {copied} copied, {:.1} MB, {:.1} MB/s",
        progress_line(t.scanned.load(Relaxed), total, started, "scanned"),
        bytes as f64 / 1e6,
        bytes as f64 / 1e6 / seconds,
    );
    show_progress("cutover migrate", &line, terminal);
}

/// How often progress is shown: often on a terminal (a redrawn line), rarely in a log.
fn report_every(terminal: bool) -> Duration {
    if terminal {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(5)
    }
}

/// Show a progress line: redrawn in place on a terminal, a log line prefixed by `job`
/// otherwise.
fn show_progress(job: &str, line: &str, terminal: bool) {
    if terminal {
        eprint!("\r{line}   ");
    } else {
        eprintln!("{job}: {line}");
    }
}

/// `cutover verify --from HOST:PORT --to FILE[:POOL]`: compare one Redis with a pool (and
/// with `repair`, copy what differs again), showing keys checked as it goes.
pub async fn verify(
    options: OfflineOptions,
    verify_options: super::verify::VerifyOptions,
) -> Result<super::verify::VerifyReport, OfflineError> {
    let Opened {
        source,
        target,
        pool,
        total,
    } = open(&options).await?;
    let migration = Migration::start_with(pool, &source, &target, false);
    let terminal = std::io::stderr().is_terminal();
    let ticker = {
        let migration = migration.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let every = report_every(terminal);
            loop {
                tokio::time::sleep(every).await;
                let checked = migration.verify.checked.load(Relaxed);
                let line = progress_line(checked, total, started, "checked");
                show_progress("cutover verify", &line, terminal);
            }
        })
    };
    let report = super::verify::run(&migration, &verify_options).await;
    ticker.abort();
    if terminal {
        eprintln!();
    }
    report.ok_or_else(|| OfflineError::Config("a verify pass is already running".into()))
}

/// A progress bar and counts: `[####....] 42.0% 420/1000 keys checked, 500 keys/s, ETA 1s`.
fn progress_line(done: u64, total: u64, started: Instant, what: &str) -> String {
    let seconds = started.elapsed().as_secs_f64().max(0.001);
    let ratio = if total == 0 {
        1.0
    } else {
        (done as f64 / total as f64).min(1.0)
    };
    let rate = done as f64 / seconds;
    let eta = if rate > 0.0 && total > done {
        (total - done) as f64 / rate
    } else {
        0.0
    };
    let width = 30;
    let filled = (ratio * width as f64) as usize;
    format!(
        "[{}{}] {:>5.1}% {done}/{total} keys {what}, {rate:.0} keys/s, ETA {eta:.0}s",
        "#".repeat(filled),
        " ".repeat(width - filled),
        ratio * 100.0
    )
}
