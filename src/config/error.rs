//! Config errors: every problem names its line, and the pool and key it belongs to.

use std::fmt;
use std::path::PathBuf;

/// One thing wrong with a config file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line of the offending key or value (0 when the file as a whole is at fault).
    pub line: usize,
    /// The pool the problem is in, if any.
    pub pool: Option<String>,
    /// The pool key (or `servers`, `migrate.<key>`) the problem is about, if any.
    pub key: Option<String>,
    /// What is wrong, in words an operator can act on.
    pub message: String,
}

impl Problem {
    /// A problem at `line` of the whole file.
    pub fn at(line: usize, message: impl Into<String>) -> Problem {
        Problem {
            line,
            pool: None,
            key: None,
            message: message.into(),
        }
    }

    /// The same problem, attributed to `pool`.
    pub fn in_pool(mut self, pool: &str) -> Problem {
        self.pool = Some(pool.to_string());
        self
    }

    /// The same problem, attributed to `key`.
    pub fn for_key(mut self, key: &str) -> Problem {
        self.key = Some(key.to_string());
        self
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: ", self.line)?;
        if let Some(pool) = &self.pool {
            write!(f, "pool '{pool}': ")?;
        }
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (missing, unreadable, a directory, ...).
    #[error("cannot read configuration file '{}': {source}", path.display())]
    Read {
        /// The file that was asked for.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The file is larger than any sane config.
    #[error("configuration file '{}' is {size} bytes; the limit is {limit}", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
        /// The largest accepted size.
        limit: u64,
    },
    /// The file is not valid UTF-8 text.
    #[error("configuration file '{}' is not UTF-8 text (line {line}, byte offset {offset})", path.display())]
    NotText {
        /// The file.
        path: PathBuf,
        /// 1-based line of the first invalid byte.
        line: usize,
        /// Byte offset of the first invalid byte.
        offset: usize,
    },
    /// The file was read but is not a valid config; every problem found is listed.
    #[error("{}", render_problems(source_name, problems))]
    Invalid {
        /// The file name (or `<string>`) to prefix problems with.
        source_name: String,
        /// Every problem found, in file order.
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    /// The individual problems (empty for I/O errors).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }
}

/// `file:line: pool 'p': key: message`, one problem a line, like a compiler.
fn render_problems(source_name: &str, problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| {
            let mut line = format!("{source_name}:{}: ", p.line);
            if let Some(pool) = &p.pool {
                line.push_str(&format!("pool '{pool}': "));
            }
            if let Some(key) = &p.key {
                line.push_str(&format!("{key}: "));
            }
            line.push_str(&p.message);
            line
        })
        .collect::<Vec<_>>()
        .join("\n")
}
