//! `cutover migrate --from HOST:PORT --to FILE[:POOL]`: copy one running Redis into a pool,
//! placed as nutcracker would place it, with the same engine the proxy's backfill uses.
//! Shows progress (a line redrawn on a terminal, log lines otherwise), resumes from a
//! checkpoint file, and ends with a summary.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use super::Migration;
use crate::config::{Config, MigrateSettings, Migration as MigrationConfig, PoolConfig};
use crate::upstream::Pool;

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
    /// Give up when nothing moved (no key scanned, none copied) for this long while work
    /// remains: a target server that stays down. `None`: wait for ever.
    pub give_up_after: Option<Duration>,
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
    /// A server of either end does not answer at the start.
    #[error("{0}: bring it back first (nothing was copied or checked)")]
    Silent(super::verify::SilentServer),
    /// Nothing moved for `--give-up-after` while keys were left to copy.
    #[error(
        "no key scanned or copied for {seconds} s (--give-up-after), with {waiting} keys still to copy; {servers}. Nothing is lost: run the same command again once the target answers (with --checkpoint it continues where this run stopped)"
    )]
    Stalled {
        /// How long nothing moved.
        seconds: u64,
        /// Keys queued or waiting to be copied again.
        waiting: u64,
        /// The target servers that fail, or that none does.
        servers: String,
    },
    /// A target server evicted keys during the job (rule 19): its maxmemory is full.
    #[error(
        "{0} during the job (its maxmemory is full, and its maxmemory-policy evicts): the target lacks those keys. Raise its maxmemory (or add servers), then run the same command again"
    )]
    Evicted(String),
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
    if let Err(error) = both_ends_answer(&migration).await {
        migration.stop(Duration::from_secs(1)).await;
        return Err(error);
    }
    let mut progress = JobProgress::new("cutover migrate", "scanned", total);
    let mut stall = Stall::new(options.give_up_after);
    loop {
        let finished = migration.drained();
        let t = &migration.totals;
        let bytes = t.bytes.load(Relaxed);
        let seconds = started.elapsed().as_secs_f64().max(0.001);
        let (queued, dirty) = migration.backlog();
        let again = if dirty > 0 {
            format!(", {dirty} to copy again")
        } else {
            String::new()
        };
        progress.update(
            t.scanned.load(Relaxed),
            &format!(
                "{} copied, {:.1} MB, {:.1} MB/s{again}",
                t.backfill_copied.load(Relaxed),
                bytes as f64 / 1e6,
                bytes as f64 / 1e6 / seconds
            ),
            finished,
        );
        if finished {
            break;
        }
        let moved = (
            t.scanned.load(Relaxed),
            bytes,
            t.backfill_copied.load(Relaxed),
        );
        if let Some(seconds) = stall.stuck(moved) {
            progress.finish();
            migration.stop(Duration::from_secs(1)).await;
            return Err(OfflineError::Stalled {
                seconds,
                waiting: queued + dirty,
                servers: failing_servers(&migration.copy_target),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    progress.finish();
    // Evictions since the last look, up to the end (rule 19).
    migration
        .watch_evictions(super::restarts::Look::Mirrored)
        .await;
    migration.stop(Duration::from_secs(5)).await;
    if migration.dirty.owes(super::Owed::Eviction) {
        return Err(OfflineError::Evicted(migration.evictions.evicted_text()));
    }
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

/// Every server of both ends answers: a job whose target is down from the start says so
/// at once, instead of scanning everything into dirty keys (or, verifying, counting every
/// key of that server as a difference).
async fn both_ends_answer(migration: &Migration) -> Result<(), OfflineError> {
    match super::verify::silent_server(migration).await {
        None => Ok(()),
        Some(silent) => Err(OfflineError::Silent(silent)),
    }
}

/// The target servers that fail now, for a stalled job's error.
fn failing_servers(pool: &Pool) -> String {
    let failing: Vec<String> = pool
        .server_states()
        .into_iter()
        .filter_map(|s| Some(format!("{}: {}", s.name, s.trouble()?)))
        .collect();
    if failing.is_empty() {
        "no target server reports a failure".to_string()
    } else {
        format!("target server {}", failing.join("; "))
    }
}

/// Watches an offline job for a standstill: how long its counts have not moved.
struct Stall {
    /// The limit (`None`: never give up).
    limit: Option<Duration>,
    /// The counts last seen, and since when they have not moved.
    last: Option<((u64, u64, u64), Instant)>,
}

impl Stall {
    /// A watch giving up after `limit` without movement.
    fn new(limit: Option<Duration>) -> Stall {
        Stall { limit, last: None }
    }

    /// The counts now; the whole seconds they have stood still, once that reaches the
    /// limit. A job that has not yet scanned or copied anything is not judged: its first
    /// SCAN page may be slow on a loaded machine, and a target down from the start was
    /// found before the job began.
    fn stuck(&mut self, moved: (u64, u64, u64)) -> Option<u64> {
        let limit = self.limit?;
        if moved == (0, 0, 0) {
            return None;
        }
        match self.last {
            Some((seen, since)) if seen == moved => {
                let still = since.elapsed();
                (still >= limit).then_some(still.as_secs())
            }
            _ => {
                self.last = Some((moved, Instant::now()));
                None
            }
        }
    }
}

/// Progress of an offline job: an indicatif bar on a terminal, a plain log line every few
/// seconds otherwise (a log file wants lines, not redraws). The total grows to what was
/// done, so a count never exceeds its total (DBSIZE is a moment's count; keys come and go).
struct JobProgress {
    /// The bar, on a terminal.
    bar: Option<ProgressBar>,
    /// The job's name, prefixed to log lines.
    job: &'static str,
    /// What is counted ("scanned", "checked").
    what: &'static str,
    /// The total so far.
    total: u64,
    /// When the job started (for log lines' rate).
    started: Instant,
    /// When the last log line was written.
    last_line: Option<Instant>,
}

/// How often a log line is written when not on a terminal.
const LOG_EVERY: Duration = Duration::from_secs(5);

impl JobProgress {
    /// Progress of `job` counting keys `what`, out of about `total`.
    fn new(job: &'static str, what: &'static str, total: u64) -> JobProgress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            let style = ProgressStyle::with_template(
                "[{bar:30}] {percent:>3}% {pos}/{len} keys {prefix}, {per_sec}, ETA {eta} {msg}",
            )
            .map(|s| s.progress_chars("#>."))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_prefix(what);
            bar
        });
        JobProgress {
            bar,
            job,
            what,
            total,
            started: Instant::now(),
            last_line: None,
        }
    }

    /// `done` keys so far, with `detail`; `last` forces a log line.
    fn update(&mut self, done: u64, detail: &str, last: bool) {
        self.total = self.total.max(done);
        match &self.bar {
            Some(bar) => {
                bar.set_length(self.total);
                bar.set_position(done);
                bar.set_message(detail.to_string());
            }
            None => {
                if last || self.last_line.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
                    self.last_line = Some(Instant::now());
                    let seconds = self.started.elapsed().as_secs_f64().max(0.001);
                    eprintln!(
                        "{}: {done}/{} keys {}, {:.0} keys/s, {detail}",
                        self.job,
                        self.total,
                        self.what,
                        done as f64 / seconds
                    );
                }
            }
        }
    }

    /// The job ended: leave the bar drawn.
    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
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
    // A server that does not answer would make every key of its own look different.
    if let Err(error) = both_ends_answer(&migration).await {
        migration.discard_temporary_files();
        return Err(error);
    }
    let (done, mut finished) = tokio::sync::oneshot::channel::<()>();
    let ticker = {
        let migration = migration.clone();
        tokio::spawn(async move {
            let mut progress = JobProgress::new("cutover verify", "checked", total);
            loop {
                let last = tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => false,
                    _ = &mut finished => true,
                };
                progress.update(migration.verify.checked.load(Relaxed), "", last);
                if last {
                    progress.finish();
                    return;
                }
            }
        })
    };
    let report = super::verify::run(&migration, &verify_options).await;
    let _ = done.send(());
    let _ = ticker.await;
    migration.discard_temporary_files();
    report.ok_or_else(|| OfflineError::Config("a verify pass is already running".into()))
}
