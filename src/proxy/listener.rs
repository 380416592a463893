//! A pool's client listener: TCP (with the pool's backlog and keepalive) or a unix
//! socket (with its permission), accepting until shutdown.

use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, UnixListener};
use tokio::sync::{mpsc, watch};

use super::Served;
use super::session;
use crate::config::Listen;
use crate::resp::RequestLimits;

/// Pause after an accept error (out of file descriptors, ...), doubling up to a second.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// A bound listener, ready to accept.
pub enum Bound {
    /// TCP.
    Tcp(TcpListener),
    /// A unix socket.
    Unix(UnixListener),
}

/// Bind `listen` with the pool's backlog (and permission for unix sockets).
pub fn bind(listen: &Listen, backlog: u32) -> std::io::Result<Bound> {
    match listen {
        Listen::Tcp { addr, .. } => {
            let socket = if addr.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            socket.set_reuseaddr(true)?;
            socket.bind(*addr)?;
            Ok(Bound::Tcp(socket.listen(backlog.max(1))?))
        }
        Listen::Unix { path, perm } => {
            // A socket file left by a previous run that nobody listens on is removed.
            if path.exists() && std::os::unix::net::UnixStream::connect(path).is_err() {
                let _ = std::fs::remove_file(path);
            }
            let listener = UnixListener::bind(path)?;
            if let Some(mode) = perm {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(*mode))?;
            }
            Ok(Bound::Unix(listener))
        }
    }
}

/// Accept clients for `pool` until `shutdown` turns true. Each session holds a clone of
/// `alive`; the proxy knows every session ended when all clones are dropped.
pub async fn serve(
    served: Arc<Served>,
    bound: Bound,
    limits: RequestLimits,
    mut shutdown: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
) {
    let mut backoff = ACCEPT_BACKOFF;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            accepted = accept(&bound) => accepted,
        };
        match accepted {
            Ok(Accepted::Tcp(stream)) => {
                backoff = ACCEPT_BACKOFF;
                let peer = stream
                    .peer_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_default();
                let local = stream
                    .local_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_default();
                let _ = stream.set_nodelay(true);
                if served.pool.config.tcpkeepalive {
                    set_keepalive(&stream);
                }
                let (rd, wr) = stream.into_split();
                let (served, shutdown, alive) = (served.clone(), shutdown.clone(), alive.clone());
                tokio::spawn(async move {
                    session::run(served, rd, wr, limits, shutdown, peer, local).await;
                    drop(alive);
                });
            }
            Ok(Accepted::Unix(stream)) => {
                backoff = ACCEPT_BACKOFF;
                let local = stream
                    .local_addr()
                    .ok()
                    .and_then(|a| a.as_pathname().map(|p| format!("{}:0", p.display())))
                    .unwrap_or_default();
                let peer = local.clone();
                let (rd, wr) = stream.into_split();
                let (served, shutdown, alive) = (served.clone(), shutdown.clone(), alive.clone());
                tokio::spawn(async move {
                    session::run(served, rd, wr, limits, shutdown, peer, local).await;
                    drop(alive);
                });
            }
            Err(error) => {
                tracing::warn!(pool = served.name(), %error, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// An accepted client socket.
enum Accepted {
    /// TCP.
    Tcp(tokio::net::TcpStream),
    /// Unix.
    Unix(tokio::net::UnixStream),
}

/// Accept one client.
async fn accept(bound: &Bound) -> std::io::Result<Accepted> {
    match bound {
        Bound::Tcp(l) => l.accept().await.map(|(s, _)| Accepted::Tcp(s)),
        Bound::Unix(l) => l.accept().await.map(|(s, _)| Accepted::Unix(s)),
    }
}

/// Turn on TCP keepalive (`tcpkeepalive: true`); nutcracker 0.5.0 does this on client sockets.
fn set_keepalive(stream: &tokio::net::TcpStream) {
    let on: libc::c_int = 1;
    // SAFETY: a valid socket fd and a correctly sized option value.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_KEEPALIVE,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "SO_KEEPALIVE failed");
    }
}
