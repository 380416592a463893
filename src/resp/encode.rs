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
