//! `conf/grafana-dashboard.json` and `conf/prometheus-alerts.yml` only query metrics
//! cutover exports: every `cutover_*` name in their queries is found in `/metrics` of a
//! proxy that migrated, was verified and cut over (busy-polling as it did). How the alerts
//! behave in a real Prometheus: `tests/alerts.rs`.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use redis::Commands;
use support::dashboard::{alert_rules, dashboard_queries, exported, fleet_only, metric_names};
use support::{Proxy, RedisServer, http, migration_config, redis_servers, wait_for};

/// The proxies here busy-poll with a fixed window (whatever the test's clients do), so the
/// busy-polling panel has series too.
const BUSY_POLL: &[&str] = &["--busy-poll", "100"];

#[test]
fn every_metric_the_dashboard_and_the_alerts_query_is_exported() {
    let exprs = dashboard_queries();
    assert!(exprs.len() >= 20, "{} queries", exprs.len());
    let alerts = alert_rules();
    assert!(alerts.len() >= 10, "{alerts:?}");
    let wanted: BTreeSet<String> = exprs
        .iter()
        .chain(alerts.iter().map(|(_, expr)| expr))
        .flat_map(|e| metric_names(e))
        .collect();
    for needed in [
        "cutover_migration_phase",
        "cutover_backfill_progress_ratio",
        "cutover_mirror_lag_seconds",
        "cutover_shadow_mismatches_total",
        "cutover_verify_last_differences",
        "cutover_cutover_pause_seconds",
        "cutover_requests_total",
        "cutover_request_duration_seconds",
        "cutover_server_errors_total",
        "cutover_copies_total",
        "cutover_mirror_folded_total",
        "cutover_mirror_retries_total",
        "cutover_readiness_commands",
        "cutover_copy_stream_parts_not_carried_total",
        "cutover_capture_lag_bytes",
        "cutover_capture_lag_seconds",
        "cutover_capture_reconnects_total",
        "cutover_capture_events_total",
        "cutover_capture_pending_markers",
        "cutover_capture_fences_total",
        "cutover_busy_poll_caught_total",
        "cutover_busy_poll_spell_seconds",
        "cutover_busy_poll_turns_total",
    ] {
        assert!(wanted.contains(needed), "the dashboard shows {needed}");
    }

    // A proxy that has done everything once: mirrored, shadow-checked, verified, flipped.
    let source = RedisServer::start();
    let targets = redis_servers(2);
    let _: () = source.client().set("a", "1").expect("fill");
    let proxy = Proxy::cutover_with(
        &migration_config(&source, &targets, "    shadow_ratio: 1.0\n"),
        BUSY_POLL,
    );
    proxy.wait_migration_drained(Duration::from_secs(30), 2);
    let mut conn = proxy.client();
    let _: () = conn.set("b", "2").expect("SET");
    let _: String = conn.get("a").expect("GET");
    send_a_form_the_targets_lack(&mut conn);
    assert_eq!(http(proxy.admin_port, "POST", "/verify").0, 202);
    let mut flipped = false;
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(100));
        let (code, _) = http(proxy.admin_port, "POST", "/cutover");
        if code == 200 {
            flipped = true;
            break;
        }
    }
    assert!(flipped, "cutover happened");
    let metrics = proxy.admin_get("/metrics").1;
    // A fleet's metrics are checked on a fleet member (tests/fleet.rs).
    let exported = exported(&metrics);
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|w| !fleet_only(w) && !exported.contains(w.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "queried by the dashboard or the alerts, not exported: {missing:?}\n{metrics}"
    );
}

/// Every query of the dashboard, evaluated by a real Prometheus (Debian's) scraping a
/// cutover that migrated, shadow-read a diverged key, verified and cut over: each one
/// parses and returns series.
#[test]
fn every_dashboard_query_returns_series_in_a_real_prometheus() {
    // A fleet's panels have series only on fleet members (tests/fleet.rs checks their
    // metrics are exported).
    let exprs: Vec<String> = dashboard_queries()
        .into_iter()
        .filter(|e| !metric_names(e).iter().any(|n| fleet_only(n)))
        .collect();

    let source = RedisServer::start();
    let targets = redis_servers(2);
    support::fill_numbered(&source, 200);
    let proxy = Proxy::cutover_with(
        &migration_config(&source, &targets, "    shadow_ratio: 1.0\n"),
        BUSY_POLL,
    );
    let prometheus = support::Prometheus::start(&[format!("127.0.0.1:{}", proxy.admin_port)]);
    prometheus.wait_scraping();
    proxy.wait_migration_drained(Duration::from_secs(30), 2);
    let mut conn = proxy.client();
    for i in 0..200 {
        let _: () = conn.set(format!("k{i}"), i + 1).expect("SET");
        let _: String = conn.get(format!("k{i}")).expect("GET");
    }
    send_a_form_the_targets_lack(&mut conn);
    // A key changed behind cutover's back: a shadow mismatch, confirmed and repaired.
    proxy.wait_migration_drained(Duration::from_secs(30), 2);
    support::diverge_on_target(&targets, "k7");
    let _: String = conn.get("k7").expect("GET");
    wait_for("the shadow mismatch", Duration::from_secs(10), || {
        proxy.admin_get("/status").1.contains("\"mismatches\":1")
    });
    assert_eq!(http(proxy.admin_port, "POST", "/verify").0, 202);
    support::until_accepted("the cutover", Duration::from_secs(30), || {
        http(proxy.admin_port, "POST", "/cutover")
    });
    for i in 0..50 {
        let _: () = conn.set(format!("k{i}"), i).expect("SET after the cutover");
    }
    // Enough scrapes after everything for rate() and increase() over their windows.
    std::thread::sleep(Duration::from_secs(4));
    let mut empty = Vec::new();
    for expr in &exprs {
        let query = expr.replace("$pool", ".*");
        let result = prometheus.query(&query);
        if result.as_array().is_none_or(Vec::is_empty) {
            empty.push(query);
        }
    }
    assert!(
        empty.is_empty(),
        "queries with no series: {empty:#?}\ntargets: {}",
        prometheus.targets()
    );
}

/// Send `ZRANK … WITHSCORE` (Redis 7.2), which the targets (Redis 7.0) lack, so the
/// readiness report lists it. Its reply does not matter.
fn send_a_form_the_targets_lack(conn: &mut redis::Connection) {
    let _: redis::Value = redis::cmd("ZRANK")
        .arg("z")
        .arg("m")
        .arg("WITHSCORE")
        .query(conn)
        .unwrap_or(redis::Value::Nil);
}
