//! The configuration: a nutcracker 0.5.0 YAML file, read exactly as nutcracker reads it,
//! plus cutover's migration keys. Every problem is reported with its line, pool and key.
//!
//! May import: `hash` (a pool's placement). Nothing else of the crate.

mod error;
mod listen;
mod migrate;
mod pool;
mod server;
mod values;
mod yaml;

use std::path::Path;

pub use error::{ConfigError, Problem};
pub use listen::Listen;
pub use migrate::{Capture, Coordination, MIGRATE_KEYS, MigrateSettings, StructuralCopy};
pub use pool::{Migration, POOL_KEYS, PoolConfig};
pub use server::{ServerAddr, ServerConfig, parse as parse_server_line};

use yaml::NodeKind;

/// Largest config file accepted; a real one is a few kilobytes.
const MAX_CONFIG_BYTES: u64 = 16 * 1024 * 1024;

/// A whole config file: its pools, sorted by name as nutcracker sorts them.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The pools, sorted by (name length, name bytes).
    pub pools: Vec<PoolConfig>,
}

impl Config {
    /// Read and check the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with(path, true)
    }

    /// Read a config whose pools describe servers only (the target of `cutover migrate`):
    /// a pool without `listen:` is fine there.
    pub fn load_servers_only(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with(path, false)
    }

    /// Read and check `path`; `listen_required` as in [`Config::parse_with`].
    fn load_with(path: &Path, listen_required: bool) -> Result<Config, ConfigError> {
        let read_error = |source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read_error)?;
        if meta.is_dir() {
            return Err(read_error(std::io::Error::other("it is a directory")));
        }
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge {
                path: path.to_path_buf(),
                size: meta.len(),
                limit: MAX_CONFIG_BYTES,
            });
        }
        let bytes = std::fs::read(path).map_err(read_error)?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let offset = e.utf8_error().valid_up_to();
            let line = 1 + e.as_bytes()[..offset]
                .iter()
                .filter(|&&b| b == b'\n')
                .count();
            ConfigError::NotText {
                path: path.to_path_buf(),
                line,
                offset,
            }
        })?;
        Config::parse_with(&text, &path.display().to_string(), listen_required)
    }

    /// Check config `text`; `source_name` prefixes every problem (usually the file name).
    pub fn parse(text: &str, source_name: &str) -> Result<Config, ConfigError> {
        Config::parse_with(text, source_name, true)
    }

    /// Check config `text`; when `listen_required`, every pool that is not a migration
    /// target needs `listen:`.
    pub fn parse_with(
        text: &str,
        source_name: &str,
        listen_required: bool,
    ) -> Result<Config, ConfigError> {
        let invalid = |problems| ConfigError::Invalid {
            source_name: source_name.to_string(),
            problems,
        };
        let document = yaml::read(text);
        let mut problems = document.problems;
        if !problems.is_empty() && document.root.is_none() {
            return Err(invalid(problems));
        }
        let Some(root) = document.root else {
            return Err(invalid(vec![Problem::at(1, "the file defines no pools")]));
        };
        let NodeKind::Map(entries) = &root.kind else {
            problems.push(Problem::at(
                root.line,
                format!(
                    "the file must be a mapping of pool names to pools, not {}",
                    root.shape()
                ),
            ));
            return Err(invalid(problems));
        };
        if entries.is_empty() {
            problems.push(Problem::at(root.line, "the file defines no pools"));
        }
        let mut pools: Vec<PoolConfig> = Vec::new();
        for (name_node, body) in entries {
            let Some(name) = name_node.as_scalar() else {
                problems.push(Problem::at(
                    name_node.line,
                    format!(
                        "a pool name must be a plain word, not {}",
                        name_node.shape()
                    ),
                ));
                continue;
            };
            if let Some(first) = pools.iter().find(|p| p.name == name) {
                problems.push(
                    Problem::at(
                        name_node.line,
                        format!(
                            "is a duplicate pool name (first defined on line {})",
                            first.line
                        ),
                    )
                    .in_pool(name),
                );
                continue;
            }
            pools.push(PoolConfig::read(name, name_node.line, body, &mut problems));
        }
        check_listens(&pools, listen_required, &mut problems);
        check_migrations(&pools, &mut problems);
        if !problems.is_empty() {
            problems.sort_by_key(|p| p.line);
            return Err(invalid(problems));
        }
        pools.sort_by(|a, b| {
            (a.name.len(), a.name.as_bytes()).cmp(&(b.name.len(), b.name.as_bytes()))
        });
        Ok(Config { pools })
    }

    /// The pool called `name`.
    pub fn pool(&self, name: &str) -> Option<&PoolConfig> {
        self.pools.iter().find(|p| p.name == name)
    }

    /// The pool that `source` migrates to, if it migrates.
    pub fn migration_target(&self, source: &PoolConfig) -> Option<&PoolConfig> {
        source.migration_target().and_then(|name| self.pool(name))
    }

    /// The pools that serve clients (those with `listen:`).
    pub fn listening_pools(&self) -> impl Iterator<Item = &PoolConfig> {
        self.pools.iter().filter(|p| p.listen.is_some())
    }
}

/// Every pool needs a `listen:` unless it is a migration target; no two pools may share one.
fn check_listens(pools: &[PoolConfig], listen_required: bool, problems: &mut Vec<Problem>) {
    for (i, pool) in pools.iter().enumerate() {
        match &pool.listen {
            None if !listen_required => {}
            None => {
                let is_target = pools
                    .iter()
                    .any(|p| p.migration_target() == Some(pool.name.as_str()));
                if !is_target {
                    problems.push(
                        Problem::at(pool.line, "has no \"listen:\" address (only a pool named by another pool's migrate_to may omit it)")
                            .in_pool(&pool.name),
                    );
                }
            }
            Some(listen) => {
                if let Some(first) = pools[..i]
                    .iter()
                    .find(|p| p.listen.as_ref().map(Listen::identity) == Some(listen.identity()))
                {
                    problems.push(
                        Problem::at(
                            pool.line,
                            format!(
                                "listens on {listen}, which pool '{}' (line {}) already uses",
                                first.name, first.line
                            ),
                        )
                        .in_pool(&pool.name)
                        .for_key("listen"),
                    );
                }
            }
        }
    }
}

/// `migrate_to` must name another redis pool of this file that is not itself migrating,
/// and each target serves one source.
fn check_migrations(pools: &[PoolConfig], problems: &mut Vec<Problem>) {
    for (i, pool) in pools.iter().enumerate() {
        let Some(Migration {
            target: target_name,
            line,
            ..
        }) = &pool.migration
        else {
            continue;
        };
        let line = *line;
        let mut report = |message: String| {
            problems.push(
                Problem::at(line, message)
                    .in_pool(&pool.name)
                    .for_key("migrate_to"),
            )
        };
        if target_name == &pool.name {
            report("a pool cannot migrate to itself".to_string());
            continue;
        }
        let Some(target) = pools.iter().find(|p| &p.name == target_name) else {
            let names: Vec<&str> = pools
                .iter()
                .map(|p| p.name.as_str())
                .filter(|n| *n != pool.name)
                .collect();
            report(format!(
                "names pool '{target_name}', which is not in this file (pools: {})",
                names.join(", ")
            ));
            continue;
        };
        if target.migration.is_some() {
            report(format!(
                "target pool '{target_name}' is itself migrating; chained migrations are not supported"
            ));
        }
        if !pool.redis || !target.redis {
            report(
                "migration needs \"redis: true\" on both the source and the target pool"
                    .to_string(),
            );
        }
        if let Some(other) = pools[..i]
            .iter()
            .find(|p| p.migration_target() == Some(target_name.as_str()))
        {
            report(format!(
                "pool '{}' already migrates to '{target_name}'; a target serves one source",
                other.name
            ));
        }
    }
}
