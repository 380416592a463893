//! The backend reply scanner: finds where one reply ends, so replies are forwarded as the
//! raw bytes the server sent and never re-encoded.
//!
//! It understands RESP2 and RESP3 (maps, sets, pushes, attributes, doubles, big numbers,
//! verbatim strings, nulls). It is resumable: a large bulk arriving in many reads is not
//! re-scanned, and nested aggregates keep their progress on a small stack with a depth cap.

use super::request::parse_i64;

/// Deepest aggregate nesting accepted (Redis's own replies stay below 10).
pub const MAX_REPLY_DEPTH: usize = 128;

/// Why a backend's bytes are not a reply. The connection must be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// An unknown type byte.
    #[error("unexpected reply type byte 0x{0:02x}")]
    UnknownType(u8),
    /// A length or count that is not a number.
    #[error("invalid length in reply header")]
    BadLength,
    /// Aggregates nested deeper than [`MAX_REPLY_DEPTH`].
    #[error("reply nested deeper than {MAX_REPLY_DEPTH} levels")]
    TooDeep,
    /// A blob not followed by CRLF.
    #[error("reply blob not followed by CRLF")]
    MissingCrlf,
}

/// An open aggregate: how many elements it still needs.
#[derive(Debug, Clone, Copy)]
struct Open {
    /// Elements still to read.
    remaining: u64,
    /// True for an attribute (`|`), which precedes the element it annotates instead of
    /// being an element itself.
    attribute: bool,
}

/// Resumable scanner over the front of a backend's read buffer.
#[derive(Debug, Default)]
pub struct ReplyScanner {
    /// Bytes of the current reply already scanned.
    pos: usize,
    /// End (exclusive, CRLF included) of a blob whose header was read but whose body has
    /// not fully arrived.
    blob_end: Option<usize>,
    /// Aggregates opened and not yet complete.
    open: Vec<Open>,
}

impl ReplyScanner {
    /// The length of the first complete reply in `buf`, or `None` when more bytes are
    /// needed. After `Some(n)`, the caller removes `n` bytes from the front of its buffer;
    /// the scanner is then ready for the next reply.
    pub fn scan(&mut self, buf: &[u8]) -> Result<Option<usize>, ReplyError> {
        loop {
            if let Some(end) = self.blob_end {
                if buf.len() < end {
                    return Ok(None);
                }
                if &buf[end - 2..end] != b"\r\n" {
                    return Err(ReplyError::MissingCrlf);
                }
                self.blob_end = None;
                self.pos = end;
                if let Some(done) = self.element_done() {
                    return Ok(Some(done));
                }
                continue;
            }
            let Some(&kind) = buf.get(self.pos) else {
                return Ok(None);
            };
            let Some(line_end) = find_crlf(buf, self.pos + 1) else {
                return Ok(None);
            };
            let body = &buf[self.pos + 1..line_end];
            let after_line = line_end + 2;
            match kind {
                b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => {
                    self.pos = after_line;
                }
                b'$' | b'!' | b'=' => {
                    let len = parse_i64(body).ok_or(ReplyError::BadLength)?;
                    if len < 0 {
                        self.pos = after_line;
                    } else {
                        self.blob_end = Some(after_line + len as usize + 2);
                        continue;
                    }
                }
                b'*' | b'~' | b'>' | b'%' | b'|' => {
                    let count = parse_i64(body).ok_or(ReplyError::BadLength)?;
                    self.pos = after_line;
                    let pairs = matches!(kind, b'%' | b'|');
                    let elements = if count <= 0 {
                        0
                    } else if pairs {
                        count as u64 * 2
                    } else {
                        count as u64
                    };
                    if elements > 0 {
                        if self.open.len() >= MAX_REPLY_DEPTH {
                            return Err(ReplyError::TooDeep);
                        }
                        self.open.push(Open {
                            remaining: elements,
                            attribute: kind == b'|',
                        });
                        continue;
                    }
                    if kind == b'|' {
                        // An empty attribute annotates the next element.
                        continue;
                    }
                }
                other => return Err(ReplyError::UnknownType(other)),
            }
            if let Some(done) = self.element_done() {
                return Ok(Some(done));
            }
        }
    }

    /// One element ended at `self.pos`: close every aggregate it completes. Returns the
    /// reply length when the outermost element is complete.
    fn element_done(&mut self) -> Option<usize> {
        loop {
            let Some(top) = self.open.last_mut() else {
                let len = self.pos;
                self.pos = 0;
                return Some(len);
            };
            top.remaining -= 1;
            if top.remaining > 0 {
                return None;
            }
            let attribute = top.attribute;
            self.open.pop();
            if attribute {
                // The attribute is complete; the element it annotates comes next.
                return None;
            }
        }
    }
}

/// Position of the next CRLF at or after `from`.
fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    while at < buf.len() {
        let cr = at + buf[at..].iter().position(|&b| b == b'\r')?;
        match buf.get(cr + 1) {
            Some(b'\n') => return Some(cr),
            Some(_) => at = cr + 1,
            None => return None,
        }
    }
    None
}

/// The value of a complete integer reply `:n\r\n`.
pub fn integer(reply: &[u8]) -> Option<i64> {
    let body = reply.strip_prefix(b":")?.strip_suffix(b"\r\n")?;
    std::str::from_utf8(body).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lengths(input: &[u8]) -> Vec<usize> {
        let mut scanner = ReplyScanner::default();
        let mut at = 0;
        let mut out = Vec::new();
        while let Some(n) = scanner.scan(&input[at..]).expect("valid") {
            out.push(n);
            at += n;
        }
        out
    }

    /// Concatenate `replies` and check the scanner splits them back apart.
    fn splits(replies: &[&[u8]]) {
        let joined = replies.concat();
        let expected: Vec<usize> = replies.iter().map(|r| r.len()).collect();
        assert_eq!(
            lengths(&joined),
            expected,
            "{:?}",
            String::from_utf8_lossy(&joined)
        );
    }

    #[test]
    fn resp2_replies() {
        splits(&[
            b"+OK\r\n",
            b":1\r\n",
            b"$-1\r\n",
            b"$3\r\na\r\n\r\n",
            b"*-1\r\n",
            b"*0\r\n",
            b"-ERR x\r\n",
        ]);
        splits(&[b"*2\r\n$1\r\na\r\n*1\r\n:2\r\n", b"+X\r\n"]);
    }

    #[test]
    fn resp3_replies() {
        splits(&[b"%1\r\n+a\r\n:1\r\n", b"_\r\n"]);
        splits(&[b"|1\r\n+ttl\r\n:3\r\n+value\r\n", b":9\r\n"]);
        splits(&[b"~2\r\n,1.5\r\n#t\r\n", b"=7\r\ntxt:abc\r\n", b"(123\r\n"]);
        splits(&[
            b">2\r\n+message\r\n$1\r\nx\r\n",
            b"*1\r\n|1\r\n+a\r\n+b\r\n:5\r\n",
            b"|0\r\n+x\r\n",
        ]);
    }

    #[test]
    fn partial_input_resumes() {
        let input = b"*2\r\n$5\r\nhello\r\n%1\r\n+k\r\n$2\r\nvv\r\n";
        let mut scanner = ReplyScanner::default();
        for cut in 0..input.len() {
            assert_eq!(
                scanner.scan(&input[..cut]).expect("valid prefix"),
                None,
                "cut at {cut}"
            );
        }
        assert_eq!(scanner.scan(input).expect("valid"), Some(input.len()));
    }

    #[test]
    fn bad_replies() {
        assert_eq!(
            ReplyScanner::default().scan(b"?x\r\n"),
            Err(ReplyError::UnknownType(b'?'))
        );
        assert_eq!(
            ReplyScanner::default().scan(b"$x\r\n"),
            Err(ReplyError::BadLength)
        );
        assert_eq!(
            ReplyScanner::default().scan(b"$1\r\nabc"),
            Err(ReplyError::MissingCrlf)
        );
        let deep = b"*1\r\n".repeat(MAX_REPLY_DEPTH + 1);
        assert_eq!(
            ReplyScanner::default().scan(&deep),
            Err(ReplyError::TooDeep)
        );
    }
}
