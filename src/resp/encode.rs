//! A small RESP encoder for the replies the proxy makes itself.

use bytes::{BufMut, BytesMut};

/// `+text\r\n`.
pub fn simple(out: &mut BytesMut, text: &str) {
    out.reserve(text.len() + 3);
    out.put_u8(b'+');
    out.put_slice(text.as_bytes());
    out.put_slice(b"\r\n");
}

/// `-text\r\n`; CR and LF inside `text` become spaces so the reply stays one line.
pub fn error(out: &mut BytesMut, text: &str) {
    out.reserve(text.len() + 3);
    out.put_u8(b'-');
    out.extend(
        text.bytes()
            .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.put_slice(b"\r\n");
}

/// `:n\r\n`.
pub fn integer(out: &mut BytesMut, n: i64) {
    out.put_u8(b':');
    out.put_slice(itoa(n).as_bytes());
    out.put_slice(b"\r\n");
}

/// `$len\r\nbytes\r\n`.
pub fn bulk(out: &mut BytesMut, bytes: &[u8]) {
    out.reserve(bytes.len() + 16);
    out.put_u8(b'$');
    out.put_slice(itoa(bytes.len() as i64).as_bytes());
    out.put_slice(b"\r\n");
    out.put_slice(bytes);
    out.put_slice(b"\r\n");
}

/// `*n\r\n`.
pub fn array_header(out: &mut BytesMut, n: usize) {
    out.put_u8(b'*');
    out.put_slice(itoa(n as i64).as_bytes());
    out.put_slice(b"\r\n");
}

/// A RESP request (array of bulk strings) from its arguments.
pub fn command<A: AsRef<[u8]>>(out: &mut BytesMut, args: &[A]) {
    array_header(out, args.len());
    for arg in args {
        bulk(out, arg.as_ref());
    }
}

/// Decimal text of `n`.
fn itoa(n: i64) -> String {
    n.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes() {
        let mut out = BytesMut::new();
        simple(&mut out, "OK");
        error(&mut out, "ERR bad\r\nthing");
        integer(&mut out, -3);
        bulk(&mut out, b"ab");
        command(&mut out, &["GET", "k"]);
        assert_eq!(
            &out[..],
            b"+OK\r\n-ERR bad  thing\r\n:-3\r\n$2\r\nab\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
        );
    }
}

/// The protocol a client speaks: RESP2 until it sends `HELLO 3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// RESP2.
    #[default]
    Resp2,
    /// RESP3.
    Resp3,
}

impl Protocol {
    /// The protocol's number, as HELLO and CLIENT INFO report it.
    pub fn number(self) -> i64 {
        match self {
            Protocol::Resp2 => 2,
            Protocol::Resp3 => 3,
        }
    }
}

/// A null: `$-1` in RESP2, `_` in RESP3.
pub fn null(out: &mut BytesMut, protocol: Protocol) {
    out.put_slice(match protocol {
        Protocol::Resp2 => b"$-1\r\n",
        Protocol::Resp3 => b"_\r\n",
    });
}

/// A map of `n` pairs: `%n` in RESP3, a flat array of `2n` in RESP2.
pub fn map_header(out: &mut BytesMut, n: usize, protocol: Protocol) {
    match protocol {
        Protocol::Resp2 => array_header(out, n * 2),
        Protocol::Resp3 => {
            out.put_u8(b'%');
            out.put_slice(itoa(n as i64).as_bytes());
            out.put_slice(b"\r\n");
        }
    }
}

/// A set of `n` members: `~n` in RESP3, an array in RESP2.
pub fn set_header(out: &mut BytesMut, n: usize, protocol: Protocol) {
    match protocol {
        Protocol::Resp2 => array_header(out, n),
        Protocol::Resp3 => {
            out.put_u8(b'~');
            out.put_slice(itoa(n as i64).as_bytes());
            out.put_slice(b"\r\n");
        }
    }
}

/// Text as Redis sends INFO-like text: a verbatim string (`=len txt:...`) in RESP3, a bulk
/// string in RESP2.
pub fn verbatim(out: &mut BytesMut, text: &str, protocol: Protocol) {
    match protocol {
        Protocol::Resp2 => bulk(out, text.as_bytes()),
        Protocol::Resp3 => {
            out.put_u8(b'=');
            out.put_slice(itoa(text.len() as i64 + 4).as_bytes());
            out.put_slice(b"\r\ntxt:");
            out.put_slice(text.as_bytes());
            out.put_slice(b"\r\n");
        }
    }
}

#[cfg(test)]
mod protocol_tests {
    use super::*;

    #[test]
    fn resp3_shapes() {
        let mut out = BytesMut::new();
        null(&mut out, Protocol::Resp3);
        map_header(&mut out, 2, Protocol::Resp3);
        set_header(&mut out, 1, Protocol::Resp3);
        verbatim(&mut out, "a:1", Protocol::Resp3);
        assert_eq!(&out[..], b"_\r\n%2\r\n~1\r\n=7\r\ntxt:a:1\r\n");
        let mut out = BytesMut::new();
        null(&mut out, Protocol::Resp2);
        map_header(&mut out, 2, Protocol::Resp2);
        verbatim(&mut out, "a:1", Protocol::Resp2);
        assert_eq!(&out[..], b"$-1\r\n*4\r\n$3\r\na:1\r\n");
    }
}
