//! A server pool at run time: its servers and their connections, the current placement
//! (rebuilt when servers are ejected and when they come back), and its counters.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use super::backend::{self, BackendError, BackendRequest, ReplyResult};
use super::counters::{PoolCounters, ServerCounters};
use super::fence::SendFence;
use super::hook::ReplyHook;
use super::version;
use crate::config::{PoolConfig, ServerAddr};
use crate::hash::Placement;
use crate::resp::Protocol;

/// Requests that may wait for one backend connection before senders have to wait.
const CONNECTION_QUEUE: usize = 4096;

/// One backend server of a pool.
pub struct Server {
    /// Its index in the pool's name-sorted server list.
    pub index: usize,
    /// Its identity (stats key, metrics label).
    pub name: String,
    /// Where to connect.
    pub addr: ServerAddr,
    /// Senders to its `server_connections` RESP2 connection tasks.
    pub connections: Vec<mpsc::Sender<BackendRequest>>,
    /// Senders to as many RESP3 connection tasks (opened with `HELLO 3` on first use), for
    /// clients that switched to RESP3: their replies come from the server already in RESP3.
    pub resp3_connections: Vec<mpsc::Sender<BackendRequest>>,
    /// The server's `redis_version`, learned on its first connection.
    pub version: std::sync::Mutex<Option<String>>,
    /// Per connection (RESP2 ones, then RESP3 ones): the sequence number of its oldest
    /// mirrored write in flight (`u64::MAX`: none), for the migration's low-water mark.
    pub write_marks: Vec<AtomicU64>,
    /// Its counters.
    pub counters: ServerCounters,
    /// Consecutive failures since the last success.
    failures: AtomicU32,
    /// Pool-clock millisecond until which it is ejected (0 = live).
    ejected_until_ms: AtomicU64,
}

/// How a server fares now, for `/status` and `cutover ctl status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServerState {
    /// Its name (stats key, metrics label).
    pub name: String,
    /// Where it is.
    pub address: String,
    /// Open connections to it.
    pub connections: u64,
    /// Failures since its last answer (a connection refused or broken, a request timed
    /// out, an `-OOM`/`-BUSY`/`-LOADING` reply); 0 while it answers. An ejection starts
    /// the count again.
    pub failing: u32,
    /// Whether it is ejected now (`auto_eject_hosts`): its keys go to the other servers.
    pub ejected: bool,
}

impl ServerState {
    /// What is wrong with it, in words (`None`: it answers): ejected, or how many times
    /// it failed since its last answer.
    pub fn trouble(&self) -> Option<String> {
        match (self.ejected, self.failing) {
            (true, _) => Some("ejected".to_string()),
            (false, 0) => None,
            (false, 1) => Some("1 failure since its last answer".to_string()),
            (false, n) => Some(format!("{n} failures since its last answer")),
        }
    }
}

/// A pool at run time.
pub struct Pool {
    /// The pool's configuration.
    pub config: PoolConfig,
    /// Its servers, in name-sorted order.
    pub servers: Vec<Server>,
    /// Its counters.
    pub counters: PoolCounters,
    /// The placement over the servers live now.
    placement: ArcSwap<Placement>,
    /// The placement with every server live (rebuilt from on changes).
    full_placement: Placement,
    /// The pool clock's zero.
    clock: Instant,
    /// Pool-clock millisecond of the next ejected server's return (`u64::MAX`: none).
    next_return_ms: AtomicU64,
    /// Whether failing servers are ejected now: `auto_eject_hosts`, unless a migration
    /// turned it off because the pool is the side it keeps equal (rule 18).
    ejecting: AtomicBool,
    /// Serializes placement rebuilds.
    rebuild: std::sync::Mutex<()>,
    /// A fleet member's send fence, checked by every connection before it writes.
    fence: std::sync::OnceLock<Arc<SendFence>>,
    /// The fleet member whose connections these are (they are named after it).
    member: Option<String>,
}

/// Where one key goes: the server and which of its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// Server index.
    pub server: usize,
    /// Connection index within the server.
    pub connection: usize,
}

impl Pool {
    /// Fence the pool's connections with a fleet member's `fence` (rule 15): past it,
    /// nothing is written to its servers. Set once; later calls change nothing.
    pub fn set_fence(&self, fence: Arc<SendFence>) {
        let _ = self.fence.set(fence);
    }

    /// The fleet member this pool's connections belong to, if any.
    pub fn member(&self) -> Option<&str> {
        self.member.as_deref()
    }

    /// The name the pool's connections give themselves: `cutover.<member>` in a fleet,
    /// else this process's own ([`super::process_connection_name`]).
    pub fn connection_name(&self) -> Vec<u8> {
        match &self.member {
            Some(member) => format!("{}.{member}", super::CONNECTION_NAME_TEXT).into_bytes(),
            None => super::process_connection_name().as_bytes().to_vec(),
        }
    }

    /// Whether the pool's connections must not write now (a fleet member whose lease may
    /// be expiring).
    pub fn fenced(&self) -> bool {
        !*BREAK_SEND_FENCE && self.fence.get().is_some_and(|f| f.closed())
    }

    /// Whether the fence lapsed since a request was stamped with `epoch` (rule 15).
    pub fn lapsed_since(&self, epoch: Option<u64>) -> bool {
        !*BREAK_SEND_FENCE
            && matches!((epoch, self.fence.get()), (Some(epoch), Some(f)) if f.lapses() != epoch)
    }

    /// Build the pool and start its connection tasks (on the current tokio runtime).
    pub fn start(config: PoolConfig) -> Arc<Pool> {
        Pool::start_named(config, None)
    }

    /// [`Pool::start`], with its connections named `cutover.<member>` (`CLIENT SETNAME`)
    /// when `member` is a fleet member's id, so a leader can tell them apart (rule 15).
    pub fn start_named(config: PoolConfig, member: Option<&str>) -> Arc<Pool> {
        let full_placement = config.placement();
        let mut receivers = Vec::new();
        let servers = config
            .servers
            .iter()
            .enumerate()
            .map(|(index, s)| {
                let mut open = |protocol: Protocol| -> Vec<mpsc::Sender<BackendRequest>> {
                    (0..config.server_connections as usize)
                        .map(|c| {
                            let (tx, rx) = mpsc::channel(CONNECTION_QUEUE);
                            let mark = if protocol == Protocol::Resp2 {
                                c
                            } else {
                                config.server_connections as usize + c
                            };
                            receivers.push((index, mark, rx, protocol));
                            tx
                        })
                        .collect()
                };
                let connections = open(Protocol::Resp2);
                let resp3_connections = open(Protocol::Resp3);
                Server {
                    index,
                    name: s.name.clone(),
                    addr: s.addr.clone(),
                    connections,
                    resp3_connections,
                    version: std::sync::Mutex::new(None),
                    write_marks: (0..2 * config.server_connections)
                        .map(|_| AtomicU64::new(u64::MAX))
                        .collect(),
                    counters: ServerCounters::new(&config.name, &s.name),
                    failures: AtomicU32::new(0),
                    ejected_until_ms: AtomicU64::new(0),
                }
            })
            .collect();
        let pool = Arc::new(Pool {
            counters: PoolCounters::new(&config.name),
            servers,
            placement: ArcSwap::from_pointee(full_placement.clone()),
            full_placement,
            clock: Instant::now(),
            next_return_ms: AtomicU64::new(u64::MAX),
            ejecting: AtomicBool::new(config.auto_eject_hosts),
            rebuild: std::sync::Mutex::new(()),
            fence: std::sync::OnceLock::new(),
            member: member.map(str::to_string),
            config,
        });
        for (index, mark, rx, protocol) in receivers {
            tokio::spawn(backend::run(pool.clone(), index, mark, rx, protocol));
        }
        for index in 0..pool.servers.len() {
            tokio::spawn(version::probe(pool.clone(), index));
        }
        pool
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Where `key` goes now, or `None` when no server is live.
    pub fn route(&self, key: &[u8]) -> Option<Route> {
        if self.ejecting.load(Relaxed) {
            self.return_due_servers();
        }
        let placement = self.placement.load();
        let server = placement.continuum().lookup(placement.key_hash(key))?;
        let count = self.servers[server].connections.len();
        let connection = if count == 1 {
            0
        } else {
            connection_hash(key) as usize % count
        };
        Some(Route { server, connection })
    }

    /// Milliseconds on the pool clock.
    fn now_ms(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }

    /// A request to `server` succeeded: reset its failure count.
    pub fn server_ok(&self, server: usize) {
        let failures = &self.servers[server].failures;
        if failures.load(Relaxed) != 0 {
            failures.store(0, Relaxed);
        }
    }

    /// `server` failed (refused, timed out, broke, or answered -OOM/-BUSY/-LOADING).
    /// With `auto_eject_hosts`, `server_failure_limit` consecutive failures eject it for
    /// `server_retry_timeout`, and keys are placed over the remaining servers.
    pub fn server_failed(&self, server: usize) {
        let s = &self.servers[server];
        s.counters.failures_metric.increment(1);
        let failures = s.failures.fetch_add(1, Relaxed) + 1;
        if !self.ejecting.load(Relaxed) || failures < self.config.server_failure_limit {
            return;
        }
        s.failures.store(0, Relaxed);
        let until = self.now_ms() + self.config.server_retry_timeout.as_millis() as u64;
        s.ejected_until_ms.store(until.max(1), Relaxed);
        if !self.ejecting.load(Relaxed) {
            // Ejection was turned off meanwhile; `set_ejecting` may have cleared the
            // servers before this store.
            s.ejected_until_ms.store(0, Relaxed);
            return;
        }
        let epoch_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        s.counters.server_ejected_at.store(epoch_us, Relaxed);
        s.counters.ejections_metric.increment(1);
        self.counters.server_ejects.fetch_add(1, Relaxed);
        tracing::warn!(pool = self.name(), server = %s.name, retry_ms = self.config.server_retry_timeout.as_millis() as u64, "server ejected");
        self.rebuild_placement();
    }

    /// How each server fares now.
    pub fn server_states(&self) -> Vec<ServerState> {
        self.servers
            .iter()
            .map(|s| ServerState {
                name: s.name.clone(),
                address: s.addr.to_string(),
                connections: s.counters.server_connections.load(Relaxed).max(0) as u64,
                failing: s.failures.load(Relaxed),
                ejected: s.ejected_until_ms.load(Relaxed) != 0,
            })
            .collect()
    }

    /// Eject failing servers as `auto_eject_hosts` says (`true`), or never (`false`: every
    /// key goes to its own server, and a request for one that is down fails). Turning it
    /// off brings ejected servers back at once.
    pub fn set_ejecting(&self, on: bool) {
        let on = on && self.config.auto_eject_hosts;
        if self.ejecting.swap(on, Relaxed) == on || on {
            return;
        }
        for server in &self.servers {
            server.ejected_until_ms.store(0, Relaxed);
        }
        self.rebuild_placement();
    }

    /// Times a server of the pool was ejected since it started.
    pub fn ejections(&self) -> u64 {
        self.counters.server_ejects.load(Relaxed)
    }

    /// The servers ejected now (a server whose retry time has come counts as back: the
    /// next request routed brings it back).
    pub fn ejected_servers(&self) -> Vec<&str> {
        let now = self.now_ms();
        self.servers
            .iter()
            .filter(|s| s.ejected_until_ms.load(Relaxed) > now)
            .map(|s| s.name.as_str())
            .collect()
    }

    /// Bring back ejected servers whose retry time has come.
    fn return_due_servers(&self) {
        if self.next_return_ms.load(Relaxed) <= self.now_ms() {
            self.rebuild_placement();
        }
    }

    /// Rebuild the placement from the servers' ejection times.
    fn rebuild_placement(&self) {
        let _guard = self
            .rebuild
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = self.now_ms();
        let mut next = u64::MAX;
        let live: Vec<bool> = self
            .servers
            .iter()
            .map(|s| {
                let until = s.ejected_until_ms.load(Relaxed);
                if until != 0 && until <= now {
                    s.ejected_until_ms.store(0, Relaxed);
                    tracing::info!(pool = self.name(), server = %s.name, "ejected server back in the pool");
                    true
                } else if until != 0 {
                    next = next.min(until);
                    false
                } else {
                    true
                }
            })
            .collect();
        self.placement
            .store(Arc::new(self.full_placement.with_live(&live)));
        self.next_return_ms.store(next, Relaxed);
    }

    /// Bring the Prometheus counters kept as atomics up to date (before a scrape).
    pub fn publish_metrics(&self) {
        for server in &self.servers {
            server.counters.publish();
        }
    }

    /// The lowest number of a numbered request (see [`ReplyHook`]) in flight on any
    /// connection (`u64::MAX`: none).
    pub fn oldest_write_in_flight(&self) -> u64 {
        self.servers
            .iter()
            .flat_map(|s| s.write_marks.iter())
            .map(|m| m.load(std::sync::atomic::Ordering::SeqCst))
            .min()
            .unwrap_or(u64::MAX)
    }

    /// Send `bytes` (producing `replies` replies; the last is returned) on connection
    /// `connection` of `server`, waiting for room in its queue, and wait for the reply.
    pub async fn request(
        &self,
        server: usize,
        connection: usize,
        bytes: Bytes,
        replies: u8,
    ) -> ReplyResult {
        self.submit(server, connection, bytes, replies, Protocol::Resp2)
            .await?
            .await
            .unwrap_or(Err(BackendError::Reset))
    }

    /// Send the command `args` on connection `connection` of `server` and wait for its
    /// reply: [`Pool::request`] for one command of cutover's own.
    pub async fn call<A: AsRef<[u8]>>(
        &self,
        server: usize,
        connection: usize,
        args: &[A],
    ) -> ReplyResult {
        let mut bytes = BytesMut::new();
        crate::resp::encode::command(&mut bytes, args);
        self.request(server, connection, bytes.freeze(), 1).await
    }

    /// [`Pool::call`], given up after `limit` ([`BackendError::TimedOut`]): for checks
    /// that must not hang on a server that accepted the command and never answers.
    pub async fn call_within<A: AsRef<[u8]>>(
        &self,
        server: usize,
        connection: usize,
        args: &[A],
        limit: Duration,
    ) -> ReplyResult {
        tokio::time::timeout(limit, self.call(server, connection, args))
            .await
            .unwrap_or(Err(BackendError::TimedOut))
    }

    /// Queue `bytes` on connection `connection` (of those speaking `protocol`) of `server`,
    /// waiting for room, and return the receiver of its reply, so several requests can be
    /// in flight at once.
    pub async fn submit(
        &self,
        server: usize,
        connection: usize,
        bytes: Bytes,
        replies: u8,
        protocol: Protocol,
    ) -> Result<tokio::sync::oneshot::Receiver<ReplyResult>, BackendError> {
        self.submit_hooked(Route { server, connection }, protocol, bytes, replies, None)
            .await
    }

    /// [`Pool::submit`] with a hook riding on the request, told of its outcome.
    pub async fn submit_hooked(
        &self,
        route: Route,
        protocol: Protocol,
        bytes: Bytes,
        replies: u8,
        mirror: Option<Box<dyn ReplyHook>>,
    ) -> Result<tokio::sync::oneshot::Receiver<ReplyResult>, BackendError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let s = &self.servers[route.server];
        s.counters.queued(bytes.len());
        let mut request = BackendRequest::new(
            bytes,
            tx,
            self.timeout().map(|t| tokio::time::Instant::now() + t),
        );
        request.replies = replies;
        request.mirror = mirror;
        if let Err(failed) = s.connection(protocol, route.connection).send(request).await {
            s.counters.unqueued(failed.0.bytes.len());
            return Err(BackendError::Refused);
        }
        Ok(rx)
    }

    /// Queue a client's request on `route`'s connection speaking `protocol`, with `hook`
    /// told of its outcome: at once when the queue has room (the common case), else
    /// waiting for room (this client waits, others go on). A request that cannot be queued
    /// is answered `Refused` through the receiver. `fence_epoch`: the fence's lapses when
    /// the session picked this pool ([`crate::upstream::SendFence::lapses`]).
    pub async fn forward(
        &self,
        route: Route,
        protocol: Protocol,
        bytes: Bytes,
        deadline: Option<tokio::time::Instant>,
        hook: Option<Box<dyn ReplyHook>>,
        fence_epoch: Option<u64>,
    ) -> tokio::sync::oneshot::Receiver<ReplyResult> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let server = &self.servers[route.server];
        server.counters.queued(bytes.len());
        let mut request = BackendRequest::new(bytes, tx, deadline);
        request.mirror = hook;
        request.fence_epoch = fence_epoch;
        let connection = server.connection(protocol, route.connection);
        let request = match connection.try_send(request) {
            Ok(()) => return rx,
            Err(mpsc::error::TrySendError::Full(request)) => request,
            Err(mpsc::error::TrySendError::Closed(request)) => {
                server.counters.unqueued(request.bytes.len());
                request.fail(BackendError::Refused);
                return rx;
            }
        };
        if let Err(failed) = connection.send(request).await {
            server.counters.unqueued(failed.0.bytes.len());
            failed.0.fail(BackendError::Refused);
        }
        rx
    }

    /// Send a `PING` down every connection of every server and wait for each reply, until
    /// `deadline` at most: each connection is first-in first-out, so once its `PING` is
    /// answered, every request queued on it before has been answered too. (A connection
    /// that fails answers its requests with its error.) Returns the servers (by index)
    /// with a connection that had not answered by then, if any: a hung server must not
    /// hold a caller that holds clients (a flip) for as long as it hangs.
    pub async fn behind_every_request_until(&self, deadline: tokio::time::Instant) -> Vec<usize> {
        let mut waiting = Vec::new();
        let mut late = Vec::new();
        for (server, s) in self.servers.iter().enumerate() {
            for protocol in [Protocol::Resp2, Protocol::Resp3] {
                let count = match protocol {
                    Protocol::Resp2 => s.connections.len(),
                    Protocol::Resp3 => s.resp3_connections.len(),
                };
                for connection in 0..count {
                    let ping = Bytes::from_static(b"*1\r\n$4\r\nPING\r\n");
                    // Waits for room on a full queue: bounded too.
                    let submit = self.submit(server, connection, ping, 1, protocol);
                    match by(deadline, submit).await {
                        Some(Ok(rx)) => waiting.push((server, rx)),
                        Some(Err(_)) => {}
                        None => late.push(server),
                    }
                }
            }
        }
        for (server, rx) in waiting {
            if by(deadline, rx).await.is_none() {
                late.push(server);
            }
        }
        late.sort_unstable();
        late.dedup();
        late
    }

    /// Room on `route`'s RESP2 connection for one request now, without waiting (`None`
    /// when its queue is full or closed): a request whose only listener is its hook (a
    /// replayed write) is sent through it, or not at all.
    pub fn reserve_now(&self, route: Route) -> Option<ReplaySlot<'_>> {
        let permit = self.servers[route.server]
            .connection(Protocol::Resp2, route.connection)
            .try_reserve()
            .ok()?;
        Some(ReplaySlot {
            pool: self,
            server: route.server,
            permit,
        })
    }

    /// The per-request timeout, if the pool has one.
    pub fn timeout(&self) -> Option<Duration> {
        self.config.timeout
    }
}

/// Room for one request on a connection, reserved by [`Pool::reserve_now`].
pub struct ReplaySlot<'a> {
    /// The pool.
    pool: &'a Pool,
    /// The server.
    server: usize,
    /// The connection queue's room.
    permit: mpsc::Permit<'a, BackendRequest>,
}

impl ReplaySlot<'_> {
    /// Send `bytes` with only `hook` to take its reply.
    pub fn send(self, bytes: Bytes, hook: Box<dyn ReplyHook>) {
        self.pool.servers[self.server].counters.queued(bytes.len());
        self.permit.send(BackendRequest {
            bytes,
            reply: None,
            deadline: self.pool.timeout().map(|t| tokio::time::Instant::now() + t),
            replies: 1,
            mirror: Some(hook),
            fence_epoch: None,
        });
    }
}

impl Server {
    /// The connection `index` for clients speaking `protocol`.
    pub fn connection(&self, protocol: Protocol, index: usize) -> &mpsc::Sender<BackendRequest> {
        match protocol {
            Protocol::Resp2 => &self.connections[index],
            Protocol::Resp3 => &self.resp3_connections[index],
        }
    }

    /// The server's `redis_version`, if a connection has learned it.
    pub fn redis_version(&self) -> Option<String> {
        self.version.lock().ok().and_then(|v| v.clone())
    }
}

/// Spreads keys over a server's connections; the same key always takes the same
/// connection, so one client's writes to a key keep their order (FNV-1a, 32-bit).
fn connection_hash(key: &[u8]) -> u32 {
    key.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// For tests only: `CUTOVER_TEST_BREAK_SEND_FENCE=1` lets connections write past the fence
/// (sessions still check it), to show that the frozen-member test in `tests/fleet.rs`
/// catches a member whose queued requests reach the old authority after it resumes.
static BREAK_SEND_FENCE: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
    std::env::var("CUTOVER_TEST_BREAK_SEND_FENCE").is_ok_and(|v| v == "1")
});

/// `future`'s output, or `None` if `deadline` passes first.
async fn by<F: std::future::Future>(
    deadline: tokio::time::Instant,
    future: F,
) -> Option<F::Output> {
    tokio::time::timeout_at(deadline, future).await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// A pool of two servers nobody listens on (nothing is sent: only failures are told).
    fn pool(auto_eject: bool) -> Arc<Pool> {
        let text = format!(
            "p:\n  listen: 127.0.0.1:1\n  auto_eject_hosts: {auto_eject}\n  server_failure_limit: 1\n  server_retry_timeout: 60000\n  servers:\n   - 127.0.0.1:9:1 a\n   - 127.0.0.1:10:1 b\n"
        );
        let config = Config::parse(&text, "test").expect("config");
        Pool::start(config.pools[0].clone())
    }

    /// Rule 18's switch: a pool told not to eject brings back what it had ejected and
    /// ejects nothing more, until told it may again; one whose config says no never does.
    #[tokio::test]
    async fn ejecting_can_be_turned_off_and_back_on() {
        let ejecting = pool(true);
        ejecting.server_failed(0);
        assert_eq!(ejecting.ejected_servers(), ["a"]);
        ejecting.set_ejecting(false);
        assert!(ejecting.ejected_servers().is_empty());
        let keys: Vec<String> = (0..200).map(|i| format!("k{i}")).collect();
        let servers = |p: &Pool| -> std::collections::BTreeSet<usize> {
            keys.iter()
                .filter_map(|k| p.route(k.as_bytes()))
                .map(|r| r.server)
                .collect()
        };
        assert_eq!(servers(&ejecting).len(), 2, "every server placed again");
        ejecting.server_failed(0);
        assert!(ejecting.ejected_servers().is_empty());
        assert_eq!(ejecting.ejections(), 1);
        ejecting.set_ejecting(true);
        ejecting.server_failed(1);
        assert_eq!(ejecting.ejected_servers(), ["b"]);
        assert_eq!(servers(&ejecting).len(), 1);

        let never = pool(false);
        never.set_ejecting(true);
        never.server_failed(0);
        assert!(never.ejected_servers().is_empty());
        assert_eq!(never.ejections(), 0);
    }
}
