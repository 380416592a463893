//! The replication client against a real redis-server: a full sync whose RDB is skipped,
//! the master's writes in its order (relative TTLs made absolute by the master), offsets
//! that match the master's own, `REPLCONF GETACK` answered, and after the master drops the
//! connection (`CLIENT KILL TYPE replica`) a `PSYNC` that continues where it stopped.

mod support;

use std::time::Duration;

use cutover::upstream::replication::{Position, ReplicationStream, Sync};
use support::{RedisServer, wait_for};

/// A runtime for the async client.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// The next `n` commands, as words.
async fn take(stream: &mut ReplicationStream, n: usize) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    while out.len() < n {
        let command = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("a command in time")
            .expect("the stream");
        let words: Vec<String> = command
            .request
            .args()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if words[0].eq_ignore_ascii_case("PING") {
            continue;
        }
        out.push(words);
    }
    out
}

#[test]
fn full_sync_then_the_write_stream_in_order_and_a_continued_psync() {
    let master = RedisServer::start();
    support::fill_numbered(&master, 500);
    let rt = runtime();
    let addr = master.addr();
    let (mut stream, sync) = rt
        .block_on(ReplicationStream::open(&addr, "master", None, None))
        .expect("a replication stream");
    assert_eq!(sync, Sync::Full, "a new replica gets a full sync");
    let mut conn = master.client();
    let _: () = redis::cmd("SET")
        .arg("a")
        .arg("1")
        .query(&mut conn)
        .expect("SET");
    let _: () = redis::cmd("SET")
        .arg("t")
        .arg("x")
        .arg("EX")
        .arg(100)
        .query(&mut conn)
        .expect("SET EX");
    let _: i64 = redis::cmd("INCR").arg("a").query(&mut conn).expect("INCR");
    let _: i64 = redis::cmd("DEL").arg("k1").query(&mut conn).expect("DEL");
    let got = rt.block_on(take(&mut stream, 5));
    assert_eq!(got[0], ["SELECT", "0"]);
    assert_eq!(got[1], ["SET", "a", "1"]);
    assert_eq!(got[2][..3], ["SET", "t", "x"]);
    assert!(
        got[2].iter().any(|w| w.eq_ignore_ascii_case("PXAT")),
        "the master makes relative TTLs absolute: {:?}",
        got[2]
    );
    assert_eq!(got[3], ["INCR", "a"]);
    assert_eq!(got[4], ["DEL", "k1"]);
    // Our offset is the master's once we have taken everything it wrote.
    assert_eq!(stream.position().offset, master.master_repl_offset());
    // GETACK is answered: the master sees our offset.
    rt.block_on(stream.ack()).expect("ack");
    wait_for(
        "the master to see the replica's offset",
        Duration::from_secs(10),
        || {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query(&mut master.client())
                .expect("INFO");
            info.contains(&format!("offset={}", stream.position().offset))
        },
    );
    let at: Position = stream.position().clone();
    // The master drops us; writes go on meanwhile; PSYNC continues from where we were.
    master.drop_replicas();
    let _: () = redis::cmd("SET")
        .arg("b")
        .arg("2")
        .query(&mut conn)
        .expect("SET");
    let dropped = rt.block_on(async {
        loop {
            match stream.next().await {
                Ok(c) if c.request.name().eq_ignore_ascii_case(b"PING") => continue,
                other => return other,
            }
        }
    });
    assert!(dropped.is_err(), "the killed stream ends");
    let (mut again, sync) = rt
        .block_on(ReplicationStream::open(&addr, "master", None, Some(&at)))
        .expect("reconnect");
    assert_eq!(sync, Sync::Continued, "the backlog had it");
    let got = rt.block_on(take(&mut again, 1));
    assert_eq!(got[0], ["SET", "b", "2"], "nothing missed, nothing twice");
}

#[test]
fn a_server_that_refuses_psync_is_named_with_what_it_said() {
    let master = RedisServer::start_with(&["--rename-command", "PSYNC", ""]);
    let rt = runtime();
    let error = rt
        .block_on(ReplicationStream::open(
            &master.addr(),
            "legacy/master",
            None,
            None,
        ))
        .err()
        .expect("refused");
    let text = error.to_string();
    assert!(text.starts_with("legacy/master: refused PSYNC"), "{text}");
    assert!(text.contains("unknown command"), "{text}");
}

/// A fake master (a loopback listener of the test's own) that answers the handshake with
/// a full sync of an `rdb`-byte payload, then sends `stream` and closes.
async fn fake_master(rdb: Vec<u8>, stream: Vec<u8>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = support::listen_on_free_port();
    listener.set_nonblocking(true).expect("nonblocking");
    let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        let Ok((mut socket, _)) = listener.accept().await else {
            return;
        };
        let mut seen = Vec::new();
        let mut buf = [0u8; 1024];
        // REPLCONF, REPLCONF, CLIENT SETNAME, PSYNC: answer each as it arrives.
        let mut answered = 0;
        while answered < 4 {
            let Ok(n) = socket.read(&mut buf).await else {
                return;
            };
            if n == 0 {
                return;
            }
            seen.extend_from_slice(&buf[..n]);
            let commands = seen.windows(1).filter(|w| w[0] == b'*').count();
            while answered < commands.min(4) {
                let answer: Vec<u8> = if answered < 3 {
                    b"+OK\r\n".to_vec()
                } else {
                    let mut a =
                        format!("+FULLRESYNC {} 0\r\n\n\n${}\r\n", "f".repeat(40), rdb.len())
                            .into_bytes();
                    a.extend_from_slice(&rdb);
                    a
                };
                let _ = socket.write_all(&answer).await;
                answered += 1;
            }
        }
        let _ = socket.write_all(&stream).await;
    });
    addr
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(support::property_cases(64)))]

    /// Whatever a master sends after the sync, the client returns commands or an error:
    /// it never panics, never hangs past the stream's end, and its offset counts exactly
    /// the bytes of the commands it returned.
    #[test]
    fn any_stream_gives_commands_or_an_error(
        rdb in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2000),
        noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
        commands in proptest::collection::vec("[a-z]{1,8}", 0..20),
    ) {
        let mut stream = Vec::new();
        let mut expected = 0u64;
        for word in &commands {
            let one = format!("*2\r\n$3\r\nSET\r\n${}\r\n{word}\r\n", word.len());
            expected += one.len() as u64;
            stream.extend_from_slice(one.as_bytes());
        }
        stream.extend_from_slice(&noise);
        let rt = runtime();
        rt.block_on(async {
            let addr = fake_master(rdb, stream).await;
            let (mut client, sync) = ReplicationStream::open(&addr, "fake", None, None).await.expect("handshake");
            proptest::prop_assert_eq!(sync, Sync::Full);
            let mut taken = 0;
            let end = tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    match client.next().await {
                        Ok(_) => taken += 1,
                        Err(error) => return error,
                    }
                }
            })
            .await
            .expect("the stream ends when the master closes");
            let _ = end.to_string();
            proptest::prop_assert!(taken >= commands.len());
            if taken == commands.len() {
                proptest::prop_assert!(client.position().offset >= expected);
            }
            Ok(())
        })?;
    }
}
