//! Property tests of the RESP request parser and reply scanner: no panic and no unbounded
//! state on any input, the same result however the bytes are split across reads, and on
//! valid input the same answer as redis-protocol (used here only as an oracle).

use bytes::BytesMut;
use cutover::resp::{Parsed, ReplyScanner, RequestLimits, RequestParser};
use proptest::prelude::*;

mod support;

/// Encode arguments as a RESP request.
fn request(args: &[Vec<u8>]) -> Vec<u8> {
    support::command(&args.iter().map(Vec::as_slice).collect::<Vec<_>>())
}

/// Feed `input` to a fresh parser in pieces cut at `cuts`; collect what it returns.
fn parse_in_pieces(
    input: &[u8],
    cuts: &[usize],
    limits: RequestLimits,
) -> (Vec<Vec<Vec<u8>>>, bool) {
    let mut parser = RequestParser::new(limits);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    points.push(input.len());
    points.sort_unstable();
    let mut at = 0;
    for point in points {
        buf.extend_from_slice(&input[at..point.max(at)]);
        at = point.max(at);
        loop {
            match parser.next(&mut buf) {
                Ok(Some(Parsed::Request(r))) => out.push(r.args().map(<[u8]>::to_vec).collect()),
                Ok(Some(Parsed::Inline(line))) => out.push(vec![line.to_vec()]),
                Ok(None) => break,
                Err(_) => return (out, true),
            }
        }
    }
    (out, false)
}

/// A bulk string reply of up to `max` arbitrary bytes.
fn bulk_string(max: usize) -> BoxedStrategy<Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
        .prop_map(|b| {
            [
                format!("${}\r\n", b.len()).into_bytes(),
                b,
                b"\r\n".to_vec(),
            ]
            .concat()
        })
        .boxed()
}

/// The RESP2 leaves: simple strings, errors, integers, bulks, nulls.
fn resp2_leaf() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        "[a-zA-Z0-9 ]{0,20}".prop_map(|s| format!("+{s}\r\n").into_bytes()),
        "[a-zA-Z0-9 ]{0,20}".prop_map(|s| format!("-ERR {s}\r\n").into_bytes()),
        any::<i64>().prop_map(|n| format!(":{n}\r\n").into_bytes()),
        bulk_string(64),
        Just(b"$-1\r\n".to_vec()),
        Just(b"*-1\r\n".to_vec()),
    ]
    .boxed()
}

/// A RESP2 reply (what a server sends before HELLO 3), built recursively.
fn resp2_reply() -> impl Strategy<Value = Vec<u8>> {
    let leaf = resp2_leaf();
    leaf.prop_recursive(4, 64, 6, |inner| {
        prop::collection::vec(inner, 0..6).prop_map(|items| {
            [format!("*{}\r\n", items.len()).into_bytes(), items.concat()].concat()
        })
    })
}

/// A reply that can be a set member or map key (what Redis puts there: strings, numbers).
fn hashable() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "[a-zA-Z0-9]{0,12}".prop_map(|s| format!("+{s}\r\n").into_bytes()),
        any::<i64>().prop_map(|n| format!(":{n}\r\n").into_bytes()),
        bulk_string(16),
    ]
}

/// A RESP2/RESP3 reply, built recursively.
fn reply() -> impl Strategy<Value = Vec<u8>> {
    let leaf = prop_oneof![
        resp2_leaf(),
        Just(b"_\r\n".to_vec()),
        any::<bool>().prop_map(|b| format!("#{}\r\n", if b { 't' } else { 'f' }).into_bytes()),
        (-1000i32..1000).prop_map(|n| format!(",{}.5\r\n", n).into_bytes()),
        "[0-9]{1,30}".prop_map(|d| format!("({d}\r\n").into_bytes()),
        "[a-z]{0,20}".prop_map(|s| format!("={}\r\ntxt:{s}\r\n", s.len() + 4).into_bytes()),
    ];
    leaf.prop_recursive(4, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(|items| [
                format!("*{}\r\n", items.len()).into_bytes(),
                items.concat()
            ]
            .concat()),
            prop::collection::btree_set(hashable(), 0..6).prop_map(|items| {
                [
                    format!("~{}\r\n", items.len()).into_bytes(),
                    items.into_iter().collect::<Vec<_>>().concat(),
                ]
                .concat()
            }),
            prop::collection::btree_map(hashable(), inner, 0..4).prop_map(|pairs| {
                let body: Vec<u8> = pairs
                    .iter()
                    .flat_map(|(k, v)| [k.clone(), v.clone()].concat())
                    .collect();
                [format!("%{}\r\n", pairs.len()).into_bytes(), body].concat()
            }),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: support::property_cases(1000), ..ProptestConfig::default() })]

    #[test]
    fn valid_requests_parse_exactly_however_they_arrive(
        requests in prop::collection::vec(prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..6), 1..8),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let input: Vec<u8> = requests.iter().flat_map(|r| request(r)).collect();
        let (parsed, failed) = parse_in_pieces(&input, &cuts, RequestLimits::default());
        prop_assert!(!failed);
        prop_assert_eq!(&parsed, &requests);
        // The oracle reads the first request the same way.
        let first = request(&requests[0]);
        let (frame, len) = redis_protocol::resp2::decode::decode(&first).expect("oracle").expect("complete");
        prop_assert_eq!(len, first.len());
        match frame {
            redis_protocol::resp2::types::OwnedFrame::Array(items) => {
                let args: Vec<Vec<u8>> = items.into_iter().map(|f| match f {
                    redis_protocol::resp2::types::OwnedFrame::BulkString(b) => b,
                    other => panic!("oracle saw {other:?}"),
                }).collect();
                prop_assert_eq!(&args, &requests[0]);
            }
            other => prop_assert!(false, "oracle saw {:?}", other),
        }
    }

    #[test]
    fn any_bytes_are_handled_by_the_request_parser(input in prop::collection::vec(any::<u8>(), 0..300), cuts in prop::collection::vec(any::<usize>(), 0..8)) {
        let limits = RequestLimits { max_args: 16, max_bulk: 64, max_request: 256, max_inline: 64 };
        let whole = parse_in_pieces(&input, &[], limits);
        let pieces = parse_in_pieces(&input, &cuts, limits);
        prop_assert_eq!(whole, pieces, "the same result however the input is split");
    }

    #[test]
    fn requestish_bytes_are_handled(input in "[*$0-9\r\nabc-]{0,120}") {
        let limits = RequestLimits { max_args: 16, max_bulk: 64, max_request: 256, max_inline: 64 };
        let _ = parse_in_pieces(input.as_bytes(), &[], limits);
    }

    #[test]
    fn replies_scan_to_their_exact_length(replies in prop::collection::vec(reply(), 1..5), cut in any::<usize>()) {
        let input: Vec<u8> = replies.concat();
        // Whole, in one buffer.
        let mut scanner = ReplyScanner::default();
        let mut at = 0;
        for r in &replies {
            let len = scanner.scan(&input[at..]).expect("valid").expect("complete");
            prop_assert_eq!(len, r.len());
            at += len;
        }
        // Arriving in two pieces: nothing until the first reply is complete.
        let first = &replies[0];
        let split = cut % (first.len() + 1);
        let mut scanner = ReplyScanner::default();
        if split < first.len() {
            prop_assert_eq!(scanner.scan(&first[..split]).expect("valid prefix"), None);
        }
        prop_assert_eq!(scanner.scan(first).expect("valid"), Some(first.len()));
    }

    #[test]
    fn resp2_replies_end_where_the_oracle_says(r in resp2_reply()) {
        let (_, oracle_len) = redis_protocol::resp2::decode::decode(&r).expect("oracle").expect("oracle complete");
        prop_assert_eq!(oracle_len, r.len());
        prop_assert_eq!(ReplyScanner::default().scan(&r).expect("valid"), Some(r.len()));
    }

    #[test]
    fn any_bytes_are_handled_by_the_reply_scanner(input in prop::collection::vec(any::<u8>(), 0..300)) {
        let mut scanner = ReplyScanner::default();
        let mut at = 0;
        while at < input.len() {
            match scanner.scan(&input[at..]) {
                Ok(Some(len)) => { prop_assert!(len > 0); at += len; }
                Ok(None) | Err(_) => break,
            }
        }
    }
}
