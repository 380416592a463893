//! Bad client input: garbage, deep nesting, huge declared lengths, requests that never
//! complete, clients that vanish mid-pipeline. Each gets a precise error (or is cut off),
//! never panics the proxy, never holds up other clients, never grows memory without bound.

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use support::{Proxy, RedisServer, command};

fn proxy(backend: &RedisServer, extra: &[&str]) -> Proxy {
    Proxy::cutover_with(
        &support::pool_config(&[], &[format!("{}:1", backend.addr())]),
        extra,
    )
}

/// Another client still gets served, and the process is alive.
fn still_serving(proxy: &mut Proxy) {
    let mut other = proxy.connect();
    assert_eq!(other.call(&[b"SET", b"canary", b"1"]), b"+OK\r\n");
    assert_eq!(other.call(&[b"GET", b"canary"]), b"$1\r\n1\r\n");
    assert!(proxy.is_running(), "the proxy must not crash");
}

/// Send `input`, expect one `-ERR Protocol error...` reply containing `phrase`, then a close.
fn refused(proxy: &Proxy, input: &[u8], phrase: &str) {
    let mut conn = proxy.connect();
    conn.send(input);
    let reply = String::from_utf8_lossy(&conn.try_reply().expect("an error reply")).into_owned();
    assert!(
        reply.starts_with("-ERR Protocol error:") && reply.contains(phrase),
        "{reply}"
    );
    assert!(
        conn.closed_within(Duration::from_secs(2)),
        "closed after a protocol error"
    );
}

#[test]
fn garbage_is_refused_with_a_protocol_error() {
    let backend = RedisServer::start();
    let mut proxy = proxy(&backend, &[]);
    refused(&proxy, b"*2\r\n$3\r\nGET\r\n:12\r\n", "expected '$'");
    refused(&proxy, b"*zz\r\n", "invalid length");
    refused(&proxy, b"*1\r\n$-5\r\n", "invalid bulk length");
    refused(
        &proxy,
        &[b"*1\r\n$".as_slice(), &[b'9'; 40]].concat(),
        "too long",
    );
    still_serving(&mut proxy);
}

#[test]
fn ten_thousand_nested_arrays_do_not_recurse() {
    let backend = RedisServer::start();
    let mut proxy = proxy(&backend, &[]);
    refused(&proxy, &b"*1\r\n".repeat(10_000), "expected '$'");
    still_serving(&mut proxy);
}

#[test]
fn huge_declared_lengths_are_refused_before_any_body_arrives() {
    let backend = RedisServer::start();
    let mut proxy = proxy(
        &backend,
        &["--max-request-bytes", "1048576", "--max-args", "1000"],
    );
    refused(
        &proxy,
        b"*1\r\n$4000000000\r\n",
        "argument length 4000000000 is over the limit of 536870912",
    );
    refused(&proxy, b"*2\r\n$3\r\nSET\r\n$2000000\r\n", "request size");
    refused(
        &proxy,
        b"*5000\r\n",
        "argument count 5000 is over the limit of 1000",
    );
    still_serving(&mut proxy);
}

#[test]
fn requests_that_never_complete_hold_nothing_up() {
    let backend = RedisServer::start();
    let mut proxy = proxy(&backend, &[]);
    let before = proxy.rss_kib();
    // 50 clients each stop half-way through a request, and stay connected.
    let mut stalled = Vec::new();
    for _ in 0..50 {
        let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).expect("connect");
        s.write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$100\r\nabc")
            .expect("write");
        stalled.push(s);
    }
    still_serving(&mut proxy);
    let after = proxy.rss_kib();
    assert!(
        after < before + 16 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    drop(stalled);
    still_serving(&mut proxy);
}

#[test]
fn a_client_that_vanishes_mid_pipeline_affects_no_one() {
    let backend = RedisServer::start();
    let mut proxy = proxy(&backend, &[]);
    for round in 0..20 {
        let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).expect("connect");
        let mut batch = Vec::new();
        for i in 0..1000 {
            batch.extend(command(&[
                b"SET",
                format!("vanish-{round}-{i}").as_bytes(),
                b"v",
            ]));
        }
        // Half a request at the end, then gone without reading a reply.
        batch.extend_from_slice(b"*2\r\n$3\r\nGET");
        s.write_all(&batch).expect("write");
        drop(s);
    }
    still_serving(&mut proxy);
}

#[test]
fn a_flood_of_large_values_stays_within_the_limits() {
    let backend = RedisServer::start();
    let mut proxy = proxy(&backend, &["--max-bulk-bytes", "65536"]);
    let before = proxy.rss_kib();
    for _ in 0..20 {
        let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).expect("connect");
        // Declares 10 MB, over the 64 KiB limit: refused at the header, nothing buffered.
        let _ = s.write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$10000000\r\n");
        let _ = s.write_all(&vec![b'x'; 1 << 20]);
    }
    still_serving(&mut proxy);
    let after = proxy.rss_kib();
    assert!(
        after < before + 32 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
}
