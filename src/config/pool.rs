//! One pool: its keys, with nutcracker's defaults, read from a YAML mapping.

use std::time::Duration;

use crate::hash::{Distribution, HashKind, HashTag, Placement, PlacementServer};

use super::error::Problem;
use super::listen::{self, Listen};
use super::migrate::{self, MigrateSettings};
use super::server::{self, ServerConfig};
use super::values;
use super::yaml::{Node, NodeKind};

/// One pool of a nutcracker config.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// The pool's name (its top-level key).
    pub name: String,
    /// Line of the pool's name in the file.
    pub line: usize,
    /// Where clients connect; `None` only for a pool that is a migration target.
    pub listen: Option<Listen>,
    /// Key hash (`hash:`, default `fnv1a_64`).
    pub hash: HashKind,
    /// Hash tag delimiters, if any.
    pub hash_tag: Option<HashTag>,
    /// Distribution (`distribution:`, default `ketama`).
    pub distribution: Distribution,
    /// Per-request server timeout; `None` waits forever (nutcracker's -1 default, or 0).
    pub timeout: Option<Duration>,
    /// TCP listen backlog (default 512).
    pub backlog: u32,
    /// `client_connections` as written (nutcracker parses it and then ignores it).
    pub client_connections: u32,
    /// Whether the backends speak Redis (`redis: true`) rather than memcached.
    pub redis: bool,
    /// Password clients must AUTH with, and the proxy sends to every backend.
    pub redis_auth: Option<String>,
    /// Database selected on every backend connection (default 0).
    pub redis_db: u32,
    /// Connect to every server at startup.
    pub preconnect: bool,
    /// Eject servers after `server_failure_limit` consecutive failures.
    pub auto_eject_hosts: bool,
    /// Connections per backend server (default 1, never 0).
    pub server_connections: u32,
    /// How long an ejected server stays out (default 30 s).
    pub server_retry_timeout: Duration,
    /// Consecutive failures that eject a server (default 2).
    pub server_failure_limit: u32,
    /// Enable TCP keepalive (nutcracker 0.5.0 applies it to client sockets only).
    pub tcpkeepalive: bool,
    /// The servers, sorted by name as nutcracker sorts them.
    pub servers: Vec<ServerConfig>,
    /// The migration this pool is the source of (`migrate_to:` and `migrate:`), if any.
    pub migration: Option<Migration>,
}

/// A pool's migration: where its data goes and how.
#[derive(Debug, Clone, PartialEq)]
pub struct Migration {
    /// The target pool's name (`migrate_to:`).
    pub target: String,
    /// Line of `migrate_to:`, for cross-pool messages.
    pub line: usize,
    /// The `migrate:` settings, defaults where absent.
    pub settings: MigrateSettings,
}

/// Every key a pool accepts: nutcracker's, then cutover's extensions.
pub const POOL_KEYS: [&str; 20] = [
    "listen",
    "hash",
    "hash_tag",
    "distribution",
    "timeout",
    "backlog",
    "client_connections",
    "redis",
    "redis_auth",
    "redis_db",
    "preconnect",
    "auto_eject_hosts",
    "server_connections",
    "server_retry_timeout",
    "server_failure_limit",
    "tcpkeepalive",
    "servers",
    "migrate_to",
    "migrate",
    // Present at nutcracker HEAD (after 0.5.0); accepted and ignored for compatibility.
    "reuseport",
];

impl PoolConfig {
    /// What decides where a key goes and into which database: the hash, the hash tag,
    /// the distribution, whether failing servers are ejected (their keys then go to
    /// others), the database, and each server's name, address and weight in name order
    /// (the order placement takes them in). Two pools with the same text
    /// place every key alike; a fleet's members must agree on it (rule 16).
    pub fn placement_text(&self) -> String {
        let mut servers: Vec<&ServerConfig> = self.servers.iter().collect();
        servers.sort_by(|a, b| a.name.cmp(&b.name));
        let servers: Vec<String> = servers
            .iter()
            .map(|s| format!("{} at {} weight {}", s.name, s.addr, s.weight))
            .collect();
        let tag = self
            .hash_tag
            .map(|t| format!("\"{}{}\"", char::from(t.open), char::from(t.close)))
            .unwrap_or_else(|| "none".to_string());
        format!(
            "hash {}, hash_tag {tag}, distribution {}, auto_eject_hosts {}, db {}, servers {}",
            self.hash.name(),
            self.distribution.name(),
            self.auto_eject_hosts,
            self.redis_db,
            servers.join(", ")
        )
    }

    /// A pool with nutcracker's defaults and no servers.
    fn with_defaults(name: &str, line: usize) -> PoolConfig {
        PoolConfig {
            name: name.to_string(),
            line,
            listen: None,
            hash: HashKind::Fnv1a64,
            hash_tag: None,
            distribution: Distribution::Ketama,
            timeout: None,
            backlog: 512,
            client_connections: 0,
            redis: false,
            redis_auth: None,
            redis_db: 0,
            preconnect: false,
            auto_eject_hosts: false,
            server_connections: 1,
            server_retry_timeout: Duration::from_millis(30_000),
            server_failure_limit: 2,
            tcpkeepalive: false,
            servers: Vec::new(),
            migration: None,
        }
    }

    /// Read pool `name` from its mapping node. Problems are pushed (attributed to the
    /// pool); the pool is returned even when some keys were wrong, so later checks run.
    pub(super) fn read(
        name: &str,
        line: usize,
        node: &Node,
        problems: &mut Vec<Problem>,
    ) -> PoolConfig {
        let mut pool = PoolConfig::with_defaults(name, line);
        let mut found = Vec::new();
        let NodeKind::Map(entries) = &node.kind else {
            problems.push(
                Problem::at(
                    node.line,
                    format!("must be a mapping of pool keys, not {}", node.shape()),
                )
                .in_pool(name),
            );
            return pool;
        };
        let mut seen: Vec<(&str, usize)> = Vec::new();
        let mut settings: Option<MigrateSettings> = None;
        for (key_node, value) in entries {
            let line = key_node.line;
            let Some(key) = key_node.as_scalar() else {
                found.push(Problem::at(
                    line,
                    format!("a key must be a plain word, not {}", key_node.shape()),
                ));
                continue;
            };
            if let Some((_, first)) = seen.iter().find(|(k, _)| *k == key) {
                found.push(
                    Problem::at(line, format!("is a duplicate (first set on line {first})"))
                        .for_key(key),
                );
                continue;
            }
            seen.push((key, line));
            match (key, &value.kind) {
                ("servers", _) => pool.servers = read_servers(value, &mut found),
                ("migrate", _) => settings = Some(migrate::parse(value, &mut found)),
                (_, NodeKind::Scalar(text)) => {
                    if let Err(message) = pool.apply(key, text, line) {
                        found.push(Problem::at(line, message).for_key(key));
                    }
                }
                _ if !POOL_KEYS.contains(&key) => found.push(unknown_key(key, line)),
                _ => found.push(
                    Problem::at(
                        value.line,
                        format!("must be a single value, not {}", value.shape()),
                    )
                    .for_key(key),
                ),
            }
        }
        if !seen.iter().any(|(k, _)| *k == "servers") {
            found.push(Problem::at(line, "has no \"servers:\" list"));
        }
        if pool.redis_auth.is_some() && !pool.redis {
            let auth_line = seen
                .iter()
                .find(|(k, _)| *k == "redis_auth")
                .map_or(line, |(_, l)| *l);
            found.push(
                Problem::at(
                    auth_line,
                    "is only valid for a redis pool (add \"redis: true\")",
                )
                .for_key("redis_auth"),
            );
        }
        match (&mut pool.migration, settings) {
            (Some(migration), Some(settings)) => migration.settings = settings,
            (None, Some(_)) => {
                let line = seen
                    .iter()
                    .find(|(k, _)| *k == "migrate")
                    .map_or(line, |(_, l)| *l);
                found.push(
                    Problem::at(line, "has no effect without \"migrate_to: POOL\"")
                        .for_key("migrate"),
                );
            }
            _ => {}
        }
        problems.extend(found.into_iter().map(|p| p.in_pool(name)));
        pool
    }

    /// Set one scalar key from its text.
    fn apply(&mut self, key: &str, text: &str, line: usize) -> Result<(), String> {
        let int = |max: u64| values::number(text, max);
        match key {
            "listen" => self.listen = Some(listen::parse(text)?),
            "hash" => {
                self.hash = HashKind::from_name(text).ok_or_else(|| {
                    let names: Vec<_> = HashKind::ALL.iter().map(|(_, n)| *n).collect();
                    format!(
                        "\"{text}\" is not a valid hash (one of {})",
                        names.join(", ")
                    )
                })?
            }
            "hash_tag" => {
                let &[open, close] = text.as_bytes() else {
                    return Err(format!(
                        "\"{text}\" is not a valid hash tag: it must be exactly two characters, such as \"{{}}\""
                    ));
                };
                self.hash_tag = Some(HashTag { open, close });
            }
            "distribution" => {
                self.distribution = Distribution::from_name(text).ok_or_else(|| {
                    format!("\"{text}\" is not a valid distribution (ketama, modula or random)")
                })?
            }
            "timeout" => {
                let ms = int(i32::MAX as u64)?;
                self.timeout = (ms > 0).then(|| Duration::from_millis(ms));
            }
            "backlog" => self.backlog = int(i32::MAX as u64)? as u32,
            "client_connections" => self.client_connections = int(i32::MAX as u64)? as u32,
            "redis" => self.redis = values::boolean(text)?,
            "redis_auth" => self.redis_auth = Some(text.to_string()),
            "redis_db" => self.redis_db = int(i32::MAX as u64)? as u32,
            "preconnect" => self.preconnect = values::boolean(text)?,
            "auto_eject_hosts" => self.auto_eject_hosts = values::boolean(text)?,
            "server_connections" => match int(i32::MAX as u64)? {
                0 => return Err("cannot be 0".to_string()),
                n => self.server_connections = n as u32,
            },
            "server_retry_timeout" => {
                self.server_retry_timeout = Duration::from_millis(int(i32::MAX as u64)?)
            }
            "server_failure_limit" => self.server_failure_limit = int(i32::MAX as u64)? as u32,
            "tcpkeepalive" => self.tcpkeepalive = values::boolean(text)?,
            "reuseport" => {
                values::boolean(text)?;
            }
            "migrate_to" if text.is_empty() => {
                return Err("must name a pool in this file".to_string());
            }
            "migrate_to" => {
                self.migration = Some(Migration {
                    target: text.to_string(),
                    line,
                    settings: MigrateSettings::default(),
                })
            }
            _ => return Err(unknown_key(key, line).message),
        }
        Ok(())
    }

    /// The name of the pool this pool migrates to, if any.
    pub fn migration_target(&self) -> Option<&str> {
        self.migration.as_ref().map(|m| m.target.as_str())
    }

    /// The pool's key placement, with every server live.
    pub fn placement(&self) -> Placement {
        let servers = self
            .servers
            .iter()
            .map(|s| PlacementServer {
                name: s.name.as_bytes().to_vec(),
                weight: s.weight,
            })
            .collect();
        Placement::new(self.hash, self.hash_tag, self.distribution, servers)
    }
}

/// An unknown pool key, with the nearest known key when it looks like a typo.
fn unknown_key(key: &str, line: usize) -> Problem {
    let hint = values::suggestion(key, POOL_KEYS)
        .map(|k| format!("; did you mean \"{k}\"?"))
        .unwrap_or_default();
    Problem::at(line, format!("directive \"{key}\" is unknown{hint}")).for_key(key)
}

/// Read the `servers:` sequence: parse each line, reject duplicate names, sort by name.
fn read_servers(node: &Node, problems: &mut Vec<Problem>) -> Vec<ServerConfig> {
    let NodeKind::Seq(items) = &node.kind else {
        let message = match node.as_scalar() {
            Some("") => {
                "is empty; list at least one \"- host:port:weight [name]\" line".to_string()
            }
            _ => format!(
                "must be a sequence of \"- host:port:weight [name]\" lines, not {}",
                node.shape()
            ),
        };
        problems.push(Problem::at(node.line, message).for_key("servers"));
        return Vec::new();
    };
    if items.is_empty() {
        problems
            .push(Problem::at(node.line, "is empty; list at least one server").for_key("servers"));
    }
    let mut servers: Vec<(ServerConfig, usize)> = Vec::new();
    for item in items {
        let Some(text) = item.as_scalar() else {
            problems.push(
                Problem::at(
                    item.line,
                    format!("each server must be one line of text, not {}", item.shape()),
                )
                .for_key("servers"),
            );
            continue;
        };
        match server::parse(text) {
            Ok(s) => {
                if let Some((first, first_line)) = servers.iter().find(|(o, _)| o.name == s.name) {
                    problems.push(
                        Problem::at(
                            item.line,
                            format!(
                                "\"{text}\" has the same name \"{}\" as \"{}\" on line {first_line}; server names must be unique",
                                s.name, first.pname
                            ),
                        )
                        .for_key("servers"),
                    );
                    continue;
                }
                servers.push((s, item.line));
            }
            Err(message) => problems.push(Problem::at(item.line, message).for_key("servers")),
        }
    }
    let mut servers: Vec<ServerConfig> = servers.into_iter().map(|(s, _)| s).collect();
    server::sort_by_name(&mut servers);
    servers
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    /// The placement text of the only pool of a config with these server lines and keys.
    fn placement(servers: &[&str], keys: &str) -> String {
        let mut text = format!("p:\n  listen: 127.0.0.1:1\n  redis: true\n{keys}  servers:\n");
        for server in servers {
            text.push_str(&format!("   - {server}\n"));
        }
        Config::parse(&text, "t.yml").expect("config").pools[0].placement_text()
    }

    #[test]
    fn placement_text_ignores_server_order_and_tells_what_places_keys_apart() {
        let base = placement(&["127.0.0.1:7001:1", "127.0.0.1:7002:1"], "");
        assert_eq!(
            base,
            placement(&["127.0.0.1:7002:1", "127.0.0.1:7001:1"], ""),
            "placement takes servers in name order"
        );
        for other in [
            placement(&["127.0.0.1:7001:1"], ""),
            placement(&["127.0.0.1:7001:1", "127.0.0.1:7002:2"], ""),
            placement(&["127.0.0.1:7001:1", "127.0.0.1:7003:1"], ""),
            placement(&["127.0.0.1:7001:1", "127.0.0.1:7002:1"], "  hash: md5\n"),
            placement(
                &["127.0.0.1:7001:1", "127.0.0.1:7002:1"],
                "  hash_tag: \"{}\"\n",
            ),
            placement(
                &["127.0.0.1:7001:1", "127.0.0.1:7002:1"],
                "  distribution: modula\n",
            ),
            placement(&["127.0.0.1:7001:1", "127.0.0.1:7002:1"], "  redis_db: 2\n"),
            placement(
                &["127.0.0.1:7001:1", "127.0.0.1:7002:1"],
                "  auto_eject_hosts: true\n",
            ),
        ] {
            assert_ne!(base, other);
        }
    }
}
