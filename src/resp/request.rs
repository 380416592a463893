//! The client request parser: resumable, zero-copy, with hard limits.
//!
//! Only RESP arrays of bulk strings are requests (as in twemproxy). A request is returned
//! only when complete; until then the parser keeps the offsets of the arguments it has
//! already read, so a request arriving in many pieces is never re-scanned from its start.
//! Nothing is buffered beyond the limits: an oversized header is refused as soon as it is
//! read, before its body arrives.

use bytes::{Bytes, BytesMut};

/// Hard limits on what one client may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Most arguments in one request (Redis accepts up to 1024*1024 in practice).
    pub max_args: usize,
    /// Largest single argument in bytes (Redis's `proto-max-bulk-len`, 512 MB).
    pub max_bulk: usize,
    /// Largest whole request in bytes (Redis's `client-query-buffer-limit`, 1 GB).
    pub max_request: usize,
    /// Longest inline line before it is refused (Redis: 64 KB).
    pub max_inline: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            max_args: 1024 * 1024,
            max_bulk: 512 * 1024 * 1024,
            max_request: 1024 * 1024 * 1024,
            max_inline: 64 * 1024,
        }
    }
}

/// Longest `*N` or `$N` header line we look for (a 20-digit number plus sign and CRLF).
const MAX_HEADER: usize = 32;

/// A complete request: its raw bytes (forwarded as they are) and where each argument is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The request exactly as the client sent it.
    bytes: Bytes,
    /// `(start, end)` of each argument inside `bytes`.
    args: Vec<(u32, u32)>,
}

impl Request {
    /// The raw bytes of the request.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Number of arguments, the command name included.
    pub fn argc(&self) -> usize {
        self.args.len()
    }

    /// Argument `i` (0 is the command name).
    pub fn arg(&self, i: usize) -> &[u8] {
        let (start, end) = self.args[i];
        &self.bytes[start as usize..end as usize]
    }

    /// Argument `i` as a zero-copy slice of the request's bytes.
    pub fn arg_bytes(&self, i: usize) -> Bytes {
        let (start, end) = self.args[i];
        self.bytes.slice(start as usize..end as usize)
    }

    /// The command name as sent (any case).
    pub fn name(&self) -> &[u8] {
        self.arg(0)
    }

    /// Every argument, the command name first.
    pub fn args(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        (0..self.argc()).map(|i| self.arg(i))
    }
}

/// What the parser found at the front of the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A complete RESP request.
    Request(Request),
    /// An inline command line (not a RESP array), without its line ending.
    Inline(Bytes),
}

/// Why client input was refused. After any of these the connection cannot be re-synchronized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The bytes are not RESP (a bad header, a missing CRLF, a non-bulk element).
    #[error("Protocol error: {0}")]
    Protocol(&'static str),
    /// A declared size is over a limit.
    #[error("Protocol error: {what} {size} is over the limit of {limit}")]
    TooLarge {
        /// Which limit.
        what: &'static str,
        /// The size the client declared or sent.
        size: u64,
        /// The limit.
        limit: u64,
    },
}

/// The resumable parser; one per client connection.
#[derive(Debug, Default)]
pub struct RequestParser {
    /// The limits it enforces.
    limits: RequestLimits,
    /// Bytes of the current, incomplete request already parsed.
    pos: usize,
    /// Declared argument count of the current request, once its header is read.
    argc: Option<usize>,
    /// Arguments of the current request parsed so far.
    args: Vec<(u32, u32)>,
}

impl RequestParser {
    /// A parser enforcing `limits`.
    pub fn new(limits: RequestLimits) -> RequestParser {
        RequestParser {
            limits,
            ..RequestParser::default()
        }
    }

    /// Take the next complete request (or inline line) off the front of `buf`, or return
    /// `None` when more bytes are needed. Partial progress is kept between calls.
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Parsed>, RequestError> {
        loop {
            let Some(argc) = self.argc else {
                if buf.is_empty() {
                    return Ok(None);
                }
                if buf[0] != b'*' {
                    return self.inline(buf);
                }
                let Some((n, len)) = header(buf, 0)? else {
                    return Ok(None);
                };
                if n <= 0 {
                    // `*0` and `*-1` are empty requests: Redis skips them.
                    let _ = buf.split_to(len);
                    continue;
                }
                let n = n as u64;
                if n > self.limits.max_args as u64 {
                    return Err(RequestError::TooLarge {
                        what: "argument count",
                        size: n,
                        limit: self.limits.max_args as u64,
                    });
                }
                self.argc = Some(n as usize);
                self.pos = len;
                self.args.clear();
                self.args.reserve(n as usize);
                continue;
            };
            while self.args.len() < argc {
                let Some(&first) = buf.get(self.pos) else {
                    return Ok(None);
                };
                if first != b'$' {
                    return Err(RequestError::Protocol(
                        "expected '$' (requests are arrays of bulk strings)",
                    ));
                }
                let Some((len, header_len)) = header(buf, self.pos)? else {
                    return Ok(None);
                };
                if len < 0 {
                    return Err(RequestError::Protocol("invalid bulk length"));
                }
                let len = len as u64;
                if len > self.limits.max_bulk as u64 {
                    return Err(RequestError::TooLarge {
                        what: "argument length",
                        size: len,
                        limit: self.limits.max_bulk as u64,
                    });
                }
                let start = self.pos + header_len;
                let end = start as u64 + len;
                if end + 2 > self.limits.max_request as u64 {
                    return Err(RequestError::TooLarge {
                        what: "request size",
                        size: end + 2,
                        limit: self.limits.max_request as u64,
                    });
                }
                let end = end as usize;
                if buf.len() < end + 2 {
                    return Ok(None);
                }
                if &buf[end..end + 2] != b"\r\n" {
                    return Err(RequestError::Protocol("bulk string not followed by CRLF"));
                }
                self.args.push((start as u32, end as u32));
                self.pos = end + 2;
            }
            let bytes = buf.split_to(self.pos).freeze();
            let args = std::mem::take(&mut self.args);
            self.argc = None;
            self.pos = 0;
            return Ok(Some(Parsed::Request(Request { bytes, args })));
        }
    }

    /// An inline line: returned whole once its `\n` arrives; refused when too long.
    fn inline(&mut self, buf: &mut BytesMut) -> Result<Option<Parsed>, RequestError> {
        let window = &buf[..buf.len().min(self.limits.max_inline + 1)];
        let Some(newline) = window.iter().position(|&b| b == b'\n') else {
            if buf.len() > self.limits.max_inline {
                return Err(RequestError::TooLarge {
                    what: "inline request",
                    size: buf.len() as u64,
                    limit: self.limits.max_inline as u64,
                });
            }
            return Ok(None);
        };
        let mut line = buf.split_to(newline + 1);
        line.truncate(newline);
        if line.last() == Some(&b'\r') {
            line.truncate(newline - 1);
        }
        Ok(Some(Parsed::Inline(line.freeze())))
    }
}

/// Read a `*N\r\n` / `$N\r\n` header at `at`: `(N, header length)`, or `None` when the
/// line is not complete yet.
fn header(buf: &[u8], at: usize) -> Result<Option<(i64, usize)>, RequestError> {
    let window = &buf[at..buf.len().min(at + MAX_HEADER)];
    let Some(cr) = window.iter().position(|&b| b == b'\r' || b == b'\n') else {
        if window.len() >= MAX_HEADER {
            return Err(RequestError::Protocol("length header too long"));
        }
        return Ok(None);
    };
    if window[cr] == b'\n' {
        return Err(RequestError::Protocol("header not terminated by CRLF"));
    }
    if cr + 1 >= window.len() {
        return Ok(None);
    }
    if window[cr + 1] != b'\n' {
        return Err(RequestError::Protocol("header not terminated by CRLF"));
    }
    let digits = &window[1..cr];
    let n = parse_i64(digits).ok_or(RequestError::Protocol("invalid length in header"))?;
    Ok(Some((n, cr + 2)))
}

/// A decimal number with an optional leading '-', nothing else.
pub(crate) fn parse_i64(digits: &[u8]) -> Option<i64> {
    let (negative, digits) = match digits.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, digits),
    };
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(i64::from(d - b'0'))?;
    }
    Some(if negative { -n } else { n })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &[u8]) -> (Vec<Parsed>, Result<(), RequestError>, usize) {
        let mut parser = RequestParser::default();
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        loop {
            match parser.next(&mut buf) {
                Ok(Some(p)) => out.push(p),
                Ok(None) => return (out, Ok(()), buf.len()),
                Err(e) => return (out, Err(e), buf.len()),
            }
        }
    }

    fn args(p: &Parsed) -> Vec<Vec<u8>> {
        match p {
            Parsed::Request(r) => r.args().map(|a| a.to_vec()).collect(),
            Parsed::Inline(line) => vec![line.to_vec()],
        }
    }

    #[test]
    fn pipeline_in_one_read() {
        let (reqs, res, left) =
            parse_all(b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n*3\r\n$3\r\nSET\r\n$1\r\nb\r\n$0\r\n\r\n");
        assert_eq!(res, Ok(()));
        assert_eq!(left, 0);
        assert_eq!(args(&reqs[0]), [b"GET".to_vec(), b"a".to_vec()]);
        assert_eq!(
            args(&reqs[1]),
            [b"SET".to_vec(), b"b".to_vec(), b"".to_vec()]
        );
    }

    #[test]
    fn thousands_of_pipelined_requests_in_one_read() {
        let one = b"*3\r\n$3\r\nSET\r\n$5\r\nkey:1\r\n$5\r\nvalue\r\n";
        let input = one.repeat(5000);
        let (reqs, res, left) = parse_all(&input);
        assert_eq!((reqs.len(), res, left), (5000, Ok(()), 0));
        assert!(
            reqs.iter()
                .all(|r| args(r) == [b"SET".to_vec(), b"key:1".to_vec(), b"value".to_vec()])
        );
    }

    #[test]
    fn byte_at_a_time_resumes() {
        let input = b"*2\r\n$3\r\nGET\r\n$5\r\nk\r\ney\r\n";
        let mut parser = RequestParser::default();
        let mut buf = BytesMut::new();
        let mut got = None;
        for (i, &b) in input.iter().enumerate() {
            buf.extend_from_slice(&[b]);
            if let Some(p) = parser.next(&mut buf).expect("valid") {
                assert_eq!(i, input.len() - 1, "complete only at the last byte");
                got = Some(p);
            }
        }
        let Some(Parsed::Request(r)) = got else {
            panic!("a request")
        };
        assert_eq!(r.arg(1), b"k\r\ney");
        assert_eq!(r.bytes().as_ref(), input);
    }

    #[test]
    fn inline_lines_and_empty_arrays() {
        let (reqs, res, _) = parse_all(b"PING\r\n*0\r\n*-1\r\nGET x\n");
        assert_eq!(res, Ok(()));
        assert_eq!(
            reqs,
            vec![
                Parsed::Inline(Bytes::from_static(b"PING")),
                Parsed::Inline(Bytes::from_static(b"GET x"))
            ]
        );
    }

    #[test]
    fn limits_refuse_before_buffering() {
        let mut parser = RequestParser::default();
        let mut buf = BytesMut::from(&b"*1\r\n$4000000000\r\n"[..]);
        assert!(matches!(
            parser.next(&mut buf),
            Err(RequestError::TooLarge {
                what: "argument length",
                ..
            })
        ));
        let small = RequestLimits {
            max_args: 2,
            max_bulk: 4,
            max_request: 20,
            max_inline: 8,
        };
        let refuse = |input: &[u8]| RequestParser::new(small).next(&mut BytesMut::from(input));
        assert!(matches!(
            refuse(b"*3\r\n"),
            Err(RequestError::TooLarge {
                what: "argument count",
                ..
            })
        ));
        assert!(matches!(
            refuse(b"*1\r\n$5\r\n"),
            Err(RequestError::TooLarge {
                what: "argument length",
                ..
            })
        ));
        assert!(matches!(
            refuse(b"*2\r\n$4\r\nabcd\r\n$4\r\n"),
            Err(RequestError::TooLarge {
                what: "request size",
                ..
            })
        ));
        assert!(matches!(
            refuse(b"PINGPINGPING"),
            Err(RequestError::TooLarge {
                what: "inline request",
                ..
            })
        ));
    }

    #[test]
    fn malformed_input_is_a_protocol_error() {
        for bad in [
            &b"*1\r\n+OK\r\n"[..],
            b"*x\r\n",
            b"*1\r\n$-1\r\n",
            b"*1\r\n$1\r\nab\r\n",
            b"*1\n",
            b"*11111111111111111111111111111111111\r\n",
        ] {
            let (_, res, _) = parse_all(bad);
            assert!(
                matches!(res, Err(RequestError::Protocol(_))),
                "{:?}: {res:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_i64(b"0"), Some(0));
        assert_eq!(parse_i64(b"-1"), Some(-1));
        assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_i64(b"9223372036854775808"), None);
        assert_eq!(parse_i64(b""), None);
        assert_eq!(parse_i64(b"-"), None);
        assert_eq!(parse_i64(b"+1"), None);
    }
}
