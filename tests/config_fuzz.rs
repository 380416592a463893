//! Property tests: the config reader and the server-line parser never panic, and every
//! rejection carries a message and a line inside the file.

use cutover::config::{Config, MIGRATE_KEYS, POOL_KEYS, ServerAddr, parse_server_line};
use proptest::prelude::*;

mod support;

/// Check the invariants of one parse of `text`.
fn check_parse(text: &str) -> Result<(), TestCaseError> {
    match Config::parse(text, "fuzz.yml") {
        Ok(config) => {
            prop_assert!(!config.pools.is_empty());
            for pool in &config.pools {
                prop_assert!(!pool.servers.is_empty());
                prop_assert!(pool.servers.iter().all(|s| s.weight > 0));
                prop_assert!(pool.server_connections > 0);
            }
        }
        Err(error) => {
            let problems = error.problems();
            prop_assert!(
                !problems.is_empty(),
                "a rejection lists its problems: {error}"
            );
            let lines = text.lines().count() + 1;
            for p in problems {
                prop_assert!(!p.message.is_empty());
                prop_assert!(
                    p.line >= 1 && p.line <= lines,
                    "line {} of {lines}: {p}",
                    p.line
                );
            }
        }
    }
    Ok(())
}

/// A value that is sometimes right and often wrong for some key.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("true".to_string()),
        Just("yes".to_string()),
        Just("0".to_string()),
        Just("-1".to_string()),
        Just("fnv1a_64".to_string()),
        Just("modula".to_string()),
        Just("\"{}\"".to_string()),
        Just("127.0.0.1:22121".to_string()),
        Just("/tmp/x.sock 0666".to_string()),
        Just("target".to_string()),
        Just("[1, 2]".to_string()),
        Just("&a 1".to_string()),
        Just("*a".to_string()),
        Just("".to_string()),
        "[0-9]{1,12}",
        "[ -~]{0,12}",
    ]
}

/// A server line from fragments that are often almost right.
fn server_line() -> impl Strategy<Value = String> {
    (
        prop_oneof![
            Just("127.0.0.1"),
            Just("::1"),
            Just("/tmp/r.sock"),
            Just(""),
            Just("host name")
        ],
        prop::option::of("[0-9]{0,6}"),
        prop::option::of("[0-9x]{0,4}"),
        prop::option::of("[a-z0-9 ]{0,6}"),
    )
        .prop_map(|(host, port, weight, name)| {
            let mut line = host.to_string();
            for part in [port, weight].into_iter().flatten() {
                line.push(':');
                line.push_str(&part);
            }
            if let Some(name) = name {
                line.push(' ');
                line.push_str(&name);
            }
            line
        })
}

/// A config assembled from pool keys, servers and migration keys, with random indents.
fn config_text() -> impl Strategy<Value = String> {
    let key = prop::sample::select(
        POOL_KEYS
            .iter()
            .chain(MIGRATE_KEYS.iter())
            .copied()
            .chain(["bogus"])
            .collect::<Vec<_>>(),
    );
    let entry = (
        key,
        value(),
        prop::sample::select(vec![0usize, 1, 2, 2, 2, 4]),
    );
    let pool = (
        prop::sample::select(vec!["alpha", "beta", "target", "alpha"]),
        prop::collection::vec(entry, 0..8),
        prop::collection::vec(server_line(), 0..4),
    );
    prop::collection::vec(pool, 0..4).prop_map(|pools| {
        let mut text = String::new();
        for (name, entries, servers) in pools {
            text.push_str(&format!("{name}:\n"));
            for (key, value, indent) in entries {
                text.push_str(&format!("{}{key}: {value}\n", " ".repeat(indent)));
            }
            if !servers.is_empty() {
                text.push_str("  servers:\n");
                for s in servers {
                    text.push_str(&format!("   - {s}\n"));
                }
            }
        }
        text
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: support::property_cases(2000), ..ProptestConfig::default() })]

    #[test]
    fn any_text_is_handled(text in "\\PC{0,300}") {
        check_parse(&text)?;
    }

    #[test]
    fn yaml_shaped_bytes_are_handled(text in "[a-z:\\- \\n\"'\\[\\]{}&*!%#|>0-9]{0,200}") {
        check_parse(&text)?;
    }

    #[test]
    fn assembled_configs_are_handled(text in config_text()) {
        check_parse(&text)?;
    }

    #[test]
    fn any_server_line_is_handled(line in "\\PC{0,60}") {
        match parse_server_line(&line) {
            Ok(server) => {
                prop_assert!(server.weight > 0);
                prop_assert!(!server.name.is_empty());
            }
            Err(message) => prop_assert!(!message.is_empty()),
        }
    }

    #[test]
    fn near_miss_server_lines_are_handled(line in server_line()) {
        if let Err(message) = parse_server_line(&line) {
            prop_assert!(message.contains(&format!("\"{line}\"")), "the message quotes the line: {message}");
        }
    }

    #[test]
    fn well_formed_server_lines_round_trip(
        octets in prop::array::uniform4(0u8..=255),
        port in 1u16..=65535,
        weight in 1u32..=100_000,
        name in prop::option::of("[a-zA-Z0-9_.-]{1,20}"),
    ) {
        let host = format!("{}.{}.{}.{}", octets[0], octets[1], octets[2], octets[3]);
        let line = match &name {
            Some(n) => format!("{host}:{port}:{weight} {n}"),
            None => format!("{host}:{port}:{weight}"),
        };
        let server = parse_server_line(&line).map_err(TestCaseError::fail)?;
        prop_assert_eq!(server.addr, ServerAddr::Tcp { host: host.clone(), port });
        prop_assert_eq!(server.weight, weight);
        let expected = match name {
            Some(n) => n,
            None if port == 11211 => host,
            None => format!("{host}:{port}"),
        };
        prop_assert_eq!(server.name, expected);
    }
}
