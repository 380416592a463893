//! The leanest proxy on the runtime cutover uses: a byte relay, for `benches/floor.sh`.
//!
//! Each client connection gets its own connection to one backend, and bytes are copied
//! both ways as they come: no parsing, no routing, no metrics, no multiplexing. So it
//! does the least any proxy on tokio's current-thread runtime can do for a request, and
//! its requests/s beside nutcracker's and cutover's bound what a leaner design could gain.
//!
//! Two ways of copying (`--tasks`):
//! - one task per client does both directions (`copy_bidirectional`): a request is
//!   written to the backend in the same poll that read it;
//! - two tasks per client, the client's and the backend connection's, hand the bytes to
//!   each other through channels, as cutover's sessions and server connections do. The
//!   difference between the two is what the handoffs cost.
//!
//! With `--spin` the runtime never sleeps (the ceiling of busy polling, against
//! cutover's `--busy-poll`).
//!
//! Usage: `cargo run --release --example relay -- LISTEN BACKEND [--tasks] [--spin]`
//! (say `127.0.0.1:7000 127.0.0.1:6379`).

use std::io;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Bytes in flight between the two tasks of a connection, in reads.
const CHANNEL_READS: usize = 64;
/// The read buffer of each task.
const READ_BUFFER: usize = 16 * 1024;

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(listen), Some(backend)) = (args.first(), args.get(1)) else {
        eprintln!("usage: relay LISTEN BACKEND [--tasks] [--spin]");
        std::process::exit(2);
    };
    let tasks = args.iter().any(|a| a == "--tasks");
    let spin = args.iter().any(|a| a == "--spin");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        if spin {
            tokio::spawn(spin_forever());
        }
        serve(listen.clone(), backend.clone(), tasks).await
    })
}

/// Keep the runtime polling its sockets without ever sleeping: each turn yields to the
/// scheduler (a zero-timeout `epoll_wait`) and the thread to the kernel (`sched_yield`),
/// as cutover's poller does while its window is open. The ceiling of busy polling.
async fn spin_forever() {
    loop {
        tokio::task::yield_now().await;
        std::thread::yield_now();
    }
}

/// Accept clients on `listen` and relay each to its own connection to `backend`.
async fn serve(listen: String, backend: String, tasks: bool) -> io::Result<()> {
    let listener = TcpListener::bind(&listen).await?;
    loop {
        let (client, _) = listener.accept().await?;
        let backend = backend.clone();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(&backend).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            if tasks {
                relay_in_two_tasks(client, server).await;
            } else {
                let (mut client, mut server) = (client, server);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            }
        });
    }
}

/// The client's task reads requests and writes replies; the backend connection's task
/// (spawned here) writes requests and reads replies; each hands the other what it read.
async fn relay_in_two_tasks(client: TcpStream, server: TcpStream) {
    let (to_server, requests) = mpsc::channel::<Bytes>(CHANNEL_READS);
    let (to_client, replies) = mpsc::channel::<Bytes>(CHANNEL_READS);
    tokio::spawn(shuttle(server, to_client, requests));
    shuttle(client, to_server, replies).await;
}

/// One side of a two-task relay: hand what `socket` reads to the other task (`to_peer`),
/// and write to `socket` what the other task hands over (`from_peer`), until either the
/// socket or the other task ends.
async fn shuttle(
    socket: TcpStream,
    to_peer: mpsc::Sender<Bytes>,
    mut from_peer: mpsc::Receiver<Bytes>,
) {
    let (mut rd, mut wr) = socket.into_split();
    let mut buf = vec![0u8; READ_BUFFER];
    loop {
        tokio::select! {
            read = rd.read(&mut buf) => match read {
                Ok(n) if n > 0 => {
                    if to_peer.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                        return;
                    }
                }
                _ => return,
            },
            handed = from_peer.recv() => match handed {
                Some(bytes) => {
                    if wr.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                None => return,
            },
        }
    }
}
