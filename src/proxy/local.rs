//! Commands the proxy answers itself: PING, QUIT, AUTH, and what today's client libraries
//! send when they connect (HELLO, CLIENT, SELECT 0, ECHO, INFO, COMMAND, READONLY,
//! READWRITE, RESET). Replies are built in the client's protocol.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use bytes::{Bytes, BytesMut};
use tokio::time::Instant;

use super::Served;
use super::introspection;
use crate::command::LocalCommand;
use crate::resp::{Protocol, Request, encode};
use crate::upstream::{ErrorKind, Pool};

/// Client ids, unique within this process (`CLIENT ID`, `HELLO`).
static NEXT_CLIENT_ID: AtomicU64 = AtomicU64::new(1);

/// What the proxy knows about one client connection.
pub struct ClientState {
    /// Its id.
    pub id: u64,
    /// The protocol it speaks (RESP3 after `HELLO 3`).
    pub protocol: Protocol,
    /// Whether it may run commands (always, when the pool has no `redis_auth`).
    pub authenticated: bool,
    /// `CLIENT SETNAME` / `HELLO ... SETNAME`.
    pub name: Option<String>,
    /// `CLIENT SETINFO LIB-NAME`.
    pub lib_name: String,
    /// `CLIENT SETINFO LIB-VER`.
    pub lib_ver: String,
    /// The client's address.
    pub peer: String,
    /// The address it connected to.
    pub local: String,
    /// When it connected.
    pub connected: Instant,
}

impl ClientState {
    /// A new client of `pool`.
    pub fn new(pool: &Pool, peer: String, local: String) -> ClientState {
        ClientState {
            id: NEXT_CLIENT_ID.fetch_add(1, Relaxed),
            protocol: Protocol::Resp2,
            authenticated: pool.config.redis_auth.is_none(),
            name: None,
            lib_name: String::new(),
            lib_ver: String::new(),
            peer,
            local,
            connected: Instant::now(),
        }
    }
}

/// The proxy's answer to a local command.
pub struct Answer {
    /// The reply (empty when `close` and nothing is to be said).
    pub reply: Bytes,
    /// The error kind, when the reply is an error of the proxy's own.
    pub error: Option<ErrorKind>,
    /// Close the connection after the replies due (QUIT).
    pub close: bool,
}

impl Answer {
    fn reply(bytes: BytesMut) -> Answer {
        Answer {
            reply: bytes.freeze(),
            error: None,
            close: false,
        }
    }

    fn fixed(bytes: &'static [u8]) -> Answer {
        Answer {
            reply: Bytes::from_static(bytes),
            error: None,
            close: false,
        }
    }

    fn error(kind: ErrorKind, text: &str) -> Answer {
        let mut out = BytesMut::new();
        encode::error(&mut out, text);
        Answer {
            reply: out.freeze(),
            error: Some(kind),
            close: false,
        }
    }
}

/// Redis's reply to a wrong AUTH with a user name.
const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";

/// Answer `command`.
pub fn answer(
    served: &Served,
    state: &mut ClientState,
    command: LocalCommand,
    request: &Request,
) -> Answer {
    let pool = &served.pool;
    match command {
        LocalCommand::Ping => Answer::fixed(b"+PONG\r\n"),
        LocalCommand::Quit => Answer {
            reply: Bytes::new(),
            error: None,
            close: true,
        },
        LocalCommand::Auth => auth(pool, state, request),
        LocalCommand::Hello => hello(pool, state, request),
        LocalCommand::Client => client(state, request),
        LocalCommand::Select => match request.arg(1) {
            b"0" => Answer::fixed(b"+OK\r\n"),
            other => Answer::error(
                ErrorKind::Unsupported,
                &format!(
                    "ERR SELECT {}: cutover serves one database per pool, as database 0 (its data is in database {} of the pool's servers; see redis_db)",
                    String::from_utf8_lossy(other),
                    pool.config.redis_db
                ),
            ),
        },
        LocalCommand::Echo => {
            let mut out = BytesMut::new();
            encode::bulk(&mut out, request.arg(1));
            Answer::reply(out)
        }
        LocalCommand::Info => {
            let sections: Vec<String> = request
                .args()
                .skip(1)
                .map(|a| String::from_utf8_lossy(a).to_ascii_lowercase())
                .collect();
            let mut out = BytesMut::new();
            encode::verbatim(
                &mut out,
                &introspection::info(served, &sections),
                state.protocol,
            );
            Answer::reply(out)
        }
        LocalCommand::Command => match introspection::command(request, state.protocol) {
            Ok(reply) => Answer::reply(reply),
            Err(text) => Answer::error(ErrorKind::Unsupported, &text),
        },
        LocalCommand::ReadMode => Answer::fixed(b"+OK\r\n"),
        LocalCommand::Reset => {
            state.protocol = Protocol::Resp2;
            state.name = None;
            state.authenticated = pool.config.redis_auth.is_none();
            Answer::fixed(b"+RESET\r\n")
        }
    }
}

/// Check `user`/`password` against the pool's `redis_auth` (user `default` only). Without
/// `redis_auth` the default user needs no password, as in Redis.
fn credentials_ok(pool: &Pool, user: &[u8], password: &[u8]) -> bool {
    user == b"default"
        && pool
            .config
            .redis_auth
            .as_ref()
            .is_none_or(|pw| pw.as_bytes() == password)
}

/// `AUTH password` as nutcracker answers it; `AUTH user password` as Redis does.
fn auth(pool: &Pool, state: &mut ClientState, request: &Request) -> Answer {
    match request.argc() {
        2 => match &pool.config.redis_auth {
            None => Answer::error(
                ErrorKind::Auth,
                "ERR Client sent AUTH, but no password is set",
            ),
            Some(password) if password.as_bytes() == request.arg(1) => {
                state.authenticated = true;
                Answer::fixed(b"+OK\r\n")
            }
            Some(_) => {
                // A wrong password also signs the connection out, as in nutcracker.
                state.authenticated = false;
                Answer::error(ErrorKind::Auth, "ERR invalid password")
            }
        },
        3 if credentials_ok(pool, request.arg(1), request.arg(2)) => {
            state.authenticated = true;
            Answer::fixed(b"+OK\r\n")
        }
        3 => {
            state.authenticated = pool.config.redis_auth.is_none();
            Answer::error(ErrorKind::Auth, WRONGPASS)
        }
        _ => Answer::error(
            ErrorKind::Arity,
            "ERR wrong number of arguments for 'auth' command",
        ),
    }
}

/// `HELLO [protover [AUTH user pass] [SETNAME name]]`.
fn hello(pool: &Pool, state: &mut ClientState, request: &Request) -> Answer {
    let mut protocol = state.protocol;
    let mut i = 1;
    if request.argc() > 1 {
        protocol = match request.arg(1) {
            b"2" => Protocol::Resp2,
            b"3" => Protocol::Resp3,
            other if std::str::from_utf8(other).is_ok_and(|t| t.parse::<i64>().is_ok()) => {
                return Answer::error(
                    ErrorKind::Unsupported,
                    "NOPROTO unsupported protocol version",
                );
            }
            _ => {
                return Answer::error(
                    ErrorKind::Arity,
                    "ERR Protocol version is not an integer or out of range",
                );
            }
        };
        i = 2;
    }
    let mut authenticated = state.authenticated;
    let mut name = None;
    while i < request.argc() {
        let option = request.arg(i).to_ascii_uppercase();
        match option.as_slice() {
            b"AUTH" if i + 2 < request.argc() => {
                if !credentials_ok(pool, request.arg(i + 1), request.arg(i + 2)) {
                    return Answer::error(ErrorKind::Auth, WRONGPASS);
                }
                authenticated = true;
                i += 3;
            }
            b"SETNAME" if i + 1 < request.argc() => {
                name = Some(String::from_utf8_lossy(request.arg(i + 1)).into_owned());
                i += 2;
            }
            _ => {
                let text = format!(
                    "ERR Syntax error in HELLO option '{}'",
                    String::from_utf8_lossy(request.arg(i))
                );
                return Answer::error(ErrorKind::Arity, &text);
            }
        }
    }
    if !authenticated {
        return Answer::error(
            ErrorKind::Auth,
            "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time",
        );
    }
    state.authenticated = true;
    state.protocol = protocol;
    if name.is_some() {
        state.name = name;
    }
    let version = introspection::redis_version(pool);
    let mut out = BytesMut::new();
    encode::map_header(&mut out, 7, protocol);
    for (key, value) in [("server", "redis"), ("version", version.as_str())] {
        encode::bulk(&mut out, key.as_bytes());
        encode::bulk(&mut out, value.as_bytes());
    }
    encode::bulk(&mut out, b"proto");
    encode::integer(&mut out, protocol.number());
    encode::bulk(&mut out, b"id");
    encode::integer(&mut out, state.id as i64);
    for (key, value) in [("mode", "standalone"), ("role", "master")] {
        encode::bulk(&mut out, key.as_bytes());
        encode::bulk(&mut out, value.as_bytes());
    }
    encode::bulk(&mut out, b"modules");
    encode::array_header(&mut out, 0);
    Answer::reply(out)
}

/// `CLIENT <subcommand>` for this connection.
fn client(state: &mut ClientState, request: &Request) -> Answer {
    let sub = request.arg(1).to_ascii_uppercase();
    let argc = request.argc();
    let mut out = BytesMut::new();
    match (sub.as_slice(), argc) {
        (b"SETINFO", 4) => {
            let value = String::from_utf8_lossy(request.arg(3)).into_owned();
            match request.arg(2).to_ascii_uppercase().as_slice() {
                b"LIB-NAME" => state.lib_name = value,
                b"LIB-VER" => state.lib_ver = value,
                _ => {
                    let text = format!(
                        "ERR Unrecognized option '{}'",
                        String::from_utf8_lossy(request.arg(2))
                    );
                    return Answer::error(ErrorKind::Arity, &text);
                }
            }
            Answer::fixed(b"+OK\r\n")
        }
        (b"SETNAME", 3) => {
            let name = request.arg(2);
            if name.iter().any(|&b| b <= b' ' || b > b'~') {
                return Answer::error(
                    ErrorKind::Arity,
                    "ERR Client names cannot contain spaces, newlines or special characters.",
                );
            }
            state.name = (!name.is_empty()).then(|| String::from_utf8_lossy(name).into_owned());
            Answer::fixed(b"+OK\r\n")
        }
        (b"GETNAME", 2) => {
            match &state.name {
                Some(name) => encode::bulk(&mut out, name.as_bytes()),
                None => encode::null(&mut out, state.protocol),
            }
            Answer::reply(out)
        }
        (b"ID", 2) => {
            encode::integer(&mut out, state.id as i64);
            Answer::reply(out)
        }
        (b"INFO", 2) | (b"LIST", _) => {
            encode::verbatim(&mut out, &client_line(state), state.protocol);
            Answer::reply(out)
        }
        (b"NO-EVICT" | b"NO-TOUCH", 3) => Answer::fixed(b"+OK\r\n"),
        (b"SETINFO" | b"SETNAME" | b"GETNAME" | b"ID" | b"INFO" | b"NO-EVICT" | b"NO-TOUCH", _) => {
            let text = format!(
                "ERR wrong number of arguments for 'client|{}' command",
                String::from_utf8_lossy(&sub).to_ascii_lowercase()
            );
            Answer::error(ErrorKind::Arity, &text)
        }
        _ => {
            let text = format!(
                "ERR unsupported command 'CLIENT {}'",
                String::from_utf8_lossy(&sub)
            );
            Answer::error(ErrorKind::Unsupported, &text)
        }
    }
}

/// This connection as one line of `CLIENT LIST`, in Redis's format.
fn client_line(state: &ClientState) -> String {
    format!(
        "id={} addr={} laddr={} fd=0 name={} age={} idle=0 flags=N db=0 sub=0 psub=0 ssub=0 multi=-1 watch=0 qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=0 tot-mem=0 events=r cmd=client|info user=default redir=-1 resp={} lib-name={} lib-ver={}\n",
        state.id,
        state.peer,
        state.local,
        state.name.as_deref().unwrap_or(""),
        state.connected.elapsed().as_secs(),
        state.protocol.number(),
        state.lib_name,
        state.lib_ver,
    )
}
