//! Reload without a restart (`SIGUSR1`, or `POST /reload`): the config file is read again
//! and what can change on a live pool without dropping a client is applied; anything
//! else that changed is refused as a whole, with line-accurate reasons as `-t` gives them,
//! and nothing changes.
//!
//! What a reload applies:
//! - `migrate_to:` (and its `migrate:` settings) added to a listening pool, with its
//!   target pool: the migration starts. Writes are mirrored from the moment it is
//!   attached; the backfill starts once every request that was routed before (and so not
//!   mirrored) has been answered by the source, so every key it copies already holds
//!   those writes.
//! - The `migrate:` keys with runtime meaning on a running migration
//!   ([`RUNTIME_SETTINGS`]): rate limits, shadow ratio, TTL tolerance.
//!
//! Refused: a pool added or removed (but a new migration's target), any other pool key
//! changed (listen, servers, hash, distribution, timeouts, ...), a migration removed or
//! pointed elsewhere, a `migrate:` key without runtime meaning changed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::Served;
use crate::config::{Config, ConfigError, MigrateSettings, PoolConfig, Problem};
use crate::migrate::{Migration, RUNTIME_SETTINGS};

/// Longest wait for the requests routed before a new migration to be queued.
const ROUTED_WAIT: Duration = Duration::from_secs(10);

/// What a reload does.
#[derive(Debug)]
enum Change {
    /// Start migrating listening pool `pool` to `target`.
    StartMigration {
        /// The source pool's new config (with its `migrate_to`).
        pool: Box<PoolConfig>,
        /// The target pool's config.
        target: Box<PoolConfig>,
    },
    /// Apply the runtime settings of the migration of `pool`.
    Settings {
        /// The pool.
        pool: String,
        /// The new settings.
        settings: MigrateSettings,
    },
}

/// Reloads the config of a running proxy.
pub struct Reloader {
    /// The config file.
    path: PathBuf,
    /// The config running now (replaced by each applied reload).
    running: tokio::sync::Mutex<Config>,
    /// The served pools.
    pools: Vec<Arc<Served>>,
}

impl Reloader {
    /// A reloader of `path`, whose config `running` serves `pools`.
    pub fn new(path: PathBuf, running: Config, pools: Vec<Arc<Served>>) -> Reloader {
        Reloader {
            path,
            running: tokio::sync::Mutex::new(running),
            pools,
        }
    }

    /// Read the file again and apply what it changed; what was done, in words, or why
    /// nothing was (as `-t` says it: `FILE:LINE: pool 'P': KEY: what`).
    pub async fn reload(&self) -> Result<Vec<String>, ConfigError> {
        let new = Config::load(&self.path)?;
        let mut running = self.running.lock().await;
        let changes = plan(&running, &new).map_err(|problems| ConfigError::Invalid {
            source_name: self.path.display().to_string(),
            problems,
        })?;
        let mut done = Vec::new();
        for change in changes {
            done.push(self.apply(change).await);
        }
        *running = new;
        if done.is_empty() {
            done.push("nothing changed".to_string());
        }
        for line in &done {
            tracing::info!(file = %self.path.display(), "reload: {line}");
        }
        Ok(done)
    }

    /// Carry out one change.
    async fn apply(&self, change: Change) -> String {
        match change {
            Change::Settings { pool, settings } => {
                if let Some(m) = self.served(&pool).and_then(|s| s.migration()) {
                    m.apply_settings(&settings);
                }
                format!("pool '{pool}': migrate settings applied")
            }
            Change::StartMigration { pool, target } => {
                let Some(served) = self.served(&pool.name) else {
                    return format!("pool '{}': not served", pool.name);
                };
                let migration = Migration::start_with(served.pool.clone(), &pool, &target, false);
                if !served.attach(migration.clone()) {
                    return format!("pool '{}': already migrating", pool.name);
                }
                // Requests that looked for a migration before it was attached go unmirrored:
                // wait until each is queued, then until the source answered everything
                // queued so far. Every key the backfill copies from then on holds them.
                let deadline = tokio::time::Instant::now() + ROUTED_WAIT;
                while !served.routing.empty() && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                migration.spawn_backfill_once_answered();
                format!(
                    "pool '{}': migration to '{}' started",
                    pool.name, target.name
                )
            }
        }
    }

    /// The served pool called `name`.
    fn served(&self, name: &str) -> Option<&Arc<Served>> {
        self.pools.iter().find(|s| s.name() == name)
    }
}

/// The changes from `running` to `new`, or every reason they cannot be applied.
fn plan(running: &Config, new: &Config) -> Result<Vec<Change>, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut changes = Vec::new();
    // Target pools of migrations this reload starts: the only pools it may add.
    let mut new_targets = Vec::new();
    for old in &running.pools {
        let Some(pool) = new.pool(&old.name) else {
            problems.push(
                Problem::at(
                    0,
                    "removed; a reload cannot remove a pool (restart cutover)",
                )
                .in_pool(&old.name),
            );
            continue;
        };
        for key in changed_keys(old, pool) {
            problems.push(
                Problem::at(pool.line, "changed; a reload applies only migrate_to and migrate settings (restart cutover to change this)")
                    .in_pool(&pool.name)
                    .for_key(key),
            );
        }
        match (&old.migration, &pool.migration) {
            (None, None) => {}
            (None, Some(m)) => match new.migration_target(pool) {
                Some(target) if old.listen.is_some() => {
                    new_targets.push(target.name.clone());
                    changes.push(Change::StartMigration {
                        pool: Box::new(pool.clone()),
                        target: Box::new(target.clone()),
                    });
                }
                _ => problems.push(
                    Problem::at(
                        m.line,
                        "a migration can start on a reload only from a listening pool",
                    )
                    .in_pool(&pool.name)
                    .for_key("migrate_to"),
                ),
            },
            (Some(_), None) => problems.push(
                Problem::at(
                    pool.line,
                    "removed; a running migration is ended by finalize, not by a reload",
                )
                .in_pool(&pool.name)
                .for_key("migrate_to"),
            ),
            (Some(a), Some(b)) => {
                if a.target != b.target {
                    problems.push(
                        Problem::at(b.line, "changed; a running migration keeps its target")
                            .in_pool(&pool.name)
                            .for_key("migrate_to"),
                    );
                }
                let fixed = fixed_settings_changed(&a.settings, &b.settings);
                for key in &fixed {
                    problems.push(
                        Problem::at(b.line, format!("changed; only {} change on a running migration (restart cutover to change this)", RUNTIME_SETTINGS.join(", ")))
                            .in_pool(&pool.name)
                            .for_key(&format!("migrate.{key}")),
                    );
                }
                if fixed.is_empty() && a.settings != b.settings {
                    changes.push(Change::Settings {
                        pool: pool.name.clone(),
                        settings: b.settings.clone(),
                    });
                }
            }
        }
    }
    for pool in &new.pools {
        if running.pool(&pool.name).is_none() && !new_targets.contains(&pool.name) {
            problems.push(
                Problem::at(pool.line, "added; a reload can add a pool only as the target of a migration it starts (restart cutover)")
                    .in_pool(&pool.name),
            );
        }
    }
    if problems.is_empty() {
        Ok(changes)
    } else {
        problems.sort_by_key(|p| p.line);
        Err(problems)
    }
}

/// The names of the fields of `old` and `new` that differ, in the order listed (each
/// field is named as its config key).
macro_rules! differing_fields {
    ($old:expr, $new:expr, [$($field:ident),+ $(,)?]) => {{
        let mut keys: Vec<&'static str> = Vec::new();
        $(
            if $old.$field != $new.$field {
                keys.push(stringify!($field));
            }
        )+
        keys
    }};
}

/// The keys of `new` that differ from `old`, but for the migration's.
fn changed_keys(old: &PoolConfig, new: &PoolConfig) -> Vec<&'static str> {
    differing_fields!(
        old,
        new,
        [
            listen,
            hash,
            hash_tag,
            distribution,
            timeout,
            backlog,
            client_connections,
            redis,
            redis_auth,
            redis_db,
            preconnect,
            auto_eject_hosts,
            server_connections,
            server_retry_timeout,
            server_failure_limit,
            tcpkeepalive,
            servers
        ]
    )
}

/// The `migrate:` keys without runtime meaning that differ.
fn fixed_settings_changed(old: &MigrateSettings, new: &MigrateSettings) -> Vec<&'static str> {
    differing_fields!(
        old,
        new,
        [
            lanes,
            scan_count,
            copies_in_flight,
            copy_limit_bytes,
            structural_copy,
            mirror_queue_limit,
            state_file,
            capture
        ]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(text, "test.yml").expect("valid config")
    }

    const PLAIN: &str =
        "app:\n  listen: 127.0.0.1:22121\n  redis: true\n  servers:\n   - 127.0.0.1:7001:1\n";
    const MIGRATING: &str = "app:\n  listen: 127.0.0.1:22121\n  redis: true\n  servers:\n   - 127.0.0.1:7001:1\n  migrate_to: fleet\n  migrate:\n    shadow_ratio: 0.5\nfleet:\n  redis: true\n  servers:\n   - 127.0.0.1:7002:1\n";

    #[test]
    fn adding_a_migration_starts_it() {
        let changes = plan(&config(PLAIN), &config(MIGRATING)).expect("allowed");
        assert!(
            matches!(&changes[..], [Change::StartMigration { pool, target }] if pool.name == "app" && target.name == "fleet")
        );
    }

    #[test]
    fn runtime_settings_apply_and_others_are_refused() {
        let faster = MIGRATING.replace(
            "shadow_ratio: 0.5",
            "shadow_ratio: 0.1\n    backfill_keys_per_second: 100",
        );
        let changes = plan(&config(MIGRATING), &config(&faster)).expect("allowed");
        assert!(matches!(&changes[..], [Change::Settings { .. }]));
        let lanes = MIGRATING.replace("shadow_ratio: 0.5", "lanes: 4");
        let problems = plan(&config(MIGRATING), &config(&lanes)).expect_err("refused");
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].key.as_deref(), Some("migrate.lanes"));
        assert_eq!(problems[0].line, 6, "the migrate_to line");
    }

    #[test]
    fn other_changes_are_refused_with_their_lines() {
        let moved = PLAIN.replace("7001", "7009");
        let problems = plan(&config(PLAIN), &config(&moved)).expect_err("refused");
        assert_eq!(problems[0].key.as_deref(), Some("servers"));
        assert_eq!(problems[0].pool.as_deref(), Some("app"));
        assert_eq!(problems[0].line, 1);
        let added = format!(
            "{PLAIN}other:\n  listen: 127.0.0.1:22122\n  redis: true\n  servers:\n   - 127.0.0.1:7003:1\n"
        );
        assert!(plan(&config(PLAIN), &config(&added)).is_err());
        assert!(
            plan(&config(MIGRATING), &config(PLAIN)).is_err(),
            "a migration is not removed by a reload"
        );
        assert!(
            plan(&config(PLAIN), &config(PLAIN))
                .expect("same")
                .is_empty()
        );
    }
}
