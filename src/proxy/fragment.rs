//! Multi-key commands split across servers (`MGET`, `DEL`, `UNLINK`, `TOUCH`, `EXISTS`,
//! `MSET`) and the merge of their replies, as nutcracker does: MGET values in the
//! client's key order, integer replies summed, `+OK` for MSET.

use bytes::{BufMut, Bytes, BytesMut};

use crate::command::{CommandSpec, Split};
use crate::resp::{ReplyScanner, Request, encode};
use crate::upstream::{Pool, ReplyResult, Route};

/// One part of a split command: where it goes and its bytes.
pub struct Part {
    /// The server and connection it goes to.
    pub route: Route,
    /// The part's request (`*N $4 mget k1 k2 ...`).
    pub bytes: Bytes,
    /// Argument indexes (in the client's request) of the part's keys.
    pub keys: Vec<usize>,
}

/// How the parts' replies become the client's reply.
pub struct MergePlan {
    /// The kind of merge.
    kind: Split,
    /// For MGET: for each key in the client's order, `(part, position in that part)`.
    order: Vec<(u32, u32)>,
}

/// A command's parts, or `None` when every key lands on one route (then the original
/// request is forwarded unchanged). `Err(())` when a key has no live server.
pub fn split(
    pool: &Pool,
    spec: &CommandSpec,
    request: &Request,
) -> Result<Option<(Vec<Part>, MergePlan)>, ()> {
    let kind = spec.split.unwrap_or(Split::Sum);
    let step = if kind == Split::Ok { 2 } else { 1 };
    let keys = (request.argc() - 1) / step;
    let mut groups: Vec<(Route, Vec<usize>)> = Vec::new();
    let mut order = Vec::with_capacity(if kind == Split::Values { keys } else { 0 });
    for k in 0..keys {
        let first_arg = 1 + k * step;
        let route = pool.route(request.arg(first_arg)).ok_or(())?;
        let part = match groups.iter().position(|(r, _)| *r == route) {
            Some(p) => p,
            None => {
                groups.push((route, Vec::new()));
                groups.len() - 1
            }
        };
        if kind == Split::Values {
            order.push((part as u32, groups[part].1.len() as u32));
        }
        groups[part].1.push(first_arg);
    }
    if groups.len() <= 1 {
        return Ok(None);
    }
    let parts = groups
        .into_iter()
        .map(|(route, firsts)| {
            let mut bytes = BytesMut::new();
            encode::array_header(&mut bytes, 1 + firsts.len() * step);
            encode::bulk(&mut bytes, spec.lower.as_bytes());
            for &first in &firsts {
                for arg in first..first + step {
                    encode::bulk(&mut bytes, request.arg(arg));
                }
            }
            Part {
                route,
                bytes: bytes.freeze(),
                keys: firsts,
            }
        })
        .collect();
    Ok(Some((parts, MergePlan { kind, order })))
}

/// Merge the parts' replies. A transport failure of any part fails the whole command
/// (`-ERR Connection refused`, ...); otherwise the first error reply a part got is the
/// reply; a reply of the wrong shape gives nutcracker's `-ERR Invalid argument`.
pub fn merge(plan: &MergePlan, replies: Vec<ReplyResult>) -> Result<Bytes, MergeError> {
    let mut ok = Vec::with_capacity(replies.len());
    for reply in replies {
        ok.push(reply.map_err(|e| MergeError::Backend(e.to_string()))?);
    }
    if let Some(error) = ok.iter().find(|r| r.first() == Some(&b'-')) {
        return Ok(error.clone());
    }
    match plan.kind {
        Split::Ok => Ok(Bytes::from_static(b"+OK\r\n")),
        Split::Sum => {
            let mut sum: i64 = 0;
            for reply in &ok {
                sum = sum.saturating_add(crate::resp::integer(reply).ok_or(MergeError::Shape)?);
            }
            let mut out = BytesMut::with_capacity(24);
            encode::integer(&mut out, sum);
            Ok(out.freeze())
        }
        Split::Values => {
            let elements: Vec<Vec<Bytes>> = ok
                .iter()
                .map(array_elements)
                .collect::<Option<_>>()
                .ok_or(MergeError::Shape)?;
            let mut out = BytesMut::new();
            encode::array_header(&mut out, plan.order.len());
            for &(part, position) in &plan.order {
                let element = elements
                    .get(part as usize)
                    .and_then(|e| e.get(position as usize))
                    .ok_or(MergeError::Shape)?;
                out.put_slice(element);
            }
            Ok(out.freeze())
        }
    }
}

/// Why parts could not be merged; becomes `-ERR <text>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MergeError {
    /// A part's backend failed; the text is the failure.
    Backend(String),
    /// A part's reply had the wrong shape.
    Shape,
}

/// The raw elements of an array reply.
fn array_elements(reply: &Bytes) -> Option<Vec<Bytes>> {
    let line_end = reply.iter().position(|&b| b == b'\r')?;
    if reply.first() != Some(&b'*') {
        return None;
    }
    let count: usize = std::str::from_utf8(&reply[1..line_end])
        .ok()?
        .parse()
        .ok()?;
    let mut at = line_end + 2;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let len = ReplyScanner::default().scan(&reply[at..]).ok()??;
        out.push(reply.slice(at..at + len));
        at += len;
    }
    (at == reply.len()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(kind: Split, order: Vec<(u32, u32)>) -> MergePlan {
        MergePlan { kind, order }
    }

    fn ok(bytes: &'static [u8]) -> ReplyResult {
        Ok(Bytes::from_static(bytes))
    }

    #[test]
    fn mget_in_client_order_with_duplicates() {
        let p = plan(Split::Values, vec![(1, 0), (0, 0), (1, 1), (1, 0)]);
        let merged = merge(
            &p,
            vec![ok(b"*1\r\n$1\r\na\r\n"), ok(b"*2\r\n$1\r\nb\r\n$-1\r\n")],
        )
        .expect("merge");
        assert_eq!(
            &merged[..],
            b"*4\r\n$1\r\nb\r\n$1\r\na\r\n$-1\r\n$1\r\nb\r\n"
        );
    }

    #[test]
    fn sums_and_ok() {
        assert_eq!(
            &merge(
                &plan(Split::Sum, vec![]),
                vec![ok(b":2\r\n"), ok(b":1\r\n")]
            )
            .expect("sum")[..],
            b":3\r\n"
        );
        assert_eq!(
            &merge(
                &plan(Split::Ok, vec![]),
                vec![ok(b"+OK\r\n"), ok(b"+OK\r\n")]
            )
            .expect("ok")[..],
            b"+OK\r\n"
        );
    }

    #[test]
    fn failures() {
        use crate::upstream::BackendError;
        let p = plan(Split::Sum, vec![]);
        assert_eq!(
            merge(&p, vec![ok(b":1\r\n"), Err(BackendError::TimedOut)]),
            Err(MergeError::Backend("Connection timed out".into()))
        );
        assert_eq!(
            &merge(&p, vec![ok(b":1\r\n"), ok(b"-NOAUTH x\r\n")]).expect("error passes")[..],
            b"-NOAUTH x\r\n"
        );
        assert_eq!(
            merge(&p, vec![ok(b":1\r\n"), ok(b"+OK\r\n")]),
            Err(MergeError::Shape)
        );
        let v = plan(Split::Values, vec![(0, 0), (1, 0)]);
        assert_eq!(
            merge(&v, vec![ok(b"*1\r\n$1\r\na\r\n"), ok(b"*0\r\n")]),
            Err(MergeError::Shape)
        );
    }
}
