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
