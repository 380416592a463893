//! The proxy's counters. Each is kept twice, on purpose: as plain atomics that the
//! nutcracker-compatible stats JSON reads, and as `metrics` handles (resolved once, here,
//! never per request) that the Prometheus endpoint exports.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

use crate::command::CommandClass;

/// Why the proxy answered a request with an error of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A command cutover does not support.
    Unsupported,
    /// A supported command with the wrong number of arguments.
    Arity,
    /// Malformed RESP or a request over a limit (the connection is closed).
    Protocol,
    /// A command before AUTH on a pool with `redis_auth`, or a wrong password.
    Auth,
    /// The backend could not be reached, timed out, or the connection broke.
    Backend,
    /// Refused with `-TRYAGAIN` by a fleet member whose lease may have lapsed (rule 15):
    /// not a backend's failure, and what an operator is alerted to.
    Fenced,
}

impl ErrorKind {
    /// Every kind, for resolving handles up front.
    pub const ALL: [ErrorKind; 6] = [
        ErrorKind::Unsupported,
        ErrorKind::Arity,
        ErrorKind::Protocol,
        ErrorKind::Auth,
        ErrorKind::Backend,
        ErrorKind::Fenced,
    ];

    /// The kind of a request's failure to be forwarded: `fenced` for a fleet member's
    /// refusal, `backend` for the rest.
    pub fn of(error: super::BackendError) -> ErrorKind {
        if error == super::BackendError::Fenced {
            ErrorKind::Fenced
        } else {
            ErrorKind::Backend
        }
    }

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Arity => "arity",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Auth => "auth",
            ErrorKind::Backend => "backend",
            ErrorKind::Fenced => "fenced",
        }
    }
}

/// Per-pool counters.
pub struct PoolCounters {
    /// nutcracker `client_eof`: clients that closed their connection.
    pub client_eof: AtomicU64,
    /// nutcracker `client_err`: client connections closed on an error.
    pub client_err: AtomicU64,
    /// nutcracker `client_connections`: clients connected now.
    pub client_connections: AtomicI64,
    /// nutcracker `server_ejects`: times a server was ejected.
    pub server_ejects: AtomicU64,
    /// nutcracker `forward_error`: requests that could not be forwarded.
    pub forward_error: AtomicU64,
    /// `cutover_client_connections`.
    pub connections_gauge: Gauge,
    /// `cutover_client_connections_accepted_total`.
    pub accepted: Counter,
    /// `cutover_client_rejected_total`: clients turned away over `--max-clients`.
    pub rejected: Counter,
    /// `cutover_requests_total` by command class.
    requests: [Counter; 4],
    /// `cutover_request_duration_seconds` by command class (time to the reply being ready).
    latency: [Histogram; 4],
    /// `cutover_request_errors_total` by kind.
    errors: [Counter; ErrorKind::ALL.len()],
}

impl PoolCounters {
    /// Resolve every handle for `pool`.
    pub fn new(pool: &str) -> PoolCounters {
        let pool = pool.to_string();
        PoolCounters {
            client_eof: AtomicU64::new(0),
            client_err: AtomicU64::new(0),
            client_connections: AtomicI64::new(0),
            server_ejects: AtomicU64::new(0),
            forward_error: AtomicU64::new(0),
            connections_gauge: gauge!("cutover_client_connections", "pool" => pool.clone()),
            accepted: counter!("cutover_client_connections_accepted_total", "pool" => pool.clone()),
            rejected: counter!("cutover_client_rejected_total", "pool" => pool.clone()),
            requests: CommandClass::ALL.map(|c| counter!("cutover_requests_total", "pool" => pool.clone(), "class" => c.label())),
            latency: CommandClass::ALL
                .map(|c| histogram!("cutover_request_duration_seconds", "pool" => pool.clone(), "class" => c.label())),
            errors: ErrorKind::ALL.map(|k| counter!("cutover_request_errors_total", "pool" => pool.clone(), "kind" => k.label())),
        }
    }

    /// Count `count` requests of `class`.
    pub fn requests(&self, class: CommandClass, count: u64) {
        self.requests[class as usize].increment(count);
    }

    /// Record how long a request of `class` took.
    pub fn latency(&self, class: CommandClass, seconds: f64) {
        self.latency[class as usize].record(seconds);
    }

    /// Count an error reply of `kind`.
    pub fn error(&self, kind: ErrorKind) {
        self.errors[kind as usize].increment(1);
        // nutcracker's `forward_error`: any request not forwarded.
        if matches!(kind, ErrorKind::Backend | ErrorKind::Fenced) {
            self.forward_error.fetch_add(1, Relaxed);
        }
    }

    /// A client connected.
    pub fn client_connected(&self) {
        self.client_connections.fetch_add(1, Relaxed);
        self.connections_gauge.increment(1.0);
        self.accepted.increment(1);
    }

    /// A client left; `error` when the proxy closed it on a protocol error.
    pub fn client_closed(&self, error: bool) {
        self.client_connections.fetch_sub(1, Relaxed);
        self.connections_gauge.decrement(1.0);
        if error {
            self.client_err.fetch_add(1, Relaxed);
        } else {
            self.client_eof.fetch_add(1, Relaxed);
        }
    }
}

/// Per-server counters.
pub struct ServerCounters {
    /// nutcracker `server_eof`: the server closed a connection.
    pub server_eof: AtomicU64,
    /// nutcracker `server_err`: connection errors (refused, reset, bad reply).
    pub server_err: AtomicU64,
    /// nutcracker `server_timedout`: requests that timed out.
    pub server_timedout: AtomicU64,
    /// nutcracker `server_connections`: open connections now.
    pub server_connections: AtomicI64,
    /// nutcracker `server_ejected_at`: µs since the epoch of the last ejection (0: never).
    pub server_ejected_at: AtomicU64,
    /// nutcracker `requests`.
    pub requests: AtomicU64,
    /// nutcracker `request_bytes`.
    pub request_bytes: AtomicU64,
    /// nutcracker `responses`.
    pub responses: AtomicU64,
    /// nutcracker `response_bytes`.
    pub response_bytes: AtomicU64,
    /// nutcracker `in_queue`: requests waiting to be written.
    pub in_queue: AtomicI64,
    /// nutcracker `in_queue_bytes`.
    pub in_queue_bytes: AtomicI64,
    /// nutcracker `out_queue`: requests written, awaiting their reply.
    pub out_queue: AtomicI64,
    /// nutcracker `out_queue_bytes`.
    pub out_queue_bytes: AtomicI64,
    /// `cutover_server_requests_total`, set from `requests` by [`ServerCounters::publish`].
    pub requests_metric: Counter,
    /// `cutover_server_request_bytes_total`, set from `request_bytes` when published.
    pub request_bytes_metric: Counter,
    /// `cutover_server_response_bytes_total`, set from `response_bytes` when published.
    pub response_bytes_metric: Counter,
    /// `cutover_server_errors_total` (refused, reset, eof, bad reply).
    pub errors_metric: Counter,
    /// `cutover_server_timeouts_total`.
    pub timeouts_metric: Counter,
    /// `cutover_server_ejections_total`.
    pub ejections_metric: Counter,
    /// `cutover_server_connections`.
    pub connections_metric: Gauge,
    /// `cutover_server_failures_total`: failures counted toward ejection (includes -OOM/-BUSY/-LOADING).
    pub failures_metric: Counter,
    /// `cutover_server_fenced_requests_total`: requests a fleet member's connections
    /// refused, never written, because its fence was closed or had lapsed since the
    /// request was routed (rule 15).
    pub fenced_metric: Counter,
}

impl ServerCounters {
    /// Resolve every handle for `server` of `pool`.
    pub fn new(pool: &str, server: &str) -> ServerCounters {
        let labels = [("pool", pool.to_string()), ("server", server.to_string())];
        ServerCounters {
            server_eof: AtomicU64::new(0),
            server_err: AtomicU64::new(0),
            server_timedout: AtomicU64::new(0),
            server_connections: AtomicI64::new(0),
            server_ejected_at: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            request_bytes: AtomicU64::new(0),
            responses: AtomicU64::new(0),
            response_bytes: AtomicU64::new(0),
            in_queue: AtomicI64::new(0),
            in_queue_bytes: AtomicI64::new(0),
            out_queue: AtomicI64::new(0),
            out_queue_bytes: AtomicI64::new(0),
            requests_metric: counter!("cutover_server_requests_total", &labels),
            request_bytes_metric: counter!("cutover_server_request_bytes_total", &labels),
            response_bytes_metric: counter!("cutover_server_response_bytes_total", &labels),
            errors_metric: counter!("cutover_server_errors_total", &labels),
            timeouts_metric: counter!("cutover_server_timeouts_total", &labels),
            ejections_metric: counter!("cutover_server_ejections_total", &labels),
            connections_metric: gauge!("cutover_server_connections", &labels),
            failures_metric: counter!("cutover_server_failures_total", &labels),
            fenced_metric: counter!("cutover_server_fenced_requests_total", &labels),
        }
    }

    /// A request of `bytes` was queued for this server.
    pub fn queued(&self, bytes: usize) {
        self.in_queue.fetch_add(1, Relaxed);
        self.in_queue_bytes.fetch_add(bytes as i64, Relaxed);
    }

    /// `count` queued requests of `bytes` in all were written (moved from the in queue to
    /// the out queue); a connection counts a drained batch at once.
    pub fn written(&self, count: usize, bytes: usize) {
        if count == 0 {
            return;
        }
        self.in_queue.fetch_sub(count as i64, Relaxed);
        self.in_queue_bytes.fetch_sub(bytes as i64, Relaxed);
        self.out_queue.fetch_add(count as i64, Relaxed);
        self.out_queue_bytes.fetch_add(bytes as i64, Relaxed);
        self.requests.fetch_add(count as u64, Relaxed);
        self.request_bytes.fetch_add(bytes as u64, Relaxed);
    }

    /// A queued request was dropped without being written.
    pub fn unqueued(&self, bytes: usize) {
        self.in_queue.fetch_sub(1, Relaxed);
        self.in_queue_bytes.fetch_sub(bytes as i64, Relaxed);
    }

    /// `count` written requests of `request_bytes` in all left the out queue;
    /// `reply_bytes` (in all) when they were answered.
    pub fn finished(&self, count: usize, request_bytes: usize, reply_bytes: Option<usize>) {
        if count == 0 {
            return;
        }
        self.out_queue.fetch_sub(count as i64, Relaxed);
        self.out_queue_bytes
            .fetch_sub(request_bytes as i64, Relaxed);
        if let Some(n) = reply_bytes {
            self.responses.fetch_add(count as u64, Relaxed);
            self.response_bytes.fetch_add(n as u64, Relaxed);
        }
    }

    /// Copy the per-request totals into their Prometheus counters (before a scrape): the
    /// atomics the stats port needs are counted anyway, and incrementing a second set of
    /// counters on every backend request was a visible share of a mirrored write's cost.
    pub fn publish(&self) {
        self.requests_metric.absolute(self.requests.load(Relaxed));
        self.request_bytes_metric
            .absolute(self.request_bytes.load(Relaxed));
        self.response_bytes_metric
            .absolute(self.response_bytes.load(Relaxed));
    }

    /// A connection opened or closed.
    pub fn connection(&self, delta: i64) {
        self.server_connections.fetch_add(delta, Relaxed);
        self.connections_metric.increment(delta as f64);
    }
}
