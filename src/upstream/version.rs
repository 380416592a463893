//! A server's `redis_version`, which HELLO and INFO report to clients: read from an `INFO
//! server` reply, by each pipelined connection as it connects (`backend.rs`) and at start
//! by a short-lived probe, so it is known before any client has used the server.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::backend::{DEFAULT_CONNECT_TIMEOUT, Stream, connect};
use super::pool::{Pool, Server};
use crate::resp::{ReplyScanner, encode, info_field};

/// Learn `server`'s `redis_version` with a short-lived connection (AUTH, `CLIENT SETNAME`,
/// INFO server), so HELLO and INFO can report it before any client has used the server.
/// Failures are ignored: the first real connection learns it too. The probe names itself
/// as the pool's connections do: a cutover's check for clients connected straight to a
/// source server counts a nameless connection that has sent a command (`INFO`) as one
/// (`migrate/direct_clients.rs`), and a pool may start (a fleet member joining, say) while
/// another process checks.
pub async fn probe(pool: Arc<Pool>, server: usize) {
    let s = &pool.servers[server];
    let Ok(stream) = connect(&s.addr, pool.timeout()).await else {
        return;
    };
    let mut request = BytesMut::new();
    if let Some(password) = &pool.config.redis_auth {
        encode::command(&mut request, &[b"AUTH".as_slice(), password.as_bytes()]);
    }
    let name = pool.connection_name();
    encode::command(&mut request, &[b"CLIENT".as_slice(), b"SETNAME", &name]);
    encode::command(&mut request, &[b"INFO".as_slice(), b"server"]);
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
        // AUTH's, if sent, and SETNAME's (neither holds `redis_version:`), then INFO's.
        let replies = if pool.config.redis_auth.is_some() {
            3
        } else {
            2
        };
        for _ in 0..replies {
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
