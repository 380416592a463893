//! A replication client of one server: cutover posing as a replica (as RedisShake and
//! pika_port do), to receive the exact stream of writes that server applied, from any
//! client, with expiry and eviction deletes and relative TTLs already made absolute.
//!
//! The handshake follows Redis's `replication.c` (`syncWithMaster`): `AUTH` if the pool
//! has a password, `REPLCONF listening-port`, `REPLCONF capa psync2`, then `PSYNC replid
//! offset` to continue where a previous connection stopped (`+CONTINUE`), or `PSYNC ? -1`.
//! A `+FULLRESYNC replid offset` answer is followed by the RDB payload
//! (`$LEN\r\n` + LEN bytes; `capa eof` is not announced, so it is never the EOF-marked
//! form), read in fixed chunks and discarded: the backfill copies every key anyway. Then
//! the command stream: RESP arrays, each advancing the replication offset by its length.
//! The caller sends `REPLCONF ACK` at least once a second and whenever the master asked
//! (`REPLCONF GETACK`, [`ReplicationStream::ack_due`]).
//!
//! Bounded memory whatever the stream's speed: the stream is read only as fast as the
//! caller takes commands, so a slow caller slows the socket (and the master buffers, up
//! to its `client-output-buffer-limit replica`), never this process.

use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::resp::{Parsed, Request, RequestLimits, RequestParser, encode};

/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 64 * 1024;
/// Longest line of the handshake (`+FULLRESYNC <40 hex> <offset>`, errors).
const MAX_LINE: usize = 4096;
/// How long the handshake may take (a full sync's RDB may take longer: it is read with
/// [`RDB_IDLE`] between chunks instead).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest silence while the master prepares or sends the RDB.
const RDB_IDLE: Duration = Duration::from_secs(60);

/// Why the stream could not be had or went away.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// The connection failed or closed.
    #[error("{server}: connection: {reason}")]
    Io {
        /// The server.
        server: String,
        /// What happened.
        reason: String,
    },
    /// The server refused a step of the handshake (no PSYNC permission, an ACL user
    /// without `+psync`/`+replconf`, a renamed command on a managed service, ...).
    #[error("{server}: refused {step}: {reply}")]
    Refused {
        /// The server.
        server: String,
        /// The step (`PSYNC`, `REPLCONF`, `AUTH`).
        step: &'static str,
        /// What it answered.
        reply: String,
    },
    /// The server sent something that is not the replication protocol.
    #[error("{server}: unexpected {what}")]
    Protocol {
        /// The server.
        server: String,
        /// What was wrong.
        what: String,
    },
}

/// How the stream began.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sync {
    /// `+CONTINUE`: the master had the backlog; nothing was missed.
    Continued,
    /// `+FULLRESYNC`: a new stream from this replication id and offset; writes between the
    /// previous position (if any) and this one are unknown.
    Full,
}

/// Where a stream stands: the master's replication id and the offset of the next byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The master's replication id.
    pub replid: String,
    /// The replication offset after every command taken so far.
    pub offset: u64,
}

/// A command of the stream, and the offset after it.
#[derive(Debug)]
pub struct StreamCommand {
    /// The command, as the master propagated it.
    pub request: Request,
    /// The replication offset after it.
    pub offset: u64,
}

/// An open replication stream.
pub struct ReplicationStream {
    /// The server's name, for errors.
    server: String,
    /// The connection.
    socket: TcpStream,
    /// Bytes read and not yet taken.
    buf: BytesMut,
    /// Parses the command stream (arrays of bulk strings, with limits).
    parser: RequestParser,
    /// Where the stream stands.
    position: Position,
    /// The master asked for an acknowledgement (`REPLCONF GETACK`).
    ack_due: bool,
}

impl ReplicationStream {
    /// Connect to `addr` (`host:port`, named `server` in errors), authenticate with
    /// `password`, and start the stream: continuing from `from` when given and the master
    /// can, else with a full sync.
    pub async fn open(
        addr: &str,
        server: &str,
        password: Option<&str>,
        from: Option<&Position>,
    ) -> Result<(ReplicationStream, Sync), ReplicationError> {
        let io = |e: std::io::Error| ReplicationError::Io {
            server: server.to_string(),
            reason: e.to_string(),
        };
        let socket = tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| ReplicationError::Io {
                server: server.to_string(),
                reason: "connect timed out".into(),
            })?
            .map_err(io)?;
        let _ = socket.set_nodelay(true);
        let mut stream = ReplicationStream {
            server: server.to_string(),
            socket,
            buf: BytesMut::with_capacity(READ_CHUNK),
            parser: RequestParser::new(RequestLimits::default()),
            position: Position {
                replid: "?".into(),
                offset: 0,
            },
            ack_due: false,
        };
        let handshake = async {
            if let Some(password) = password {
                stream.step("AUTH", &[b"AUTH", password.as_bytes()]).await?;
            }
            let port = stream
                .socket
                .local_addr()
                .map(|a| a.port().to_string())
                .unwrap_or_else(|_| "0".into());
            stream
                .step(
                    "REPLCONF",
                    &[b"REPLCONF", b"listening-port", port.as_bytes()],
                )
                .await?;
            stream
                .step("REPLCONF", &[b"REPLCONF", b"capa", b"psync2"])
                .await?;
            // Named like every connection of cutover's (a refusal is not fatal here).
            stream
                .send(&[b"CLIENT", b"SETNAME", super::CONNECTION_NAME])
                .await?;
            let _ = stream.line_skipping_newlines().await?;
            let (replid, offset) = match from {
                Some(p) => (p.replid.clone(), (p.offset + 1).to_string()),
                None => ("?".to_string(), "-1".to_string()),
            };
            stream
                .send(&[b"PSYNC", replid.as_bytes(), offset.as_bytes()])
                .await?;
            stream.line_skipping_newlines().await
        };
        let answer = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
            .await
            .map_err(|_| ReplicationError::Io {
                server: server.to_string(),
                reason: "handshake timed out".into(),
            })??;
        let words: Vec<&str> = answer.split(' ').collect();
        let sync = match words.as_slice() {
            ["+FULLRESYNC", replid, offset] => {
                stream.position = Position {
                    replid: replid.to_string(),
                    offset: offset.parse().map_err(|_| stream.protocol(&answer))?,
                };
                stream.discard_rdb().await?;
                Sync::Full
            }
            ["+CONTINUE", rest @ ..] => {
                let mut position = from.cloned().ok_or_else(|| stream.protocol(&answer))?;
                if let [replid] = rest {
                    position.replid = replid.to_string();
                }
                stream.position = position;
                Sync::Continued
            }
            _ => {
                return Err(ReplicationError::Refused {
                    server: server.to_string(),
                    step: "PSYNC",
                    reply: answer,
                });
            }
        };
        Ok((stream, sync))
    }

    /// Where the stream stands.
    pub fn position(&self) -> &Position {
        &self.position
    }

    /// The next command of the stream, waiting for it. `REPLCONF GETACK` is not returned:
    /// it makes [`ReplicationStream::ack_due`] true. Cancel-safe: it only reads.
    pub async fn next(&mut self) -> Result<StreamCommand, ReplicationError> {
        loop {
            match self.parser.next(&mut self.buf) {
                Ok(Some(Parsed::Request(request))) => {
                    self.position.offset += request.bytes().len() as u64;
                    if request.argc() >= 2
                        && request.name().eq_ignore_ascii_case(b"REPLCONF")
                        && request.arg(1).eq_ignore_ascii_case(b"GETACK")
                    {
                        self.ack_due = true;
                        continue;
                    }
                    return Ok(StreamCommand {
                        offset: self.position.offset,
                        request,
                    });
                }
                Ok(Some(Parsed::Inline(line))) => {
                    // Only newlines (keepalives) may stand outside arrays; they count.
                    self.position.offset += line.len() as u64 + 1;
                    if !line.iter().all(u8::is_ascii_whitespace) {
                        return Err(self.protocol(&String::from_utf8_lossy(&line)));
                    }
                }
                Ok(None) => self.fill(None).await?,
                Err(error) => return Err(self.protocol(&error.to_string())),
            }
        }
    }

    /// Whether the master asked for an acknowledgement since the last one.
    pub fn ack_due(&self) -> bool {
        self.ack_due
    }

    /// `REPLCONF ACK offset`: what has been taken so far.
    pub async fn ack(&mut self) -> Result<(), ReplicationError> {
        self.ack_due = false;
        let offset = self.position.offset.to_string();
        self.send(&[b"REPLCONF", b"ACK", offset.as_bytes()]).await
    }

    /// Send one command.
    async fn send(&mut self, args: &[&[u8]]) -> Result<(), ReplicationError> {
        let mut out = BytesMut::new();
        encode::command(&mut out, args);
        self.socket.write_all(&out).await.map_err(|e| self.io(e))
    }

    /// Send a handshake command and require a `+` answer.
    async fn step(&mut self, step: &'static str, args: &[&[u8]]) -> Result<(), ReplicationError> {
        self.send(args).await?;
        let answer = self.line_skipping_newlines().await?;
        if answer.starts_with('+') {
            Ok(())
        } else {
            Err(ReplicationError::Refused {
                server: self.server.clone(),
                step,
                reply: answer,
            })
        }
    }

    /// The next line of the handshake, skipping the bare newlines a master sends as
    /// keepalives while it prepares a full sync.
    async fn line_skipping_newlines(&mut self) -> Result<String, ReplicationError> {
        loop {
            while self.buf.first() == Some(&b'\n') {
                self.buf.advance(1);
            }
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.advance(end + 2);
                return Ok(line);
            }
            if self.buf.len() > MAX_LINE {
                return Err(self.protocol("an over-long handshake line"));
            }
            self.fill(None).await?;
        }
    }

    /// Read the RDB payload's length line and skip that many bytes, in chunks.
    async fn discard_rdb(&mut self) -> Result<(), ReplicationError> {
        let line = tokio::time::timeout(RDB_IDLE, self.line_skipping_newlines())
            .await
            .map_err(|_| self.io(std::io::ErrorKind::TimedOut.into()))??;
        let len: usize = line
            .strip_prefix('$')
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| self.protocol(&format!("RDB header {line:?}")))?;
        let mut left = len;
        while left > 0 {
            if self.buf.is_empty() {
                self.fill(Some(RDB_IDLE)).await?;
            }
            let take = left.min(self.buf.len());
            self.buf.advance(take);
            left -= take;
        }
        Ok(())
    }

    /// Read more bytes (waiting at most `idle` when given).
    async fn fill(&mut self, idle: Option<Duration>) -> Result<(), ReplicationError> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        let read = self.socket.read_buf(&mut self.buf);
        let n = match idle {
            Some(limit) => tokio::time::timeout(limit, read)
                .await
                .map_err(|_| self.io(std::io::ErrorKind::TimedOut.into()))?,
            None => read.await,
        }
        .map_err(|e| self.io(e))?;
        if n == 0 {
            return Err(self.io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        Ok(())
    }

    /// An I/O error of this stream.
    fn io(&self, e: std::io::Error) -> ReplicationError {
        ReplicationError::Io {
            server: self.server.clone(),
            reason: e.to_string(),
        }
    }

    /// A protocol error of this stream.
    fn protocol(&self, what: &str) -> ReplicationError {
        ReplicationError::Protocol {
            server: self.server.clone(),
            what: what.to_string(),
        }
    }
}
