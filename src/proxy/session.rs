//! A client session: reads pipelined requests, answers local commands, routes the rest
//! (splitting multi-key commands), and writes replies back strictly in request order.
//!
//! Where nutcracker closes the connection silently (unsupported command, wrong arity,
//! inline command) cutover answers `-ERR ...` and keeps the connection open. Malformed
//! RESP or a request over a limit gets `-ERR Protocol error: ...` after every reply
//! already due, and then the connection is closed.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::Served;
use super::busy_poll::ClientMark;
use super::fragment;
use super::local::{self, ClientState};
use super::pending::{Clock, PartState, Pending, backend_error_bytes, poll_reply};
use crate::command::{self, Access, ArgClass, CommandClass, CommandSpec, LocalCommand};
use crate::migrate::mirror::{self, MirrorHook, ShadowRead, WriteEffect};
use crate::migrate::{Migration, Phase, placed_read, shadow};
use crate::resp::{Parsed, Protocol, Request, RequestLimits, RequestParser, encode};
use crate::upstream::{BackendError, ErrorKind, Pool, PoolCounters, ReplyHook, ReplyResult, Route};

/// Replies a client may have outstanding before the proxy stops reading from it.
const MAX_PENDING: usize = 1024;
/// Read buffer growth step.
const READ_CHUNK: usize = 16 * 1024;
/// A reply this large is written straight from its buffer instead of being copied.
const LARGE_REPLY: usize = 64 * 1024;
/// How long a request waits for a fleet member to renew its lease before it is refused.
const FENCE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Session state that outlives one request.
struct Session {
    /// The pool this client is connected to, and its migration.
    served: Arc<Served>,
    /// Replies owed, in request order.
    pending: VecDeque<Pending>,
    /// The client's protocol, name, authentication and other connection state.
    state: ClientState,
    /// Set once no more requests are to be read (EOF, QUIT, protocol error, shutdown).
    done_reading: bool,
    /// Whether the connection is closed because of a client error.
    client_error: bool,
    /// Sampling state for shadow reads (xorshift64, never zero).
    sample_state: u64,
    /// Requests read since the counters were last told, by class: told once a read, not
    /// once a request (a pipelining client's batch costs one increment a class).
    uncounted: [u64; CommandClass::ALL.len()],
}

/// What a session is given besides its connection.
pub struct SessionContext {
    /// Limits on the client's requests.
    pub limits: RequestLimits,
    /// Turns true when the proxy shuts down.
    pub shutdown: watch::Receiver<bool>,
    /// The session's part in busy polling.
    pub busy_poll: ClientMark,
}

/// Serve one client connection until it closes, QUITs, errs, or the proxy shuts down.
pub async fn run<R, W>(
    served: Arc<Served>,
    (mut rd, mut wr): (R, W),
    context: SessionContext,
    peer: String,
    local_addr: String,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let SessionContext {
        limits,
        mut shutdown,
        busy_poll: mut poll,
    } = context;
    served.pool.counters.client_connected();
    let mut session = Session {
        state: ClientState::new(&served.pool, peer, local_addr),
        served,
        pending: VecDeque::new(),
        done_reading: false,
        client_error: false,
        sample_state: sample_seed(),
        uncounted: [0; CommandClass::ALL.len()],
    };
    let mut parser = RequestParser::new(limits);
    let mut input = BytesMut::with_capacity(READ_CHUNK);
    let mut out = BytesMut::new();
    if *shutdown.borrow() {
        session.done_reading = true;
    }
    // One future for the whole session: re-creating it on every pass would register and
    // unregister with the watch each time.
    let mut shutdown_signal = std::pin::pin!(shutdown.changed());

    loop {
        // Gather every reply that is ready, in order, then write them in one go.
        let (close, large) = drain_ready(&mut session, &mut out);
        if !out.is_empty() {
            if wr.write_all(&out).await.is_err() {
                break;
            }
            out.clear();
            poll.replied();
        }
        if let Some(reply) = large {
            if wr.write_all(&reply).await.is_err() {
                break;
            }
            continue;
        }
        poll.owed(!session.pending.is_empty());
        if close {
            break;
        }
        if session.done_reading && session.pending.is_empty() {
            break;
        }
        let can_read = !session.done_reading && session.pending.len() < MAX_PENDING;
        if input.capacity() - input.len() < READ_CHUNK / 4 {
            input.reserve(READ_CHUNK);
        }
        tokio::select! {
            biased;
            reply = poll_fn(|cx| match session.pending.front_mut() {
                Some(front) => poll_reply(&session.served.pool, front, cx, &mut Clock::default()),
                None => Poll::Pending,
            }), if !session.pending.is_empty() => {
                session.pending.pop_front();
                out.extend_from_slice(&reply);
            }
            read = rd.read_buf(&mut input), if can_read => {
                match read {
                    Ok(0) | Err(_) => session.done_reading = true,
                    Ok(_) => {
                        let read_at = Instant::now();
                        poll.read(read_at.into_std());
                        session.handle_input(&mut parser, &mut input, read_at).await;
                    }
                }
            }
            _ = &mut shutdown_signal, if !session.done_reading => session.done_reading = true,
        }
    }
    session
        .served
        .pool
        .counters
        .client_closed(session.client_error);
}

/// Move every ready reply at the front of the queue into `out`, without waiting.
/// Returns whether a close is due next, and a large reply to write on its own.
fn drain_ready(session: &mut Session, out: &mut BytesMut) -> (bool, Option<Bytes>) {
    let mut cx = Context::from_waker(Waker::noop());
    let mut clock = Clock::default();
    while let Some(front) = session.pending.front_mut() {
        if matches!(front, Pending::Close) {
            return (true, None);
        }
        match poll_reply(&session.served.pool, front, &mut cx, &mut clock) {
            Poll::Ready(reply) => {
                session.pending.pop_front();
                if reply.len() >= LARGE_REPLY {
                    return (false, Some(reply));
                }
                out.extend_from_slice(&reply);
            }
            Poll::Pending => break,
        }
    }
    (false, None)
}

impl Session {
    /// Parse and dispatch every complete request in `input`, read at `read_at`, and count
    /// them (before any of their replies is written).
    async fn handle_input(
        &mut self,
        parser: &mut RequestParser,
        input: &mut BytesMut,
        read_at: Instant,
    ) {
        while !self.done_reading {
            match parser.next(input) {
                // The rest of a request still to come stays in `input`.
                Ok(None) => break,
                Ok(Some(Parsed::Request(request))) => self.dispatch(request, read_at).await,
                Ok(Some(Parsed::Inline(line))) => {
                    let name = line
                        .split(|b| b.is_ascii_whitespace())
                        .find(|w| !w.is_empty())
                        .unwrap_or_default();
                    if name.is_empty() {
                        continue;
                    }
                    let text = format!(
                        "ERR unsupported command '{}' (inline commands are not supported; send a RESP array)",
                        printable(name)
                    );
                    self.error(ErrorKind::Unsupported, CommandClass::Local, &text);
                }
                Err(error) => {
                    self.error(
                        ErrorKind::Protocol,
                        CommandClass::Local,
                        &format!("ERR {error}"),
                    );
                    self.pending.push_back(Pending::Close);
                    self.done_reading = true;
                    self.client_error = true;
                }
            }
        }
        if self.done_reading {
            // Bytes after QUIT or a protocol error are discarded.
            input.clear();
        }
        for class in CommandClass::ALL {
            let count = std::mem::take(&mut self.uncounted[class as usize]);
            if count > 0 {
                self.served.pool.counters.requests(class, count);
            }
        }
    }

    /// Queue an error reply of the proxy's own.
    fn error(&mut self, kind: ErrorKind, class: CommandClass, text: &str) {
        self.uncounted[class as usize] += 1;
        self.served.pool.counters.error(kind);
        let mut out = BytesMut::with_capacity(text.len() + 3);
        encode::error(&mut out, text);
        self.pending.push_back(Pending::Ready(out.freeze()));
    }

    /// Handle one request, read at `started`.
    async fn dispatch(&mut self, request: Request, started: Instant) {
        let Some(spec) = command::lookup(request.name()) else {
            let text = format!("ERR unsupported command '{}'", printable(request.name()));
            return self.error(ErrorKind::Unsupported, CommandClass::Local, &text);
        };
        if spec.class == ArgClass::ArgEval && request.argc() >= 3 {
            let args: Vec<&[u8]> = request.args().collect();
            if command::eval_numkeys(&args).is_none() {
                let text = format!(
                    "ERR {} needs numkeys of at least 1, no more than the keys given: cutover routes scripts by their first key",
                    spec.lower
                );
                return self.error(ErrorKind::Arity, spec.class_label(), &text);
            }
        }
        if !spec.class.accepts(request.argc()) {
            let text = format!("ERR wrong number of arguments for '{}' command", spec.lower);
            return self.error(ErrorKind::Arity, spec.class_label(), &text);
        }
        if !self.state.authenticated
            && !matches!(
                spec.local,
                Some(
                    LocalCommand::Auth
                        | LocalCommand::Quit
                        | LocalCommand::Hello
                        | LocalCommand::Reset
                )
            )
        {
            return self.error(
                ErrorKind::Auth,
                spec.class_label(),
                "NOAUTH Authentication required",
            );
        }
        if let Some(local) = spec.local {
            return self.local(local, &request);
        }
        self.uncounted[spec.class_label() as usize] += 1;
        // During a migration every request passes the gate (held while authority flips)
        // and goes to the pool that is authoritative once it is through.
        let Session {
            served,
            pending,
            state,
            sample_state,
            ..
        } = self;
        let listen = &served.pool;
        // Inside the routing gate until the request is queued (a reload that starts a
        // migration waits for the requests that saw none).
        let _routing = served.routing.enter().await;
        let migration = served.migration();
        // Inside the gate until `_pass` drops: after the request is queued, or when this
        // future is dropped first.
        let (gated, _pass) = match migration {
            Some(m) if m.phase() != Phase::Finalized => (Some(m), Some(m.flips.gate.enter().await)),
            _ => (None, None),
        };
        // A fleet member whose lease may be expiring sends nothing (rule 15): it holds the
        // request for a while, then refuses it.
        if let Some(m) = gated
            && m.fenced()
            && !m.wait_unfenced(FENCE_WAIT).await
        {
            listen.counters.error(ErrorKind::Fenced);
            pending.push_back(Pending::Ready(backend_error_bytes(BackendError::Fenced)));
            return;
        }
        // Stamped before the pool is picked: should the fence lapse before the request
        // reaches its connection, the connection refuses it (rule 15). A stamp that still
        // matches there means the lease held from here to the write, so no flip happened
        // in between and the pool picked here is still the authority.
        let fence_epoch = gated.map(|m| m.fence_epoch());
        let pool: &Pool = migration.map_or(listen, |m| m.authority());
        // Under replication capture the source's stream carries every write: the proxy
        // only forwards (no mirror hooks); sampled reads are placed in the stream.
        let live = gated.filter(|m| m.phase() != Phase::Finalized);
        let mut out = Forwarding {
            pending,
            protocol: state.protocol,
            counters: &listen.counters,
            sample_state,
            fence_epoch,
        };
        if spec.split.is_some() && request.argc() > 2 {
            let live = live.filter(|m| !m.forwards_only());
            out.split(pool, live, spec, &request, started).await;
        } else {
            out.one(pool, live, spec, request, started).await;
        }
    }

    /// Answer a command the proxy handles itself.
    fn local(&mut self, command: LocalCommand, request: &Request) {
        self.uncounted[CommandClass::Local as usize] += 1;
        let answer = local::answer(&self.served, &mut self.state, command, request);
        if let Some(kind) = answer.error {
            self.served.pool.counters.error(kind);
        }
        if !answer.reply.is_empty() {
            self.pending.push_back(Pending::Ready(answer.reply));
        }
        if answer.close {
            self.pending.push_back(Pending::Close);
            self.done_reading = true;
        }
    }
}

/// What forwarding a request needs from its session, borrowed apart from the pool.
struct Forwarding<'s> {
    /// The session's replies owed.
    pending: &'s mut VecDeque<Pending>,
    /// The client's protocol (which server connections to use).
    protocol: Protocol,
    /// The listening pool's counters.
    counters: &'s PoolCounters,
    /// The session's sampling state for shadow reads.
    sample_state: &'s mut u64,
    /// The fleet fence's lapses when the request was checked ([`Migration::fence_epoch`]).
    fence_epoch: Option<u64>,
}

impl Forwarding<'_> {
    /// Forward a single-server request to `pool`, with its mirror hook (or a shadow check)
    /// when `migration` is live.
    async fn one(
        &mut self,
        pool: &Pool,
        migration: Option<&Arc<Migration>>,
        spec: &CommandSpec,
        request: Request,
        started: Instant,
    ) {
        let key = command::routing_key(spec, &request);
        let Some(route) = pool.route(key) else {
            return self.failed(BackendError::Refused);
        };
        let mirror = match migration {
            Some(m) if m.forwards_only() => {
                if m.capturing()
                    && !spec.is_write()
                    && let Some(read) = self.sampled_read(m, spec, &request)
                {
                    placed_read::place(m, read, request.bytes().clone());
                }
                None
            }
            Some(m) => {
                m.check_spanning(spec, &request);
                mirror_hook(m, spec, &request).or_else(|| {
                    let read = self.sampled_read(m, spec, &request)?;
                    Some(MirrorHook::shadow(m.clone(), read))
                })
            }
            None => None,
        };
        let class = match spec.access {
            Access::Write(_) => CommandClass::Write,
            _ => spec.class_label(),
        };
        self.forward(pool, route, request.bytes().clone(), started, mirror, class)
            .await;
    }

    /// Send `bytes` on `route` of `pool` and owe the client its reply, timed as `class`.
    async fn forward(
        &mut self,
        pool: &Pool,
        route: Route,
        bytes: Bytes,
        started: Instant,
        mirror: Option<Box<MirrorHook>>,
        class: CommandClass,
    ) {
        let rx = self.send(pool, route, bytes, started, mirror).await;
        self.pending
            .push_back(Pending::Forward { rx, class, started });
    }

    /// Split a multi-key command across servers (or forward it whole when its keys share one).
    async fn split(
        &mut self,
        pool: &Pool,
        migration: Option<&Arc<Migration>>,
        spec: &CommandSpec,
        request: &Request,
        started: Instant,
    ) {
        match fragment::split(pool, spec, request) {
            Err(()) => self.failed(BackendError::Refused),
            Ok(None) => {
                let Some(route) = pool.route(request.arg(1)) else {
                    return self.failed(BackendError::Refused);
                };
                let mirror = migration.and_then(|m| mirror_hook(m, spec, request));
                let bytes = request.bytes().clone();
                self.forward(pool, route, bytes, started, mirror, CommandClass::Split)
                    .await;
            }
            Ok(Some((parts, plan))) => {
                let mut states = Vec::with_capacity(parts.len());
                for part in parts {
                    // A part of a split write writes exactly its own keys: each is copied.
                    let mirror = match (migration, spec.is_write()) {
                        (Some(migration), true) => WriteEffect::copying(
                            part.keys.iter().map(|&i| request.arg_bytes(i)),
                            false,
                        )
                        .map(|effect| MirrorHook::new(migration.clone(), effect)),
                        _ => None,
                    };
                    let rx = self
                        .send(pool, part.route, part.bytes, started, mirror)
                        .await;
                    states.push(PartState::Waiting(rx));
                }
                self.pending.push_back(Pending::Split {
                    parts: states,
                    plan,
                    started,
                });
            }
        }
    }

    /// A read picked by the sampling ratio, if it may be checked against the target.
    fn sampled_read(
        &mut self,
        migration: &Arc<Migration>,
        spec: &CommandSpec,
        request: &Request,
    ) -> Option<ShadowRead> {
        if migration.receiver_lacks(spec, request).is_some() {
            // The mirror cannot answer it: nothing to compare.
            migration.shadow_skip("target_lacks");
            return None;
        }
        let ratio = migration.tunables.shadow_ratio();
        if ratio <= 0.0 || !self.sample(ratio) {
            return None;
        }
        let compare = shadow::compare_for(spec, request)?;
        Some(ShadowRead {
            key: request.arg_bytes(1),
            compare,
            protocol: self.protocol,
            command: spec.name,
            confirm: false,
            sent: std::time::Instant::now(),
        })
    }

    /// Whether to pick this read, with probability `ratio` (xorshift64: cheap, per session).
    fn sample(&mut self, ratio: f64) -> bool {
        if ratio >= 1.0 {
            return true;
        }
        let mut x = *self.sample_state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *self.sample_state = x;
        (x >> 11) as f64 / (1u64 << 53) as f64 <= ratio
    }

    /// Queue `bytes` on the route's connection of `pool` for this client's protocol,
    /// stamped with the request's fence epoch; the receiver gets the reply.
    async fn send(
        &self,
        pool: &Pool,
        route: Route,
        bytes: Bytes,
        started: Instant,
        mirror: Option<Box<MirrorHook>>,
    ) -> oneshot::Receiver<ReplyResult> {
        let deadline = pool.timeout().map(|t| started + t);
        let hook = mirror.map(|h| h as Box<dyn ReplyHook>);
        pool.forward(
            route,
            self.protocol,
            bytes,
            deadline,
            hook,
            self.fence_epoch,
        )
        .await
    }

    /// Queue `-ERR <reason>` for a request that could not be forwarded.
    fn failed(&mut self, error: BackendError) {
        self.counters.error(ErrorKind::of(error));
        self.pending
            .push_back(Pending::Ready(backend_error_bytes(error)));
    }
}

/// The mirror hook for `request` when it writes and the migration mirrors.
fn mirror_hook(
    migration: &Arc<Migration>,
    spec: &CommandSpec,
    request: &Request,
) -> Option<Box<MirrorHook>> {
    let mut effect = mirror::effect(spec, request)?;
    if migration.receiver_lacks(spec, request).is_some() {
        // The mirror cannot run it: copy what it wrote instead of replaying it.
        effect.replay = false;
    }
    Some(MirrorHook::new(migration.clone(), effect))
}

/// A non-zero seed for a session's sampling, different for each session.
fn sample_seed() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 =
        std::sync::atomic::AtomicU64::new(0x9e37_79b9_7f4a_7c15);
    let n = NEXT.fetch_add(0x9e37_79b9_7f4a_7c15, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    (n ^ nanos.rotate_left(32)) | 1
}

/// A command name fit to quote in an error: at most 64 bytes, control bytes escaped.
fn printable(name: &[u8]) -> String {
    let mut text: String = name
        .iter()
        .take(64)
        .flat_map(|&b| std::ascii::escape_default(b))
        .map(char::from)
        .collect();
    if name.len() > 64 {
        text.push_str("...");
    }
    text.replace('\'', "\\'")
}
