//! The `listen:` key: `host:port` (IPv6 without brackets) or `/path [octal-perm]`.

use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use super::values;

/// Where a pool accepts clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A TCP address, resolved when the config is read (as nutcracker does).
    Tcp {
        /// The host as written (an IP literal or a name).
        host: String,
        /// The port.
        port: u16,
        /// The first address the host resolved to.
        addr: SocketAddr,
    },
    /// A unix socket path, with the permission to give it.
    Unix {
        /// The socket path.
        path: PathBuf,
        /// Octal file mode for the socket (at most 0777), if given.
        perm: Option<u32>,
    },
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Tcp { host, port, .. } => write!(f, "{host}:{port}"),
            Listen::Unix { path, .. } => write!(f, "{}", path.display()),
        }
    }
}

impl Listen {
    /// What two pools may not share: the resolved socket address, or the socket path.
    pub fn identity(&self) -> String {
        match self {
            Listen::Tcp { addr, .. } => addr.to_string(),
            Listen::Unix { path, .. } => path.display().to_string(),
        }
    }
}

/// Parse a `listen:` value as nutcracker's `conf_set_listen`, from the right.
pub fn parse(text: &str) -> Result<Listen, String> {
    if text.starts_with('/') {
        return Ok(match text.rsplit_once(' ') {
            None => Listen::Unix {
                path: PathBuf::from(text),
                perm: None,
            },
            Some((path, perm)) => {
                let mode = (!perm.is_empty() && perm.bytes().all(|b| (b'0'..=b'7').contains(&b)))
                    .then(|| u32::from_str_radix(perm, 8).ok())
                    .flatten()
                    .filter(|&m| m <= 0o777)
                    .ok_or_else(|| format!("\"{text}\" has an invalid file permission \"{perm}\" (expected octal, at most 0777, as in \"/path.sock 0666\")"))?;
                Listen::Unix {
                    path: PathBuf::from(path),
                    perm: Some(mode),
                }
            }
        });
    }
    let (host, port_text) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("\"{text}\" is not \"host:port\" or \"/path/to.sock [perm]\""))?;
    let port = values::number(port_text, u64::from(u16::MAX))
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| format!("\"{text}\" has an invalid port \"{port_text}\" (1 to 65535)"))?
        as u16;
    let addr =
        resolve(host, port).ok_or_else(|| format!("\"{text}\": cannot resolve host \"{host}\""))?;
    Ok(Listen::Tcp {
        host: host.to_string(),
        port,
        addr,
    })
}

/// The first address `host` resolves to; an empty host means every interface.
fn resolve(host: &str, port: u16) -> Option<SocketAddr> {
    if host.is_empty() {
        return Some(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, port));
    }
    (host, port).to_socket_addrs().ok()?.next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_and_ipv6_without_brackets() {
        let Listen::Tcp { addr, port, .. } = parse("127.0.0.1:22121").expect("valid") else {
            panic!()
        };
        assert_eq!(
            (addr.to_string().as_str(), port),
            ("127.0.0.1:22121", 22121)
        );
        let Listen::Tcp { addr, .. } = parse("::1:22200").expect("valid") else {
            panic!()
        };
        assert_eq!(addr.to_string(), "[::1]:22200");
        assert!(parse("localhost:1").is_ok());
    }

    #[test]
    fn unix_with_permission() {
        assert_eq!(
            parse("/tmp/x.sock 0600"),
            Ok(Listen::Unix {
                path: "/tmp/x.sock".into(),
                perm: Some(0o600)
            })
        );
        assert_eq!(
            parse("/tmp/x.sock"),
            Ok(Listen::Unix {
                path: "/tmp/x.sock".into(),
                perm: None
            })
        );
        assert!(parse("/tmp/x.sock 0999").is_err());
        assert!(parse("/tmp/x.sock 1777").is_err());
    }

    #[test]
    fn bad_ports_and_shapes() {
        assert!(parse("127.0.0.1").is_err());
        assert!(parse("127.0.0.1:0").is_err());
        assert!(parse("127.0.0.1:65536").is_err());
        assert!(parse("127.0.0.1:http").is_err());
        assert!(parse("[::1]:22121").is_err());
    }
}
