//! `conf/prometheus-alerts.yml`, the alerting rules shipped for operators: Prometheus's own
//! checker accepts them, and in a real Prometheus (Debian's) scraping a real cutover they
//! stay quiet while a migration goes right, then fire when it goes wrong (a key changed
//! behind cutover's back on the target, a target server killed). That every metric they
//! name is exported: `tests/dashboard.rs`.

mod support;

use std::process::Command;
use std::time::Duration;

use redis::Commands;
use support::dashboard::{ALERT_RULES, alert_rules};
use support::{Prometheus, Proxy, RedisServer, migration_config, redis_servers, wait_for};

#[test]
fn promtool_accepts_the_rules() {
    let out = Command::new("promtool")
        .args(["check", "rules", ALERT_RULES])
        .output()
        .expect("promtool on PATH (apt-get install prometheus)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rules = alert_rules().len();
    assert!(
        text.contains(&format!("SUCCESS: {rules} rules found")),
        "{text} (this test reads {rules} rules)"
    );
}

#[test]
fn alerts_stay_quiet_while_a_migration_goes_right_and_fire_when_it_goes_wrong() {
    let source = RedisServer::start();
    let mut targets = redis_servers(2);
    support::fill_numbered(&source, 200);
    let proxy = Proxy::cutover(&migration_config(
        &source,
        &targets,
        "    shadow_ratio: 1.0\n",
    ));
    let prometheus = Prometheus::over_with_alerts(std::slice::from_ref(&proxy));
    prometheus.wait_scraping();

    // Going right: the backfill, mirrored writes, shadow reads that agree.
    proxy.wait_migration_drained(Duration::from_secs(30), 2);
    let mut conn = proxy.client();
    for i in 0..200 {
        let _: () = conn.set(format!("k{i}"), i + 1).expect("SET");
        let _: String = conn.get(format!("k{i}")).expect("GET");
    }
    proxy.wait_migration_drained(Duration::from_secs(30), 2);
    // Several scrapes and evaluations of every rule.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        prometheus.alerts(),
        Vec::<(String, String)>::new(),
        "a migration going right raises no alert"
    );
    let text = proxy.ctl_status();
    assert!(
        text.contains("servers  all answering (legacy 1, fleet 2)"),
        "{text}"
    );

    // Wrong, once: a key changed on the target behind cutover's back.
    support::diverge_on_target(&targets, "k7");
    let _: String = conn.get("k7").expect("GET");
    wait_for("the shadow mismatch alert", Duration::from_secs(30), || {
        prometheus
            .alerts()
            .contains(&("CutoverShadowMismatch".into(), "firing".into()))
    });

    // Wrong, lastingly: a target server dies, and writes keep coming.
    let dead = targets.pop().map(|t| t.addr()).unwrap_or_default();
    let mut i = 0;
    wait_for(
        "the dirty-key and server-error alerts",
        Duration::from_secs(60),
        || {
            for _ in 0..50 {
                let _: () = conn.set(format!("after{i}"), i).expect("SET");
                i += 1;
            }
            prometheus.alert_active("CutoverDirtyKeys")
                && prometheus.alert_active("CutoverServerErrors")
        },
    );
    // `cutover ctl status` names it.
    let text = proxy.ctl_status();
    assert!(
        text.contains(&format!("servers  fleet {dead}: "))
            && text.contains("failures since its last answer"),
        "{text}"
    );
    let alerts = prometheus.alerts();
    assert!(
        !alerts
            .iter()
            .any(|(name, _)| name == "CutoverFleetNoLeader"),
        "no fleet, no fleet alert: {alerts:?}"
    );
}
