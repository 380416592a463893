//! The log, as nutcracker keeps it: to standard error or to the `-o` file, at the level
//! `-v` (0-11) asks for. `SIGHUP` reopens the file (log rotation: the rotated file is left
//! alone and a new one is created); `SIGTTIN` and `SIGTTOU` raise and lower the level by
//! one step, each with a log line saying the new level.
//!
//! May import: nothing of the crate.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use tracing::level_filters::LevelFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Registry, reload};

/// The highest verbosity `-v` takes.
pub const MAX_VERBOSITY: u8 = 11;

/// The level nutcracker's verbosity `v` (0-11) stands for.
pub fn level_of(verbosity: u8) -> LevelFilter {
    match verbosity {
        0..=3 => LevelFilter::ERROR,
        4 => LevelFilter::WARN,
        5 | 6 => LevelFilter::INFO,
        7 | 8 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    }
}

/// Where log lines go: standard error, or a file that can be reopened.
#[derive(Clone)]
enum Sink {
    /// Standard error.
    Stderr,
    /// The `-o` file, reopened by [`Logging::reopen`].
    File(Arc<LogFile>),
}

/// The `-o` file and its path.
struct LogFile {
    /// Where it is.
    path: PathBuf,
    /// The open file (appending).
    file: Mutex<std::fs::File>,
}

/// Open `path` for appending, creating it.
fn open(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// One log line's writer.
enum LineWriter {
    /// Standard error.
    Stderr(std::io::Stderr),
    /// The log file.
    File(Arc<LogFile>),
}

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            LineWriter::Stderr(e) => e.write(buf),
            LineWriter::File(f) => f
                .file
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            LineWriter::Stderr(e) => e.flush(),
            LineWriter::File(f) => f
                .file
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .flush(),
        }
    }
}

impl<'a> MakeWriter<'a> for Sink {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        match self {
            Sink::Stderr => LineWriter::Stderr(std::io::stderr()),
            Sink::File(f) => LineWriter::File(f.clone()),
        }
    }
}

/// The running log: what `SIGHUP`, `SIGTTIN` and `SIGTTOU` act on.
pub struct Logging {
    /// Where lines go.
    sink: Sink,
    /// The level filter, changeable at run time.
    level: reload::Handle<LevelFilter, Registry>,
    /// The verbosity now (0-11).
    verbosity: Mutex<u8>,
}

impl Logging {
    /// Install the log: to `output` (appending) or standard error, at `verbosity`.
    pub fn init(output: Option<&Path>, verbosity: u8) -> Result<Logging, String> {
        let sink = match output {
            None => Sink::Stderr,
            Some(path) => {
                let file = open(path)
                    .map_err(|e| format!("cannot open log file '{}': {e}", path.display()))?;
                Sink::File(Arc::new(LogFile {
                    path: path.to_path_buf(),
                    file: Mutex::new(file),
                }))
            }
        };
        let verbosity = verbosity.min(MAX_VERBOSITY);
        let (filter, level) = reload::Layer::new(level_of(verbosity));
        let fmt = tracing_subscriber::fmt::layer()
            .with_target(false)
            .with_ansi(matches!(sink, Sink::Stderr))
            .with_writer(sink.clone());
        tracing_subscriber::registry()
            .with(filter)
            .with(fmt)
            .try_init()
            .map_err(|e| format!("cannot install the log: {e}"))?;
        Ok(Logging {
            sink,
            level,
            verbosity: Mutex::new(verbosity),
        })
    }

    /// Reopen the log file (`SIGHUP`): lines go to a file at the same path, created anew
    /// when the old one was moved away. With no `-o`, nothing to do.
    pub fn reopen(&self) {
        let Sink::File(log) = &self.sink else {
            tracing::info!("SIGHUP: logging to standard error, nothing to reopen");
            return;
        };
        match open(&log.path) {
            Ok(file) => {
                *log.file.lock().unwrap_or_else(PoisonError::into_inner) = file;
                tracing::info!(path = %log.path.display(), "log file reopened");
            }
            Err(error) => {
                tracing::error!(path = %log.path.display(), %error, "cannot reopen the log file; still writing to the old one");
            }
        }
    }

    /// Raise (`up`, `SIGTTIN`) or lower (`SIGTTOU`) the verbosity by one, and say so.
    pub fn step(&self, up: bool) {
        let now = {
            let mut v = self
                .verbosity
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            *v = if up {
                (*v + 1).min(MAX_VERBOSITY)
            } else {
                v.saturating_sub(1)
            };
            *v
        };
        let level = level_of(now);
        let _ = self.level.modify(|filter| *filter = level);
        let verb = if up { "raised" } else { "lowered" };
        self.announce(&format!("log level {verb} to {now} ({level})"));
    }

    /// Write a line whatever the level (as nutcracker's `loga` does).
    fn announce(&self, text: &str) {
        use tracing_subscriber::fmt::time::FormatTime;
        let mut stamp = String::new();
        let _ = tracing_subscriber::fmt::time::SystemTime.format_time(
            &mut tracing_subscriber::fmt::format::Writer::new(&mut stamp),
        );
        let mut writer = self.sink.make_writer();
        let _ = writeln!(writer, "{stamp}  NOTICE {text}");
    }

    /// The verbosity now.
    pub fn verbosity(&self) -> u8 {
        *self
            .verbosity
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nutcracker_verbosity_to_levels() {
        assert_eq!(level_of(0), LevelFilter::ERROR);
        assert_eq!(level_of(4), LevelFilter::WARN);
        assert_eq!(level_of(5), LevelFilter::INFO);
        assert_eq!(level_of(7), LevelFilter::DEBUG);
        assert_eq!(level_of(11), LevelFilter::TRACE);
    }
}
