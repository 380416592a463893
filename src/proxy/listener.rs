//! A pool's client listener: TCP (with the pool's backlog and keepalive) or a unix
//! socket (with its permission), accepting until shutdown.

use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, UnixListener};
use tokio::sync::{Semaphore, mpsc, watch};

use super::Served;
use super::busy_poll::ClientMark;
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

/// What a listener shares with the proxy: the client limit, the shutdown signal, and the
/// sender every session holds a clone of (the proxy knows every session ended when all
/// clones are dropped).
#[derive(Clone)]
pub struct Shared {
    /// Request limits of every client.
    pub limits: RequestLimits,
    /// One permit per client connection, across every pool (`--max-clients`).
    pub clients: Arc<Semaphore>,
    /// Turns true to begin a graceful shutdown.
    pub shutdown: watch::Receiver<bool>,
    /// Held by every session.
    pub alive: mpsc::Sender<()>,
    /// Busy polling, if it is on: every session tells it of its I/O.
    pub busy_poll: Option<Arc<super::BusyPoll>>,
}

/// The reply of a client over `--max-clients` (Redis's words), before it is closed.
const MAX_CLIENTS_REPLY: &[u8] = b"-ERR max number of clients reached\r\n";

/// Serve one accepted client on a task of its own: `(peer, local)` are its addresses as
/// `CLIENT LIST` shows them; `held` (the proxy's liveness sender, and the client's place
/// under `--max-clients`) is kept until the session ends.
fn spawn_session<R, W>(
    served: &Arc<Served>,
    halves: (R, W),
    context: session::SessionContext,
    (peer, local): (String, String),
    held: (mpsc::Sender<()>, Option<tokio::sync::OwnedSemaphorePermit>),
) where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let served = served.clone();
    tokio::spawn(async move {
        session::run(served, halves, context, peer, local).await;
        drop(held);
    });
}

/// Accept clients for `pool` until shutdown. A client over the limit is told so and
/// closed at once, so a connection flood cannot run the process out of file descriptors
/// (the admin API and the clients already connected keep working).
pub async fn serve(served: Arc<Served>, bound: Bound, shared: Shared) {
    let Shared {
        limits,
        clients,
        mut shutdown,
        alive,
        busy_poll,
    } = shared;
    let mut backoff = ACCEPT_BACKOFF;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            accepted = accept(&bound) => accepted,
        };
        let permit = match (&accepted, clients.clone().try_acquire_owned()) {
            (Ok(_), Ok(permit)) => Some(permit),
            (Ok(_), Err(_)) => None,
            (Err(_), _) => None,
        };
        if accepted.is_ok() && permit.is_none() {
            served.pool.counters.rejected.increment(1);
            if let Ok(stream) = accepted {
                tokio::spawn(refuse(stream));
            }
            continue;
        }
        // What every session is given besides its connection.
        let new_context = || session::SessionContext {
            limits,
            shutdown: shutdown.clone(),
            busy_poll: ClientMark::new(busy_poll.clone()),
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
                let held = (alive.clone(), permit);
                spawn_session(
                    &served,
                    stream.into_split(),
                    new_context(),
                    (peer, local),
                    held,
                );
            }
            Ok(Accepted::Unix(stream)) => {
                backoff = ACCEPT_BACKOFF;
                let local = stream
                    .local_addr()
                    .ok()
                    .and_then(|a| a.as_pathname().map(|p| format!("{}:0", p.display())))
                    .unwrap_or_default();
                let peer = local.clone();
                let held = (alive.clone(), permit);
                spawn_session(
                    &served,
                    stream.into_split(),
                    new_context(),
                    (peer, local),
                    held,
                );
            }
            Err(error) => {
                // Out of file descriptors (or another accept error): back off.
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

/// Tell a client over the limit why, and close it (at most a second spent on it).
async fn refuse(stream: Accepted) {
    use tokio::io::AsyncWriteExt;
    let write = async {
        match stream {
            Accepted::Tcp(mut s) => {
                let _ = s.write_all(MAX_CLIENTS_REPLY).await;
                let _ = s.shutdown().await;
            }
            Accepted::Unix(mut s) => {
                let _ = s.write_all(MAX_CLIENTS_REPLY).await;
                let _ = s.shutdown().await;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}
