//! nutcracker-compatible stats: the names and descriptions of nutcracker 0.5.0's pool and
//! server counters, as `-D` prints them and as the stats port's JSON uses them.
//!
//! May import: `upstream` (the pools' counters).

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

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{Map, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use crate::upstream::Pool;

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
        let mut doc = Map::new();
        doc.insert("service".into(), "nutcracker".into());
        doc.insert("source".into(), self.source.clone().into());
        doc.insert("version".into(), COMPAT_VERSION.into());
        doc.insert("uptime".into(), self.started.elapsed().as_secs().into());
        doc.insert("timestamp".into(), now.into());
        doc.insert(
            "total_connections".into(),
            (accepted + listeners as u64).into(),
        );
        doc.insert(
            "curr_connections".into(),
            (clients + servers + listeners).into(),
        );
        for pool in &self.pools {
            let c = &pool.counters;
            let mut p = Map::new();
            p.insert("client_eof".into(), c.client_eof.load(Relaxed).into());
            p.insert("client_err".into(), c.client_err.load(Relaxed).into());
            p.insert(
                "client_connections".into(),
                c.client_connections.load(Relaxed).into(),
            );
            p.insert("server_ejects".into(), c.server_ejects.load(Relaxed).into());
            p.insert("forward_error".into(), c.forward_error.load(Relaxed).into());
            p.insert("fragments".into(), 0.into());
            for server in &pool.servers {
                let s = &server.counters;
                let u = |a: &AtomicU64| Value::from(a.load(Relaxed));
                let i = |a: &AtomicI64| Value::from(a.load(Relaxed));
                let fields = [
                    ("server_eof", u(&s.server_eof)),
                    ("server_err", u(&s.server_err)),
                    ("server_timedout", u(&s.server_timedout)),
                    ("server_connections", i(&s.server_connections)),
                    ("server_ejected_at", u(&s.server_ejected_at)),
                    ("requests", u(&s.requests)),
                    ("request_bytes", u(&s.request_bytes)),
                    ("responses", u(&s.responses)),
                    ("response_bytes", u(&s.response_bytes)),
                    ("in_queue", i(&s.in_queue)),
                    ("in_queue_bytes", i(&s.in_queue_bytes)),
                    ("out_queue", i(&s.out_queue)),
                    ("out_queue_bytes", i(&s.out_queue_bytes)),
                ];
                let server_doc: Map<String, Value> = fields
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect();
                p.insert(server.name.clone(), Value::Object(server_doc));
            }
            doc.insert(pool.name().to_string(), Value::Object(p));
        }
        let mut out = Vec::with_capacity(1024);
        let mut writer =
            serde_json::Serializer::with_formatter(&mut out, NutcrackerLayout::default());
        if Value::Object(doc).serialize(&mut writer).is_err() {
            return "{}\n".to_string();
        }
        out.push(b'\n');
        String::from_utf8(out).unwrap_or_default()
    }
}

/// nutcracker's separators, so the stats JSON is laid out byte for byte as nutcracker
/// 0.5.0 lays it out: `", "` between two members, but a bare `","` after a member whose
/// value is an object, and `": {"` before a nested object; no other whitespace.
/// (serde_json writes the values and escapes the strings.)
#[derive(Default)]
struct NutcrackerLayout {
    /// The member just written was an object.
    after_object: bool,
    /// Objects open.
    depth: usize,
}

impl serde_json::ser::Formatter for NutcrackerLayout {
    fn begin_object<W: ?Sized + std::io::Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        self.depth += 1;
        writer.write_all(if self.depth > 1 { b" {" } else { b"{" })
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        let separator: &[u8] = match (first, self.after_object) {
            (true, _) => b"",
            (false, true) => b",",
            (false, false) => b", ",
        };
        self.after_object = false;
        writer.write_all(separator)
    }

    fn end_object<W: ?Sized + std::io::Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        self.depth = self.depth.saturating_sub(1);
        self.after_object = true;
        writer.write_all(b"}")
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

#[cfg(test)]
mod layout_tests {
    use super::*;

    #[test]
    fn nutcracker_separators_and_json_escaping() {
        let doc = serde_json::json!({"a": 1, "p\"ö": {"c": "x\u{1}y", "s": {"n": 2}}, "d": 3});
        let mut out = Vec::new();
        let mut writer =
            serde_json::Serializer::with_formatter(&mut out, NutcrackerLayout::default());
        doc.serialize(&mut writer).expect("serialize");
        let text = String::from_utf8(out).expect("utf-8");
        assert_eq!(
            text,
            "{\"a\":1, \"p\\\"ö\": {\"c\":\"x\\u0001y\", \"s\": {\"n\":2}},\"d\":3}"
        );
        let back: Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(back, doc);
    }
}
