//! The jobs besides running the proxy: `cutover ctl` (the admin API from a terminal) and
//! the offline `cutover migrate` and `cutover verify`. Each prints its result and turns
//! it into the exit status scripts read.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use cutover::migrate::offline::OfflineOptions;

use super::args::{CtlAction, CtlArgs, Ends, MigrateArgs, VerifyArgs};
use super::fail;

/// Run `cutover ctl`.
pub fn run_ctl(args: CtlArgs) -> ExitCode {
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
pub fn run_offline_verify(args: VerifyArgs) -> ExitCode {
    let runtime = match offline_runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let verify = cutover::migrate::verify::VerifyOptions {
        repair: args.repair,
        rounds: args.rounds.max(1),
        scan_count: args.ends.scan_count.max(1),
    };
    let options = offline_options(args.ends, 0, None, 16, None);
    run_verify(&runtime, options, verify)
}

/// An offline job's options: its two ends, a rate limit (keys a second, 0: none), where
/// it keeps its progress, and how many copies or comparisons it keeps in flight.
fn offline_options(
    ends: Ends,
    rate: u64,
    checkpoint: Option<PathBuf>,
    parallel: u32,
    give_up_after: Option<Duration>,
) -> OfflineOptions {
    OfflineOptions {
        from: ends.from,
        to: ends.to,
        password: ends.password,
        rate,
        scan_count: ends.scan_count,
        checkpoint,
        parallel,
        give_up_after,
    }
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
    options: OfflineOptions,
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

/// Run `cutover migrate`.
pub fn run_offline_migrate(args: MigrateArgs) -> ExitCode {
    let runtime = match offline_runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let give_up_after = (args.give_up_after > 0).then(|| Duration::from_secs(args.give_up_after));
    let options = offline_options(
        args.ends,
        args.rate,
        args.checkpoint,
        args.parallel,
        give_up_after,
    );
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
