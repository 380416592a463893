//! Clients connected straight to a source server, found in its `CLIENT LIST` before a
//! cutover: a writer among them would keep writing to the old servers after the flip.
//!
//! Every connection of cutover's names itself (`CLIENT SETNAME`) as part of its setup, so
//! a migration tells its own from the others. But a connection is listed from the moment
//! the server accepts it, and for that first moment (before the server has read its setup)
//! it is nameless and has sent nothing, like a client that never will. Such a connection
//! (nameless and having sent nothing but a handshake, or named like a replication stream
//! before its `PSYNC` makes it a replica) is only counted if a second look,
//! [`handshake_grace`] later, finds it still there and still not this migration's own.

use std::time::Duration;

use super::Migration;
use crate::upstream::{BackendError, CONNECTION_NAME_TEXT};

/// Longest wait for a source server's `CLIENT LIST` in a cutover's check (a server with
/// no `timeout:` that hangs must not hang the check).
const CLIENT_LIST_LIMIT: Duration = Duration::from_secs(2);

/// The last commands (`cmd=` in `CLIENT LIST`) of a connection that has sent nothing but
/// the setup a connection makes before its name: none yet (`NULL`), a password, a
/// protocol, a database, a replica's announcement.
const HANDSHAKE_COMMANDS: [&str; 5] = ["NULL", "auth", "hello", "select", "replconf"];

/// How long after the first look a connection in its handshake is looked at again: long
/// enough for a connection of cutover's own to have named itself on a busy machine, short
/// enough not to slow a refused cutover. A test that must act within the window stretches
/// it (`CUTOVER_TEST_HANDSHAKE_GRACE_MS`).
fn handshake_grace() -> Duration {
    static GRACE: std::sync::LazyLock<Duration> = std::sync::LazyLock::new(|| {
        std::env::var("CUTOVER_TEST_HANDSHAKE_GRACE_MS")
            .ok()
            .and_then(|ms| ms.parse().ok())
            .map_or(Duration::from_millis(250), Duration::from_millis)
    });
    *GRACE
}

/// The value of field `name` in one line of `CLIENT LIST` (`id=7 addr=... name=x ...`).
pub(super) fn client_field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split(' ')
        .find_map(|f| f.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
}

/// A connection to a source server that is not this migration's own.
struct Stranger {
    /// `id=`: the server's number for the connection, unique while it lives.
    id: String,
    /// How the refusal names it: address, name, last command.
    described: String,
}

/// What one `CLIENT LIST` of a source server holds besides this migration's own
/// connections and replicas.
#[derive(Default)]
struct Strangers {
    /// Clients that have sent more than a handshake, or have a name of their own.
    clients: Vec<Stranger>,
    /// Connections that have sent nothing but a handshake, nameless or named like a
    /// replication stream: perhaps a connection of cutover's own in its first moment.
    starting: Vec<Stranger>,
    /// The names of other cutover processes' connections (not in this one's fleet).
    processes: Vec<String>,
}

impl Strangers {
    /// Whether the connection numbered `id` is among them.
    fn holds(&self, id: &str) -> bool {
        self.clients
            .iter()
            .chain(&self.starting)
            .any(|s| s.id == id)
    }
}

impl Migration {
    /// Look again for clients connected straight to a source server (`/status` shows what
    /// was last found; a cutover looks again first).
    pub async fn refresh_direct_clients(&self) {
        let found = self.direct_clients().await;
        if let Ok(mut seen) = self.direct_seen.lock() {
            *seen = found;
        }
    }

    /// Clients connected straight to a source server that are not this migration's own
    /// (its connections are named after this process, or after their fleet member; the
    /// fleet flips together; replicas are left out): a writer among them would keep
    /// writing to the old servers after the flip. Another cutover process's connections
    /// count too, said apart: one outside this fleet flips on its own, and would keep
    /// serving from the old servers. One reason per server and kind.
    async fn direct_clients(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        for (server, s) in self.copy_source.servers.iter().enumerate() {
            let found = match self.strangers_confirmed(server).await {
                Ok(found) => found,
                Err(error) => {
                    reasons.push(format!(
                        "cannot list the clients of source server {} ({error}): a writer connected straight to it would go unseen; a cutover waits until it answers",
                        s.name
                    ));
                    continue;
                }
            };
            let mut processes = found.processes;
            processes.sort();
            processes.dedup();
            if let Some(first) = processes.first() {
                reasons.push(format!(
                    "{} other cutover processes are connected to source server {} (e.g. '{first}'), not in this one's fleet: each flips on its own, and would keep serving from the old servers after this cutover; stop them, run them all as one fleet (migrate.coordination), or force",
                    processes.len(),
                    s.name
                ));
            }
            if let Some(first) = found.clients.first() {
                reasons.push(format!(
                    "{} clients are connected straight to source server {} (e.g. {}): a writer among them would keep writing to the old servers after the cutover; stop them, or force",
                    found.clients.len(),
                    s.name,
                    first.described
                ));
            }
        }
        reasons
    }

    /// The strangers on source server `server`, with those in their handshake at the first
    /// look counted as clients only if the second look (after [`handshake_grace`]) still
    /// finds them there and not this migration's own, nor another cutover process's.
    async fn strangers_confirmed(&self, server: usize) -> Result<Strangers, BackendError> {
        let mut first = self.strangers(server).await?;
        if first.starting.is_empty() {
            return Ok(first);
        }
        tokio::time::sleep(handshake_grace()).await;
        let mut second = self.strangers(server).await?;
        let (counted, cleared): (Vec<_>, Vec<_>) = std::mem::take(&mut first.starting)
            .into_iter()
            .partition(|s| second.holds(&s.id));
        let [looked_cleared, looked_counted] = &self.counters.looked_twice;
        looked_cleared.increment(cleared.len() as u64);
        looked_counted.increment(counted.len() as u64);
        first.clients.extend(counted);
        // One that named itself after another cutover process meanwhile is one of those
        // (the names are counted once each).
        first.processes.append(&mut second.processes);
        Ok(first)
    }

    /// One look at source server `server`'s `CLIENT LIST`.
    async fn strangers(&self, server: usize) -> Result<Strangers, BackendError> {
        let own = String::from_utf8_lossy(&self.copy_source.connection_name()).into_owned();
        let in_fleet = self.copy_source.member().is_some();
        let mine = |name: &str| {
            name == own || (in_fleet && crate::upstream::connection_member(name).is_some())
        };
        let list = [b"CLIENT".as_slice(), b"LIST"];
        let reply = self
            .copy_source
            .call_within(server, 0, &list, CLIENT_LIST_LIMIT)
            .await?;
        let text = String::from_utf8_lossy(&reply);
        let mut found = Strangers::default();
        for line in text.lines() {
            let field = |name: &str| client_field(line, name);
            let name = field("name").unwrap_or("");
            let flags = field("flags").unwrap_or("");
            let cmd = field("cmd").unwrap_or("?");
            let (Some(id), Some(addr)) = (field("id"), field("addr")) else {
                continue;
            };
            if mine(name) || flags.contains('S') || flags.contains('M') {
                continue;
            }
            let stranger = || Stranger {
                id: id.to_string(),
                described: format!("{addr} (name '{name}', last command {cmd})"),
            };
            // A replication stream names itself before its `PSYNC`, and is a replica after.
            if name == CONNECTION_NAME_TEXT
                || (name.is_empty() && HANDSHAKE_COMMANDS.contains(&cmd))
            {
                found.starting.push(stranger());
            } else if crate::upstream::is_cutover_connection(name) {
                found.processes.push(name.to_string());
            } else {
                found.clients.push(stranger());
            }
        }
        Ok(found)
    }
}
