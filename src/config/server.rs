//! Server lines: `host:port:weight [name]` or `/path.sock:weight [name]`, parsed from
//! the right exactly as nutcracker's `conf_add_server`.

use std::fmt;
use std::path::PathBuf;

use super::values;

/// Port whose servers are named without it, for libmemcached compatibility.
const KETAMA_COMPAT_PORT: u64 = 11211;

/// Where a backend server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerAddr {
    /// A TCP server; the host is resolved when connecting, not when the config is read.
    Tcp {
        /// Host name or IP literal (IPv6 without brackets).
        host: String,
        /// The port.
        port: u16,
    },
    /// A unix socket.
    Unix(PathBuf),
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerAddr::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            ServerAddr::Tcp { host, port } => write!(f, "{host}:{port}"),
            ServerAddr::Unix(path) => write!(f, "{}", path.display()),
        }
    }
}

/// One backend server of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// The server's identity: its name if given, else `host` for port 11211, else
    /// `host:port` as written, else `/path:` for an unnamed socket. Used for ketama
    /// points, stats keys, duplicate detection and sort order.
    pub name: String,
    /// Where to connect.
    pub addr: ServerAddr,
    /// Weight (> 0): ketama points and modula slots scale with it.
    pub weight: u32,
    /// The line without its name (`host:port:weight`), for logs.
    pub pname: String,
    /// Whether a name was given explicitly.
    pub named: bool,
}

/// The format nutcracker names in its error messages.
const FORMAT: &str = "\"host:port:weight [name]\" or \"/path/to.sock:weight [name]\"";

/// Parse one server line.
pub fn parse(line: &str) -> Result<ServerConfig, String> {
    let is_unix = line.starts_with('/');
    // Scan from the right: an optional " name", then ":weight", then ":port" (TCP only).
    let (rest, name) = match line.rsplit_once(' ') {
        Some((rest, name)) => (rest, Some(name)),
        None => (line, None),
    };
    let Some((rest, weight_text)) = rest.rsplit_once(':') else {
        return Err(format!("\"{line}\" is not in the {FORMAT} format"));
    };
    let (addr_text, port_text) = match (is_unix, rest.rsplit_once(':')) {
        (false, Some((addr, port))) => (addr, Some(port)),
        (false, None) => {
            return Err(format!(
                "\"{line}\" is not in the {FORMAT} format (no port)"
            ));
        }
        (true, Some(_)) => {
            return Err(format!(
                "\"{line}\" is not in the {FORMAT} format (a socket path may not contain ':')"
            ));
        }
        (true, None) => (rest, None),
    };

    let weight = match values::number(weight_text, u64::from(u32::MAX)) {
        Ok(0) => {
            return Err(format!(
                "\"{line}\" has a zero weight; weights must be at least 1"
            ));
        }
        Ok(w) => w as u32,
        Err(_) => {
            return Err(format!(
                "\"{line}\" has an invalid weight \"{weight_text}\" (a name may not contain spaces)"
            ));
        }
    };
    if let Some(name) = name
        && name.is_empty()
    {
        return Err(format!("\"{line}\" has an empty name after the space"));
    }

    let (addr, port) = match port_text {
        Some(port_text) => {
            let port = values::number(port_text, u64::from(u16::MAX))
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| {
                    format!("\"{line}\" has an invalid port \"{port_text}\" (1 to 65535)")
                })?;
            if addr_text.is_empty() {
                return Err(format!("\"{line}\" has an empty host"));
            }
            (
                ServerAddr::Tcp {
                    host: addr_text.to_string(),
                    port: port as u16,
                },
                Some((port, port_text)),
            )
        }
        None => (ServerAddr::Unix(PathBuf::from(addr_text)), None),
    };

    let identity = match (name, port) {
        (Some(name), _) => name.to_string(),
        (None, Some((KETAMA_COMPAT_PORT, _))) => addr_text.to_string(),
        (None, Some((_, port_text))) => format!("{addr_text}:{port_text}"),
        // nutcracker adds one byte for the ':' even with no port: "/path:".
        (None, None) => format!("{addr_text}:"),
    };
    let pname = match name {
        Some(name) => line[..line.len() - name.len() - 1].to_string(),
        None => line.to_string(),
    };
    Ok(ServerConfig {
        name: identity,
        addr,
        weight,
        pname,
        named: name.is_some(),
    })
}

/// nutcracker's server order: by name length, then bytes (`string_compare`).
pub fn sort_by_name(servers: &mut [ServerConfig]) {
    servers
        .sort_by(|a, b| (a.name.len(), a.name.as_bytes()).cmp(&(b.name.len(), b.name.as_bytes())));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(line: &str) -> String {
        parse(line).expect("valid line").name
    }

    #[test]
    fn identities() {
        assert_eq!(name("127.0.0.1:7001:1"), "127.0.0.1:7001");
        assert_eq!(name("127.0.0.1:7001:2 server2"), "server2");
        assert_eq!(name("127.0.0.1:11211:1"), "127.0.0.1");
        assert_eq!(name("/run/redis-b.sock:1"), "/run/redis-b.sock:");
        assert_eq!(name("/run/redis-b.sock:1 b"), "b");
        assert_eq!(name("::1:6379:1"), "::1:6379");
        assert_eq!(name("127.0.0.1:06379:1"), "127.0.0.1:06379");
    }

    #[test]
    fn fields() {
        let s = parse("::1:6379:3 alpha").expect("valid");
        assert_eq!(
            s.addr,
            ServerAddr::Tcp {
                host: "::1".into(),
                port: 6379
            }
        );
        assert_eq!(
            (s.weight, s.pname.as_str(), s.named),
            (3, "::1:6379:3", true)
        );
        assert_eq!(s.addr.to_string(), "[::1]:6379");
    }

    #[test]
    fn rejections() {
        for bad in [
            "127.0.0.1:7001:0",
            "127.0.0.1:7001",
            "127.0.0.1:7001:1 my server",
            "127.0.0.1:7001:x",
            "127.0.0.1:0:1",
            "127.0.0.1:70000:1",
            ":7001:1",
            "/tmp/a:b.sock:1",
            "127.0.0.1:7001:1 ",
            "",
        ] {
            let err = parse(bad).expect_err(bad);
            assert!(err.contains('"'), "message quotes the line: {err}");
        }
        assert!(
            parse("127.0.0.1:7001:0")
                .unwrap_err()
                .contains("zero weight")
        );
    }

    #[test]
    fn sorts_by_length_then_bytes() {
        let mut servers: Vec<_> = [
            "zeta:1:1 zeta",
            "a:1:1 alpha",
            "m:1:1 mu",
            "s:1:1 server10",
            "b:1:1 b",
        ]
        .iter()
        .map(|l| parse(l).expect("valid"))
        .collect();
        sort_by_name(&mut servers);
        let names: Vec<_> = servers.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["b", "mu", "zeta", "alpha", "server10"]);
    }
}
