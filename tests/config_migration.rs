//! The migration extension keys (`migrate_to`, `migrate:`): accepted when they make
//! sense, rejected with the line and key when they do not.

use std::path::PathBuf;
use std::time::Duration;

use cutover::config::{Config, StructuralCopy};

const TARGET: &str = "target:\n  redis: true\n  hash: murmur\n  servers:\n   - 127.0.0.1:7101:1\n   - 127.0.0.1:7102:1\n";

fn source(extra: &str) -> String {
    format!(
        "source:\n  listen: 127.0.0.1:22121\n  redis: true\n  timeout: 400\n  servers:\n   - 127.0.0.1:7001:1\n{extra}"
    )
}

fn problems(text: &str) -> Vec<(usize, String)> {
    match Config::parse(text, "m.yml") {
        Ok(_) => Vec::new(),
        Err(e) => e
            .problems()
            .iter()
            .map(|p| (p.line, p.to_string()))
            .collect(),
    }
}

#[test]
fn a_full_migration_config_is_read() {
    let text = source(
        "  migrate_to: target\n  migrate:\n    lanes: 64\n    scan_count: 500\n    backfill_keys_per_second: 20000\n    backfill_bytes_per_second: 10000000\n    copies_in_flight: 32\n    shadow_ratio: 0.25\n    ttl_tolerance_ms: 500\n    copy_limit_bytes: 1048576\n    structural_copy: always\n    mirror_queue_limit: 5000\n    state_file: /var/lib/cutover/source.state\n",
    ) + TARGET;
    let config = Config::parse(&text, "m.yml").expect("valid migration config");
    let src = config.pool("source").expect("source pool");
    let migration = src.migration.as_ref().expect("migration");
    assert_eq!(migration.target, "target");
    assert_eq!(migration.line, 7);
    let s = &migration.settings;
    assert_eq!((s.lanes, s.scan_count, s.copies_in_flight), (64, 500, 32));
    assert_eq!(
        (s.backfill_keys_per_second, s.backfill_bytes_per_second),
        (20_000, 10_000_000)
    );
    assert_eq!(
        (s.shadow_ratio, s.ttl_tolerance_ms, s.copy_limit_bytes),
        (0.25, 500, 1_048_576)
    );
    assert_eq!(s.structural_copy, StructuralCopy::Always);
    assert_eq!(s.mirror_queue_limit, 5000);
    assert_eq!(
        s.state_file,
        Some(PathBuf::from("/var/lib/cutover/source.state"))
    );
    assert_eq!(src.timeout, Some(Duration::from_millis(400)));
    let target = config.migration_target(src).expect("target pool");
    assert_eq!(target.listen, None, "a target-only pool needs no listen");
    assert_eq!(target.servers.len(), 2);
}

#[test]
fn defaults_apply_without_a_migrate_block() {
    let config =
        Config::parse(&(source("  migrate_to: target\n") + TARGET), "m.yml").expect("valid");
    let settings = &config
        .pool("source")
        .and_then(|p| p.migration.as_ref())
        .expect("migration")
        .settings;
    assert_eq!(settings.lanes, 256);
    assert_eq!(settings.structural_copy, StructuralCopy::Auto);
    assert_eq!(settings.state_file, None);
}

#[test]
fn target_must_exist_and_differ() {
    let p = problems(&(source("  migrate_to: nowhere\n") + TARGET));
    assert_eq!(p.len(), 2, "{p:?}"); // the missing pool, and 'target' has no listen and no source
    assert!(
        p[0].1
            .contains("line 7: pool 'source': migrate_to: names pool 'nowhere'"),
        "{p:?}"
    );
    assert!(
        p[1].1.contains("pool 'target'") && p[1].1.contains("listen"),
        "{p:?}"
    );

    let p = problems(&source("  migrate_to: source\n"));
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].1.contains("cannot migrate to itself"), "{p:?}");
}

#[test]
fn no_chains_no_shared_targets_and_redis_only() {
    let chain = source("  migrate_to: target\n")
        + &TARGET.replace("  redis: true\n", "  redis: true\n  migrate_to: third\n")
        + "third:\n  redis: true\n  servers:\n   - 127.0.0.1:7201:1\n";
    let p = problems(&chain);
    assert!(
        p.iter().any(|(_, m)| m.contains("chained migrations")),
        "{p:?}"
    );

    let shared = source("  migrate_to: target\n")
        + "other:\n  listen: 127.0.0.1:22122\n  redis: true\n  servers:\n   - 127.0.0.1:7002:1\n  migrate_to: target\n"
        + TARGET;
    let p = problems(&shared);
    assert!(
        p.iter()
            .any(|(_, m)| m.contains("already migrates to 'target'")),
        "{p:?}"
    );

    let memcached = source("  migrate_to: target\n") + &TARGET.replace("  redis: true\n", "");
    let p = problems(&memcached);
    assert!(p.iter().any(|(_, m)| m.contains("redis: true")), "{p:?}");
}

#[test]
fn bad_settings_name_their_line_and_key() {
    let text = source(
        "  migrate_to: target\n  migrate:\n    lanes: 0\n    shadow_ratio: 1.5\n    structural_copy: sometimes\n    lane: 4\n    lanes: 3\n    state_file:\n",
    ) + TARGET;
    let p = problems(&text);
    let expect = [
        (9, "migrate.lanes: must be at least 1"),
        (10, "migrate.shadow_ratio: \"1.5\" is not a ratio"),
        (11, "migrate.structural_copy: \"sometimes\""),
        (
            12,
            "migrate.lane: unknown migration setting; did you mean \"lanes\"?",
        ),
        (13, "migrate.lanes: is a duplicate (first set on line 9)"),
        (14, "migrate.state_file: must be a file path"),
    ];
    assert_eq!(p.len(), expect.len(), "{p:?}");
    for ((line, message), (want_line, want)) in p.iter().zip(expect) {
        assert_eq!(*line, want_line, "{message}");
        assert!(message.contains(want), "{message} should contain {want}");
    }
}

#[test]
fn migrate_block_without_target_is_an_error() {
    let p = problems(&source("  migrate:\n    lanes: 4\n"));
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].1
            .contains("line 7: pool 'source': migrate: has no effect without"),
        "{p:?}"
    );
    let p = problems(&(source("  migrate: 5\n  migrate_to: target\n") + TARGET));
    assert!(
        p.iter()
            .any(|(l, m)| *l == 7 && m.contains("must be a mapping")),
        "{p:?}"
    );
}

#[test]
fn a_fleet_names_its_etcd_and_needs_replication_capture() {
    let text = source(
        "  migrate_to: target\n  migrate:\n    capture: replication\n    coordination: etcd://10.0.0.1:2379,etcd-2:2379/cutover/shop\n",
    ) + TARGET;
    let config = Config::parse(&text, "m.yml").expect("valid fleet config");
    let settings = &config
        .pool("source")
        .expect("pool")
        .migration
        .as_ref()
        .expect("migration")
        .settings;
    let fleet = settings.coordination.as_ref().expect("coordination");
    assert_eq!(
        fleet.endpoints,
        ["http://10.0.0.1:2379", "http://etcd-2:2379"]
    );
    assert_eq!(fleet.prefix, "/cutover/shop");

    let p = problems(
        &(source("  migrate_to: target\n  migrate:\n    coordination: etcd://h:2379/x\n") + TARGET),
    );
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].0, 9);
    assert!(
        p[0].1
            .contains("migrate.coordination: needs capture: replication (or auto)"),
        "{p:?}"
    );
    for bad in [
        "http://h:2379/x",
        "etcd://h:2379",
        "etcd://h:2379/",
        "etcd://h/x",
        "etcd://:2379/x",
        "etcd://h:0/x",
    ] {
        let p = problems(
            &(source(&format!(
                "  migrate_to: target\n  migrate:\n    capture: auto\n    coordination: {bad}\n"
            )) + TARGET),
        );
        assert_eq!(p.len(), 1, "{bad}: {p:?}");
        assert!(p[0].1.contains("migrate.coordination"), "{bad}: {p:?}");
    }
}
