//! One backend connection: a task that connects (lazily, or at start with `preconnect`),
//! authenticates and selects the pool's database, then pipelines requests from many
//! clients, written in batches, with replies matched to requests in order.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::hook::ReplyHook;
use super::pool::Pool;
use super::version;
use crate::config::ServerAddr;
use crate::resp::{Protocol, ReplyScanner, encode};

/// Bytes gathered before a write is issued.
const WRITE_BATCH: usize = 64 * 1024;
/// Read buffer growth step.
const READ_CHUNK: usize = 16 * 1024;
/// Connect timeout when the pool has no `timeout:`.
pub(super) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request got no reply from its backend. Shown to clients as `-ERR <text>`, the
/// `strerror` texts nutcracker uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The server refused the connection, or no server is live.
    #[error("Connection refused")]
    Refused,
    /// The request's `timeout:` passed.
    #[error("Connection timed out")]
    TimedOut,
    /// The connection broke after the request was sent (EOF or reset).
    #[error("Connection reset by peer")]
    Reset,
    /// The server's host is unknown or unreachable.
    #[error("No route to host")]
    Unreachable,
    /// The server sent bytes that are not RESP.
    #[error("Invalid argument")]
    BadReply,
    /// This fleet member's lease may be expiring: nothing is sent (rule 15). Shown as
    /// `-TRYAGAIN`, as the session's own refusal: the client may retry through another
    /// member, or here once the member is back.
    #[error("cutover: lost contact with coordination")]
    Fenced,
}

impl BackendError {
    /// The error code a client sees before the text.
    pub fn code(self) -> &'static str {
        match self {
            BackendError::Fenced => "TRYAGAIN",
            _ => "ERR",
        }
    }
}

/// A reply, or why there is none.
pub type ReplyResult = Result<Bytes, BackendError>;

/// A request on its way to a backend.
pub struct BackendRequest {
    /// The request's bytes, as they go on the wire.
    pub bytes: Bytes,
    /// Where the reply goes; `None` when only the mirror hook wants it (a replay).
    pub reply: Option<oneshot::Sender<ReplyResult>>,
    /// When it times out (the pool's `timeout:` from when it was queued).
    pub deadline: Option<Instant>,
    /// How many replies the bytes produce (several commands sent as one unit, such as a
    /// copy's MULTI/PTTL/DUMP/EXEC, so nothing interleaves); the last one is returned.
    pub replies: u8,
    /// Told of the request's outcome (a migration's mirror hook).
    pub mirror: Option<Box<dyn ReplyHook>>,
    /// The lapses of its fleet member's fence when a session checked the fence and picked
    /// the pool (rule 15); a connection refuses it once the fence has lapsed since.
    /// `None`: not stamped (outside a fleet, or the migration's own requests).
    pub fence_epoch: Option<u64>,
}

impl BackendRequest {
    /// A request expecting one reply, not mirrored.
    pub fn new(
        bytes: Bytes,
        reply: oneshot::Sender<ReplyResult>,
        deadline: Option<Instant>,
    ) -> BackendRequest {
        BackendRequest {
            bytes,
            reply: Some(reply),
            deadline,
            replies: 1,
            mirror: None,
            fence_epoch: None,
        }
    }

    /// Answer a request that never reached the server with `error` (its mirror hook, if
    /// any, is dropped: a write needs no mirroring, a replay copies its key).
    pub fn fail(self, error: BackendError) {
        if let Some(reply) = self.reply {
            let _ = reply.send(Err(error));
        }
    }
}

/// A request written and awaiting its reply.
struct InFlight {
    /// Where the reply goes; `None` for the connection's own AUTH/SELECT.
    reply: Option<oneshot::Sender<ReplyResult>>,
    /// Replies still to read for it (the last is delivered).
    replies_left: u8,
    /// The write's mirror hook, called when its reply is read.
    mirror: Option<Box<dyn ReplyHook>>,
    /// Request size on the wire (for the out-queue gauges, which leave setup commands
    /// out; and to tell what of the write buffer is whose).
    bytes: usize,
    /// When it times out.
    deadline: Option<Instant>,
    /// What it was, for logs when it is the connection's own setup command.
    setup: Option<&'static str>,
}

impl InFlight {
    /// Answer it with `error` and take it off `counters`' out queue; its hook, if any, is
    /// told its outcome is unknown (the lanes copy what it may have written, rule 4).
    fn fail(self, counters: &super::counters::ServerCounters, error: BackendError) {
        if let Some(hook) = self.mirror {
            hook.on_unknown();
        }
        if self.setup.is_none() {
            counters.finished(1, self.bytes, None);
        }
        if let Some(reply) = self.reply {
            let _ = reply.send(Err(error));
        }
    }
}

/// The name every connection of cutover's gives itself (`CLIENT SETNAME`); a fleet
/// member's add `.<member id>` ([`is_cutover_connection`]).
pub const CONNECTION_NAME_TEXT: &str = "cutover";
/// [`CONNECTION_NAME_TEXT`] as bytes.
pub const CONNECTION_NAME: &[u8] = CONNECTION_NAME_TEXT.as_bytes();

/// The name the connections of a process outside a fleet give themselves:
/// `cutover-<pid>-<start time>`, unique to the process, so that a migration tells its own
/// connections from those of another cutover process on the same servers (one not
/// coordinated with it, which would go on writing to the old servers after its cutover).
pub fn process_connection_name() -> &'static str {
    static NAME: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        format!("{CONNECTION_NAME_TEXT}-{}-{started}", std::process::id())
    });
    &NAME
}

/// Whether a connection named `name` (in `CLIENT LIST`) is some cutover process's:
/// `cutover` (a replication stream), `cutover-<pid>-<start>` (a process outside a fleet),
/// or a fleet member's `cutover.<member id>`.
pub fn is_cutover_connection(name: &str) -> bool {
    name == CONNECTION_NAME_TEXT
        || name
            .strip_prefix(CONNECTION_NAME_TEXT)
            .is_some_and(|rest| rest.starts_with(['.', '-']))
}

/// The fleet member a connection named `name` belongs to, if it is a member's.
pub fn connection_member(name: &str) -> Option<&str> {
    name.strip_prefix(CONNECTION_NAME_TEXT)?.strip_prefix('.')
}

/// How a connection ended.
enum End {
    /// Every sender is gone: the pool is shutting down.
    Shutdown,
    /// The connection failed; in-flight requests get this error.
    Failed(BackendError),
}

/// Run connection tasks for `server` of `pool`, taking requests from `rx`, until the pool
/// is dropped. RESP3 connections (`protocol`) open with `HELLO 3` and are never preconnected.
pub async fn run(
    pool: Arc<Pool>,
    server: usize,
    mark: usize,
    mut rx: mpsc::Receiver<BackendRequest>,
    protocol: Protocol,
) {
    let mut first: Option<BackendRequest> = None;
    let mut connect_now = pool.config.preconnect && protocol == Protocol::Resp2;
    loop {
        if first.is_none() && !connect_now {
            match rx.recv().await {
                Some(request) => first = Some(request),
                None => return,
            }
        }
        connect_now = false;
        let s = &pool.servers[server];
        if pool.fenced() {
            // Rule 15: a fenced member writes nothing; what was queued is refused.
            fail_queued(s, first.take(), &mut rx, BackendError::Fenced);
            continue;
        }
        let end = match connect(&s.addr, pool.timeout()).await {
            Ok(Stream::Tcp(stream)) => {
                let _ = stream.set_nodelay(true);
                let (rd, wr) = stream.into_split();
                let conn = Connection::new(&pool, server, mark);
                serve(conn, protocol, (rd, wr), first.take(), &mut rx).await
            }
            Ok(Stream::Unix(stream)) => {
                let (rd, wr) = stream.into_split();
                let conn = Connection::new(&pool, server, mark);
                serve(conn, protocol, (rd, wr), first.take(), &mut rx).await
            }
            Err(error) => {
                s.counters.server_err.fetch_add(1, Relaxed);
                s.counters.errors_metric.increment(1);
                tracing::debug!(pool = pool.name(), server = %s.name, %error, "connect failed");
                pool.server_failed(server);
                // Everything waiting for this connection fails with it, as in nutcracker.
                fail_queued(s, first.take(), &mut rx, error);
                continue;
            }
        };
        match end {
            End::Shutdown => return,
            End::Failed(BackendError::Fenced) => {}
            End::Failed(_) => pool.server_failed(server),
        }
    }
}

/// Fail `first` and every request queued on `rx` with `error`.
fn fail_queued(
    s: &super::pool::Server,
    first: Option<BackendRequest>,
    rx: &mut mpsc::Receiver<BackendRequest>,
    error: BackendError,
) {
    let mut failed = first.into_iter().collect::<Vec<_>>();
    while let Ok(request) = rx.try_recv() {
        failed.push(request);
    }
    if error == BackendError::Fenced {
        s.counters.fenced_metric.increment(failed.len() as u64);
    }
    for request in failed {
        s.counters.unqueued(request.bytes.len());
        request.fail(error);
    }
}

/// A connected backend socket.
pub(super) enum Stream {
    /// TCP.
    Tcp(TcpStream),
    /// Unix socket.
    Unix(UnixStream),
}

/// A setup command: its name (to log a refusal by, and to find INFO's reply) and its
/// arguments.
pub(super) type SetupCommand = (&'static str, Vec<Vec<u8>>);

/// How every connection of cutover's to a server of `pool` introduces itself, in order:
/// HELLO 3 (with AUTH) or AUTH, then SELECT, then `CLIENT SETNAME` with the pool's
/// connection name (so a migration can tell its own connections from clients, or other
/// cutover processes, that write to a source server directly: a nameless connection that
/// has sent a command counts as such a client), then, if `learn_version`, INFO server.
/// The pooled connections and the short-lived version probe both send this, so none of
/// them sends a command before its name.
pub(super) fn setup_commands(
    pool: &Pool,
    protocol: Protocol,
    learn_version: bool,
) -> Vec<SetupCommand> {
    let config = &pool.config;
    let mut commands: Vec<SetupCommand> = Vec::new();
    let mut add = |command: &'static str, args: &[&[u8]]| {
        commands.push((command, args.iter().map(|a| a.to_vec()).collect()));
    };
    match (protocol, config.redis_auth.as_deref()) {
        (Protocol::Resp3, Some(pw)) => add(
            "HELLO",
            &[b"HELLO", b"3", b"AUTH", b"default", pw.as_bytes()],
        ),
        (Protocol::Resp3, None) => add("HELLO", &[b"HELLO", b"3"]),
        (Protocol::Resp2, Some(pw)) => add("AUTH", &[b"AUTH", pw.as_bytes()]),
        (Protocol::Resp2, None) => {}
    }
    if config.redis_db > 0 {
        add(
            "SELECT",
            &[b"SELECT", config.redis_db.to_string().as_bytes()],
        );
    }
    add("CLIENT", &[b"CLIENT", b"SETNAME", &pool.connection_name()]);
    if learn_version {
        add("INFO", &[b"INFO", b"server"]);
    }
    commands
}

/// Connect to `addr`, within the pool's timeout.
pub(super) async fn connect(
    addr: &ServerAddr,
    timeout: Option<Duration>,
) -> Result<Stream, BackendError> {
    let limit = timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    let attempt = async {
        match addr {
            ServerAddr::Tcp { host, port } => TcpStream::connect((host.as_str(), *port))
                .await
                .map(Stream::Tcp),
            ServerAddr::Unix(path) => UnixStream::connect(path).await.map(Stream::Unix),
        }
    };
    match tokio::time::timeout(limit, attempt).await {
        Err(_) => Err(BackendError::TimedOut),
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(match e.kind() {
            std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound => {
                BackendError::Refused
            }
            std::io::ErrorKind::TimedOut => BackendError::TimedOut,
            _ => BackendError::Unreachable,
        }),
    }
}

/// Whether a reply is one nutcracker counts as a server failure: `-OOM`, `-BUSY`, `-LOADING`.
fn is_failure_reply(reply: &[u8]) -> bool {
    reply.starts_with(b"-OOM") || reply.starts_with(b"-BUSY") || reply.starts_with(b"-LOADING")
}

/// One open connection to a server: the requests in flight on it (in the order they were
/// written, which is the order their replies come back), its buffers, and what it
/// publishes for the migration's low-water mark.
struct Connection<'a> {
    /// The pool.
    pool: &'a Pool,
    /// The server's index.
    server: usize,
    /// This connection's slot in the server's `write_marks`.
    mark: usize,
    /// Requests written (or about to be), oldest first.
    inflight: VecDeque<InFlight>,
    /// Bytes to write.
    wbuf: BytesMut,
    /// Bytes read and not yet delivered.
    rbuf: BytesMut,
    /// Finds where each reply ends.
    scanner: ReplyScanner,
    /// Numbered requests (see [`ReplyHook`]) in flight.
    numbered_in_flight: usize,
}

impl<'a> Connection<'a> {
    /// A fresh connection of `pool`'s `server`, publishing in `write_marks[mark]`.
    fn new(pool: &'a Pool, server: usize, mark: usize) -> Connection<'a> {
        pool.servers[server].counters.connection(1);
        Connection {
            pool,
            server,
            mark,
            inflight: VecDeque::new(),
            wbuf: BytesMut::with_capacity(WRITE_BATCH),
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            scanner: ReplyScanner::default(),
            numbered_in_flight: 0,
        }
    }

    /// The server this connection talks to.
    fn server(&self) -> &'a super::pool::Server {
        &self.pool.servers[self.server]
    }

    /// The connection's own setup ([`setup_commands`]), ahead of any request, with INFO
    /// only while the server's version is unknown. Setup commands time out like requests:
    /// a server that never answers them must not hold the requests queued behind them
    /// past their timeout.
    fn setup(&mut self, protocol: Protocol) {
        let deadline = self.pool.timeout().map(|t| Instant::now() + t);
        let learn_version = self.server().redis_version().is_none();
        for (command, args) in setup_commands(self.pool, protocol, learn_version) {
            self.queue_setup(command, &args, deadline);
        }
    }

    /// Queue one setup command, whose reply is read and dropped.
    fn queue_setup(&mut self, command: &'static str, args: &[Vec<u8>], deadline: Option<Instant>) {
        let before = self.wbuf.len();
        encode::command(&mut self.wbuf, args);
        self.inflight.push_back(InFlight {
            reply: None,
            replies_left: 1,
            mirror: None,
            bytes: self.wbuf.len() - before,
            deadline,
            setup: Some(command),
        });
    }

    /// Move a request into the write buffer and return its size; the caller counts it (a
    /// drained batch is counted at once). A numbered request takes its number here, as it
    /// goes on the wire. `None`: refused instead (and counted so), because it was routed
    /// before its fleet member's fence lapsed, perhaps to what is no longer the authority
    /// (rule 15).
    fn enqueue(&mut self, request: BackendRequest) -> Option<usize> {
        if self.pool.lapsed_since(request.fence_epoch) {
            let counters = &self.server().counters;
            counters.unqueued(request.bytes.len());
            counters.fenced_metric.increment(1);
            request.fail(BackendError::Fenced);
            return None;
        }
        let bytes = request.bytes.len();
        self.wbuf.extend_from_slice(&request.bytes);
        let mut mirror = request.mirror;
        if let Some(hook) = mirror.as_mut() {
            if hook.numbered() {
                self.numbered_in_flight += 1;
                // Publish a mark no higher than this request's number before taking it, so
                // the migration's low-water mark never passes a write still in flight.
                let marks = &self.server().write_marks[self.mark];
                if marks.load(SeqCst) == u64::MAX {
                    marks.store(hook.counter_now(), SeqCst);
                }
                hook.assign_number();
            }
            hook.sending(request.bytes);
        }
        self.inflight.push_back(InFlight {
            reply: request.reply,
            replies_left: request.replies.max(1),
            mirror,
            bytes,
            deadline: request.deadline,
            setup: None,
        });
        Some(bytes)
    }

    /// Take every request already waiting (up to a write batch) into the write buffer;
    /// `senders_gone` turns true when no sender is left.
    fn drain(&mut self, rx: &mut mpsc::Receiver<BackendRequest>, senders_gone: &mut bool) {
        let (mut count, mut bytes) = (0, 0);
        while self.wbuf.len() < WRITE_BATCH && !*senders_gone {
            match rx.try_recv() {
                Ok(request) => {
                    if let Some(size) = self.enqueue(request) {
                        bytes += size;
                        count += 1;
                    }
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => *senders_gone = true,
            }
        }
        self.server().counters.written(count, bytes);
    }

    /// Hand every complete reply in the read buffer to its request. A `-OOM`/`-BUSY`/
    /// `-LOADING` reply counts as a server failure (toward ejection) but, unlike
    /// nutcracker, is passed to the client as it is and does not close the connection.
    fn deliver(&mut self) -> Result<(), BackendError> {
        let (pool, server) = (self.pool, self.server);
        let s = self.server();
        let mut failure = false;
        let mut answered = false;
        let mut tally = Answered {
            counters: &s.counters,
            count: 0,
            request_bytes: 0,
            reply_bytes: 0,
        };
        loop {
            if let Some(front) = self.inflight.front_mut()
                && front.replies_left > 1
            {
                // An earlier reply of a multi-reply request (MULTI ... EXEC): read and drop it.
                match self.scanner.scan(&self.rbuf) {
                    Ok(Some(len)) => {
                        let _ = self.rbuf.split_to(len);
                        front.replies_left -= 1;
                        continue;
                    }
                    Ok(None) => break,
                    Err(_) => return Err(BackendError::BadReply),
                }
            }
            let len = match self.scanner.scan(&self.rbuf) {
                Ok(Some(len)) => len,
                Ok(None) => break,
                Err(error) => {
                    tracing::warn!(pool = pool.name(), server = %s.name, %error, "backend sent a malformed reply");
                    s.counters.server_err.fetch_add(1, Relaxed);
                    return Err(BackendError::BadReply);
                }
            };
            let reply = self.rbuf.split_to(len).freeze();
            let Some(f) = self.inflight.pop_front() else {
                tracing::warn!(pool = pool.name(), server = %s.name, "backend sent a reply nobody asked for");
                return Err(BackendError::BadReply);
            };
            if let Some(command) = f.setup {
                if command == "INFO" {
                    version::learn(s, &reply);
                } else if reply.first() == Some(&b'-') {
                    tracing::warn!(pool = pool.name(), server = %s.name, command, reply = %String::from_utf8_lossy(&reply).trim_end(), "backend refused connection setup");
                }
                continue;
            }
            tally.count += 1;
            tally.request_bytes += f.bytes;
            tally.reply_bytes += len;
            if let Some(hook) = f.mirror {
                // Rule 1: the mirror event is queued the moment the source's reply is read,
                // before the client sees the reply.
                let number = hook.numbered().then(|| hook.number());
                hook.on_reply(&reply);
                if let Some(number) = number {
                    // Numbered requests still in flight here were numbered after this one
                    // (numbers are taken in send order and replies come back in that
                    // order): `number + 1` bounds them.
                    self.numbered_in_flight -= 1;
                    let mark = if self.numbered_in_flight == 0 {
                        u64::MAX
                    } else {
                        number + 1
                    };
                    s.write_marks[self.mark].store(mark, SeqCst);
                }
            }
            if is_failure_reply(&reply) {
                failure = true;
                pool.server_failed(server);
            } else {
                answered = true;
            }
            if let Some(tx) = f.reply {
                let _ = tx.send(Ok(reply));
            }
        }
        if answered && !failure {
            pool.server_ok(server);
        }
        Ok(())
    }

    /// Refuse with `error` every request none of whose bytes left the write buffer
    /// (nothing of it reached the server, so the client may safely send it again), and
    /// take its bytes out. What stays in the buffer is the rest of a request partly
    /// written, whose outcome is unknown.
    fn refuse_unsent(&mut self, error: BackendError) {
        let s = self.server();
        while self
            .inflight
            .back()
            .is_some_and(|last| last.bytes <= self.wbuf.len())
        {
            let Some(f) = self.inflight.pop_back() else {
                break;
            };
            self.wbuf.truncate(self.wbuf.len() - f.bytes);
            if f.mirror.as_ref().is_some_and(|hook| hook.numbered()) {
                self.numbered_in_flight -= 1;
                if self.numbered_in_flight == 0 {
                    s.write_marks[self.mark].store(u64::MAX, SeqCst);
                }
            }
            if f.setup.is_none() {
                s.counters.fenced_metric.increment(1);
            }
            // Never written; a hook is told its outcome is unknown all the same, which
            // costs at most a needless copy.
            f.fail(&s.counters, error);
        }
    }

    /// The connection ended with `error`: every request still in flight gets it (a
    /// hooked one is told its outcome is unknown, rule 4).
    fn fail_in_flight(&mut self, error: BackendError) {
        let s = self.server();
        for f in self.inflight.drain(..) {
            f.fail(&s.counters, error);
        }
        self.numbered_in_flight = 0;
        s.write_marks[self.mark].store(u64::MAX, SeqCst);
        s.counters.connection(-1);
    }
}

/// Serve one open connection until it fails or the pool shuts down: write what clients
/// queued (in batches), read and deliver replies, time out the oldest request.
async fn serve<R, W>(
    mut conn: Connection<'_>,
    protocol: Protocol,
    (mut rd, mut wr): (R, W),
    first: Option<BackendRequest>,
    rx: &mut mpsc::Receiver<BackendRequest>,
) -> End
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let s = conn.server();
    conn.setup(protocol);
    if let Some(request) = first
        && let Some(bytes) = conn.enqueue(request)
    {
        s.counters.written(1, bytes);
    }
    let mut senders_gone = false;
    let timer = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(timer);
    let mut timer_at: Option<Instant> = None;
    // Whether the task already stepped aside once since its last write.
    let mut yielded = false;
    // Set once the member's fence closed on this connection (rule 15): it writes nothing
    // more and takes no new request, and stays open only to read the replies to what it
    // had already written.
    let mut fenced = false;
    let end = loop {
        if !fenced {
            conn.drain(rx, &mut senders_gone);
        }
        if !fenced && !conn.wbuf.is_empty() && !yielded && conn.wbuf.len() < WRITE_BATCH {
            // Step aside once before writing, so client sessions that are already runnable
            // can add their requests to this write: one write (one packet, one wakeup of
            // the server) for many clients, as nutcracker's event loop does.
            yielded = true;
            tokio::task::yield_now().await;
            conn.drain(rx, &mut senders_gone);
        }
        if senders_gone && conn.inflight.is_empty() && conn.wbuf.is_empty() {
            break End::Shutdown;
        }
        if !fenced && !conn.wbuf.is_empty() && conn.pool.fenced() {
            // Rule 15, checked again right before the write: a member that stopped (and
            // resumed past its lease) after its requests were queued writes none of them,
            // and refuses them (`-TRYAGAIN`: not done, safe to send again).
            conn.refuse_unsent(BackendError::Fenced);
            fenced = true;
        }
        // What it had written went to the server before the fence closed. The server ran
        // it before a leader closed this connection, so before any flip's drain, or
        // never (the closing discards what it had not read): a reply read is the truth
        // and is delivered; a request left unanswered when the connection ends is of
        // unknown outcome (rule 4). Once only a request partly written is left (or
        // none), the connection closes.
        if fenced && conn.inflight.len() <= usize::from(!conn.wbuf.is_empty()) {
            break End::Failed(BackendError::Fenced);
        }
        let deadline = conn.inflight.front().and_then(|f| f.deadline);
        if deadline != timer_at {
            if let Some(at) = deadline {
                timer.as_mut().reset(at);
            }
            timer_at = deadline;
        }
        if conn.rbuf.capacity() - conn.rbuf.len() < READ_CHUNK / 4 {
            conn.rbuf.reserve(READ_CHUNK);
        }
        tokio::select! {
            biased;
            read = rd.read_buf(&mut conn.rbuf) => {
                match read {
                    Ok(0) => {
                        s.counters.server_eof.fetch_add(1, Relaxed);
                        break End::Failed(BackendError::Reset);
                    }
                    Ok(_) => {}
                    Err(_) => {
                        s.counters.server_err.fetch_add(1, Relaxed);
                        break End::Failed(BackendError::Reset);
                    }
                }
                if let Err(error) = conn.deliver() {
                    break End::Failed(error);
                }
            }
            written = wr.write_buf(&mut conn.wbuf), if !fenced && !conn.wbuf.is_empty() => {
                yielded = false;
                if written.is_err() {
                    s.counters.server_err.fetch_add(1, Relaxed);
                    break End::Failed(BackendError::Reset);
                }
            }
            request = rx.recv(), if !fenced && conn.wbuf.is_empty() && !senders_gone => match request {
                Some(request) => {
                    if let Some(bytes) = conn.enqueue(request) {
                        s.counters.written(1, bytes);
                    }
                }
                None => senders_gone = true,
            },
            () = &mut timer, if timer_at.is_some() => {
                s.counters.server_timedout.fetch_add(1, Relaxed);
                s.counters.timeouts_metric.increment(1);
                break End::Failed(BackendError::TimedOut);
            }
        }
    };
    let error = match end {
        End::Failed(error) => {
            if !matches!(error, BackendError::TimedOut | BackendError::Fenced) {
                s.counters.errors_metric.increment(1);
            }
            tracing::debug!(pool = conn.pool.name(), server = %s.name, %error, inflight = conn.inflight.len(), "backend connection closed");
            // What is still in flight was written, wholly or in part: a fence refuses
            // only what it kept off the wire, so the rest is told its outcome is unknown.
            if error == BackendError::Fenced {
                BackendError::Reset
            } else {
                error
            }
        }
        End::Shutdown => BackendError::Reset,
    };
    conn.fail_in_flight(error);
    end
}

/// Replies read by one [`Connection::deliver`] call, counted into the server's counters once, when it
/// returns (whichever way).
struct Answered<'a> {
    /// Where they are counted.
    counters: &'a super::counters::ServerCounters,
    /// Requests answered.
    count: usize,
    /// Their request bytes.
    request_bytes: usize,
    /// Their reply bytes.
    reply_bytes: usize,
}

impl Drop for Answered<'_> {
    fn drop(&mut self) {
        self.counters
            .finished(self.count, self.request_bytes, Some(self.reply_bytes));
    }
}
