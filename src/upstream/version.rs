//! A server's `redis_version`, which HELLO and INFO report to clients: read from an `INFO
//! server` reply, by each pipelined connection as it connects (`backend.rs`) and at start
//! by a short-lived probe, so it is known before any client has used the server.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::backend::{DEFAULT_CONNECT_TIMEOUT, Stream, connect, setup_commands};
use super::pool::{Pool, Server};
use crate::resp::{Protocol, ReplyScanner, encode, info_field};

/// Learn `server`'s `redis_version` with a short-lived connection (the setup every
/// connection of cutover's sends, [`setup_commands`]: AUTH, SELECT, `CLIENT SETNAME`,
/// INFO server), so HELLO and INFO can report it before any client has used the server.
/// Failures are ignored: the first real connection learns it too. It names itself like
/// the rest because a pool may start (a fleet member joining, say) while another process
/// checks a source server for clients connected straight to it, and a nameless
/// connection that has sent `INFO` would count as one (`migrate/direct_clients.rs`).
pub async fn probe(pool: Arc<Pool>, server: usize) {
    let s = &pool.servers[server];
    let Ok(stream) = connect(&s.addr, pool.timeout()).await else {
        return;
    };
    let setup = setup_commands(&pool, Protocol::Resp2, true);
    let mut request = BytesMut::new();
    for (_, args) in &setup {
        encode::command(&mut request, args);
    }
    let exchange = async {
        let (mut rd, mut wr): (
            Box<dyn AsyncRead + Unpin + Send>,
            Box<dyn AsyncWrite + Unpin + Send>,
        ) = match stream {
            Stream::Tcp(t) => {
                let (r, w) = t.into_split();
                (Box::new(r), Box::new(w))
            }
            Stream::Unix(u) => {
                let (r, w) = u.into_split();
                (Box::new(r), Box::new(w))
            }
        };
        wr.write_all(&request).await.ok()?;
        let mut buf = BytesMut::with_capacity(8192);
        let mut scanner = ReplyScanner::default();
        // One reply a command; only INFO's holds `redis_version:`.
        for _ in 0..setup.len() {
            loop {
                if let Some(len) = scanner.scan(&buf).ok()? {
                    let reply = buf.split_to(len);
                    learn(s, &reply);
                    break;
                }
                if rd.read_buf(&mut buf).await.ok()? == 0 {
                    return None;
                }
            }
        }
        Some(())
    };
    let _ = tokio::time::timeout(pool.timeout().unwrap_or(DEFAULT_CONNECT_TIMEOUT), exchange).await;
}

/// Keep the `redis_version:` line of an `INFO server` reply.
pub(super) fn learn(server: &Server, reply: &[u8]) {
    let text = String::from_utf8_lossy(reply);
    if let Some(version) = info_field(&text, "redis_version")
        && let Ok(mut slot) = server.version.lock()
    {
        *slot = Some(version.to_string());
    }
}
