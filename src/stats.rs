//! nutcracker-compatible stats: the names and descriptions of nutcracker 0.5.0's pool and
//! server counters, as `-D` prints them and as the stats port's JSON uses them.

/// Pool-level stats: `(name, description)`, in nutcracker's order.
pub const POOL_STATS: [(&str, &str); 6] = [
    ("client_eof", "# eof on client connections"),
    ("client_err", "# errors on client connections"),
    ("client_connections", "# active client connections"),
    ("server_ejects", "# times backend server was ejected"),
    ("forward_error", "# times we encountered a forwarding error"),
    (
        "fragments",
        "# fragments created from a multi-vector request",
    ),
];

/// Server-level stats: `(name, description)`, in nutcracker's order.
pub const SERVER_STATS: [(&str, &str); 13] = [
    ("server_eof", "# eof on server connections"),
    ("server_err", "# errors on server connections"),
    ("server_timedout", "# timeouts on server connections"),
    ("server_connections", "# active server connections"),
    (
        "server_ejected_at",
        "timestamp when server was ejected in usec since epoch",
    ),
    ("requests", "# requests"),
    ("request_bytes", "total request bytes"),
    ("responses", "# responses"),
    ("response_bytes", "total response bytes"),
    ("in_queue", "# requests in incoming queue"),
    ("in_queue_bytes", "current request bytes in incoming queue"),
    ("out_queue", "# requests in outgoing queue"),
    ("out_queue_bytes", "current request bytes in outgoing queue"),
];

/// The text `-D` prints, laid out as nutcracker lays it out.
pub fn describe() -> String {
    let mut out = String::from("pool stats:\n");
    for (name, description) in POOL_STATS {
        out.push_str(&format!("  {name:<20}\"{description}\"\n"));
    }
    out.push_str("\nserver stats:\n");
    for (name, description) in SERVER_STATS {
        out.push_str(&format!("  {name:<20}\"{description}\"\n"));
    }
    out
}

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use crate::proxy::Pool;

/// The nutcracker version the stats JSON claims, so existing dashboards and scripts that
/// check it keep working.
const COMPAT_VERSION: &str = "0.5.0";

/// Builds nutcracker's stats JSON from the pools' counters.
pub struct StatsReporter {
    /// The pools, in name-sorted order.
    pools: Vec<Arc<Pool>>,
    /// When the proxy started (for `uptime`).
    started: Instant,
    /// The host name (`source`).
    source: String,
}

impl StatsReporter {
    /// A reporter over `pools`.
    pub fn new(pools: Vec<Arc<Pool>>) -> StatsReporter {
        StatsReporter {
            pools,
            started: Instant::now(),
            source: hostname(),
        }
    }

    /// One JSON object on one line, laid out byte for byte as nutcracker 0.5.0 lays it out.
    pub fn render(&self) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let clients: i64 = self
            .pools
            .iter()
            .map(|p| p.counters.client_connections.load(Relaxed))
            .sum();
        let servers: i64 = self
            .pools
            .iter()
            .flat_map(|p| p.servers.iter())
            .map(|s| s.counters.server_connections.load(Relaxed))
            .sum();
        let accepted: u64 = self
            .pools
            .iter()
            .map(|p| p.counters.client_eof.load(Relaxed) + p.counters.client_err.load(Relaxed))
            .sum::<u64>()
            + clients.max(0) as u64;
        let listeners = self.pools.len() as i64;
        let mut out = String::with_capacity(1024);
        let _ = write!(
            out,
            "{{\"service\":\"nutcracker\", \"source\":{}, \"version\":\"{COMPAT_VERSION}\", \"uptime\":{}, \"timestamp\":{now}, \"total_connections\":{}, \"curr_connections\":{}",
            json_string(&self.source),
            self.started.elapsed().as_secs(),
            accepted + listeners as u64,
            clients + servers + listeners,
        );
        // nutcracker writes ", " before the first pool or server of an object and a bare
        // "," after a closing brace.
        for (p, pool) in self.pools.iter().enumerate() {
            let c = &pool.counters;
            let _ = write!(
                out,
                "{}{}: {{\"client_eof\":{}, \"client_err\":{}, \"client_connections\":{}, \"server_ejects\":{}, \"forward_error\":{}, \"fragments\":0",
                if p == 0 { ", " } else { "," },
                json_string(pool.name()),
                c.client_eof.load(Relaxed),
                c.client_err.load(Relaxed),
                c.client_connections.load(Relaxed),
                c.server_ejects.load(Relaxed),
                c.forward_error.load(Relaxed),
            );
            for (n, server) in pool.servers.iter().enumerate() {
                let s = &server.counters;
                let u = |a: &AtomicU64| a.load(Relaxed);
                let i = |a: &AtomicI64| a.load(Relaxed);
                let _ = write!(
                    out,
                    "{}{}: {{\"server_eof\":{}, \"server_err\":{}, \"server_timedout\":{}, \"server_connections\":{}, \"server_ejected_at\":{}, \"requests\":{}, \"request_bytes\":{}, \"responses\":{}, \"response_bytes\":{}, \"in_queue\":{}, \"in_queue_bytes\":{}, \"out_queue\":{}, \"out_queue_bytes\":{}}}",
                    if n == 0 { ", " } else { "," },
                    json_string(&server.name),
                    u(&s.server_eof),
                    u(&s.server_err),
                    u(&s.server_timedout),
                    i(&s.server_connections),
                    u(&s.server_ejected_at),
                    u(&s.requests),
                    u(&s.request_bytes),
                    u(&s.responses),
                    u(&s.response_bytes),
                    i(&s.in_queue),
                    i(&s.in_queue_bytes),
                    i(&s.out_queue),
                    i(&s.out_queue_bytes),
                );
            }
            out.push('}');
        }
        out.push_str("}\n");
        out
    }
}

/// The stats port: every `interval` the JSON is rebuilt; each connection gets the latest
/// snapshot and is closed, as nutcracker does (no request is read).
pub async fn serve(listener: TcpListener, reporter: StatsReporter, interval: Duration) {
    let snapshot = Arc::new(Mutex::new(reporter.render()));
    let refresh = snapshot.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval.max(Duration::from_millis(10)));
        loop {
            tick.tick().await;
            let json = reporter.render();
            if let Ok(mut s) = refresh.lock() {
                *s = json;
            }
        }
    });
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let json = snapshot.lock().map(|s| s.clone()).unwrap_or_default();
        tokio::spawn(async move {
            let _ = stream.write_all(json.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// Bind the stats port.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// A JSON string literal.
fn json_string(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

/// This machine's host name (nutcracker's `source`).
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".to_string();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}
