//! The Grafana dashboard's queries (`conf/grafana-dashboard.json`), the alerting rules'
//! expressions (`conf/prometheus-alerts.yml`) and the metric names they use, for the tests
//! that check cutover exports them.

use std::collections::BTreeSet;

use serde_json::Value;

/// Every `expr` in the dashboard, panels inside rows included.
pub fn queries(panels: &[Value], out: &mut Vec<String>) {
    for panel in panels {
        if let Some(targets) = panel["targets"].as_array() {
            for target in targets {
                if let Some(expr) = target["expr"].as_str() {
                    out.push(expr.to_string());
                }
            }
        }
        if let Some(inner) = panel["panels"].as_array() {
            queries(inner, out);
        }
    }
}

/// The `cutover_*` metric names a query uses (histogram series named by their family).
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("cutover_") {
        let start = i + at;
        let end = start
            + bytes[start..]
                .iter()
                .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
                .count();
        let name = &expr[start..end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| f.ends_with("_seconds")))
            .unwrap_or(name);
        names.insert(family.to_string());
        i = end;
    }
    names
}

/// Every query of `conf/grafana-dashboard.json`.
pub fn dashboard_queries() -> Vec<String> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/conf/grafana-dashboard.json"
    ))
    .expect("dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("valid JSON");
    let mut exprs = Vec::new();
    queries(dashboard["panels"].as_array().expect("panels"), &mut exprs);
    exprs
}

/// The alerting rules file.
pub const ALERT_RULES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/prometheus-alerts.yml");

/// Every alerting rule's name and expression in [`ALERT_RULES`] (each `expr:` on one line,
/// as the file keeps them).
pub fn alert_rules() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(ALERT_RULES).expect("alert rules");
    let mut rules = Vec::new();
    let mut name = None;
    for line in text.lines().map(str::trim) {
        if let Some(alert) = line.strip_prefix("- alert: ") {
            name = Some(alert.to_string());
        } else if let Some(expr) = line.strip_prefix("expr: ") {
            rules.push((
                name.take().expect("an alert before its expr"),
                expr.to_string(),
            ));
        }
    }
    rules
}

/// The metric names `/metrics` text exports (histogram series named by their family).
pub fn exported(metrics: &str) -> BTreeSet<&str> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(|name| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| f.ends_with("_seconds")))
                .unwrap_or(name)
        })
        .collect()
}

/// Whether a metric belongs to a fleet (exported only by members of one).
pub fn fleet_only(name: &str) -> bool {
    name.starts_with("cutover_fleet_")
}
