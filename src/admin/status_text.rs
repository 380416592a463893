//! How `/status` and the controls' answers read on a terminal, for `cutover ctl`: per
//! migration the phase, a bar for the backfill, capture, engines, mirror lag, shadow
//! reads, verify and what blocks a cutover; the fleet and busy polling when present. Only
//! text from JSON here; the calls are in `ctl.rs`.

use serde_json::Value;

use crate::upstream::ServerState;

/// Width of the backfill bar.
const BAR: usize = 30;

/// The answer to a flip: what changed, the pause, then the status.
pub(super) fn flipped(answer: &Value) -> String {
    let mut out = format!(
        "{} -> {}: requests held {:.3} ms{}\n",
        answer["from"].as_str().unwrap_or("?"),
        answer["to"].as_str().unwrap_or("?"),
        answer["pause_ms"].as_f64().unwrap_or(0.0),
        if answer["forced"].as_bool() == Some(true) {
            " (forced)"
        } else {
            ""
        }
    );
    out.push_str(&migration_text(&answer["status"]));
    out
}

/// Every migration in a `/status` answer.
pub(super) fn migrations(status: &Value) -> Vec<&Value> {
    status["pools"]
        .as_array()
        .map(|pools| {
            pools
                .iter()
                .filter(|p| p["migration"].is_object())
                .map(|p| &p["migration"])
                .collect()
        })
        .unwrap_or_default()
}

/// `/status` as text.
pub(super) fn summary(status: &Value) -> String {
    let found = migrations(status);
    let mut out = if found.is_empty() {
        format!(
            "cutover {}: no migration configured (a pool needs migrate_to)\n",
            status["version"].as_str().unwrap_or("?")
        )
    } else {
        found.into_iter().map(migration_text).collect()
    };
    for pool in status["pools"].as_array().into_iter().flatten() {
        out.push_str(&servers_text(pool));
        out.push_str(&fleet_text(&pool["fleet"]));
    }
    out.push_str(&busy_poll_text(&status["busy_poll"]));
    out
}

/// How a pool's servers fare (and its migration target's): those failing or ejected by
/// name, or that all answer.
fn servers_text(pool: &Value) -> String {
    let mut sides = vec![(pool["name"].as_str().unwrap_or("?"), &pool["servers"])];
    let migration = &pool["migration"];
    if migration.is_object() {
        sides.push((
            migration["target"].as_str().unwrap_or("target"),
            &migration["target_servers"],
        ));
    }
    let mut counts = Vec::new();
    let mut troubled = Vec::new();
    for (name, servers) in sides {
        let servers: Vec<ServerState> = serde_json::from_value(servers.clone()).unwrap_or_default();
        counts.push(format!("{name} {}", servers.len()));
        troubled.extend(servers.iter().filter_map(|server| {
            let trouble = server.trouble()?;
            Some(format!("{name} {}: {trouble}", server.name))
        }));
    }
    if troubled.is_empty() {
        format!("  servers  all answering ({})\n", counts.join(", "))
    } else {
        format!("  servers  {}\n", troubled.join("; "))
    }
}

/// The proxy's busy polling, unless `--busy-poll off` (or a CPU quota, for `auto`) left
/// it out.
fn busy_poll_text(poll: &Value) -> String {
    if poll.is_null() {
        return String::new();
    }
    let number = |field: &str| poll[field].as_u64().unwrap_or(0);
    let quota = match poll["cpu_quota_cores"].as_f64() {
        Some(cores) => format!("; under a CPU quota of {cores:.2} cores, which polling spends"),
        None => String::new(),
    };
    let mode = if poll["mode"] == "auto" {
        format!(
            "auto, {} µs after client I/O while clients come back within {} µs ({} now, turned on {} times)",
            number("window_us"),
            number("auto_reach_us"),
            if poll["on"] == true { "on" } else { "off" },
            number("turned_on"),
        )
    } else {
        format!("{} µs after client I/O", number("window_us"))
    };
    format!(
        "busy polling: {mode}; {} client reads and replies caught in {} spells, {:.2} s polling; {} clients owed replies (polls while at most {}){quota}\n",
        number("caught"),
        number("spells"),
        poll["polled_seconds"].as_f64().unwrap_or(0.0),
        number("busy_clients"),
        number("max_busy_clients"),
    )
}

/// The fleet a pool migrates with, if any: who leads, this member's role, the members.
fn fleet_text(fleet: &Value) -> String {
    if !fleet.is_object() {
        return String::new();
    }
    let members: Vec<String> = fleet["members"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            format!(
                "{}{} (clients {}, admin {})",
                m["id"].as_str().unwrap_or("?"),
                if m["leader"] == true { " [leader]" } else { "" },
                m["listen"].as_str().unwrap_or("?"),
                m["admin"].as_str().unwrap_or("none"),
            )
        })
        .collect();
    format!(
        "  fleet    this member ({}) is {}; {} members, last fleet-wide pause {:.1} ms{}\n           {}\n",
        fleet["member"].as_str().unwrap_or("?"),
        fleet["role"].as_str().unwrap_or("?"),
        members.len(),
        fleet["last_pause_ms"].as_f64().unwrap_or(0.0),
        match (fleet["etcd_reachable"] == false, fleet["fenced"] == true) {
            (_, true) => "; fenced (lease lapsed): requests get -TRYAGAIN until it is renewed",
            (true, false) => "; etcd unreachable",
            (false, false) => "",
        },
        members.join("\n           "),
    )
}

/// The servers that evicted keys (rule 19), if any, with `what` to say of them: `  evictions
/// target server t1: 120 keys evicted while mirrored (maxmemory full); ...`.
fn evictions_text(evictions: &Value, what: &str) -> String {
    let Some(seen) = evictions.as_array().filter(|seen| !seen.is_empty()) else {
        return String::new();
    };
    let servers: Vec<String> = seen
        .iter()
        .map(|e| {
            format!(
                "{} server {}: {} keys",
                e["side"].as_str().unwrap_or("?"),
                e["server"].as_str().unwrap_or("?"),
                e["keys"].as_u64().unwrap_or(0)
            )
        })
        .collect();
    format!("  evictions {} {what}\n", servers.join(", "))
}

/// The servers seen restarting (rule 17), if any: `  restarts target server s1 12 s ago
/// (run_id changed); their keys were copied again (N keys queued)`.
fn restarts_text(restarts: &Value) -> String {
    let Some(seen) = restarts["seen"].as_array().filter(|seen| !seen.is_empty()) else {
        return String::new();
    };
    let now_ms = crate::migrate::now_ms();
    let servers: Vec<String> = seen
        .iter()
        .map(|r| {
            let ago = now_ms.saturating_sub(r["at_ms"].as_u64().unwrap_or(0)) / 1000;
            format!(
                "{} server {} {ago} s ago",
                r["side"].as_str().unwrap_or("?"),
                r["server"].as_str().unwrap_or("?")
            )
        })
        .collect();
    let pass = if restarts["recopying"].as_bool() == Some(true) {
        "their keys are being copied again"
    } else {
        "their keys were copied again"
    };
    format!(
        "  restarts {} (run_id changed); {pass} ({} keys queued)\n",
        servers.join(", "),
        restarts["keys_queued"].as_u64().unwrap_or(0),
    )
}

/// The capture line, under replication capture: each source server's applied offset,
/// lag and reconnects.
fn capture_text(capture: &Value) -> String {
    if capture["mode"].as_str() != Some("replication") {
        return String::new();
    }
    let servers: Vec<String> = capture["servers"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|s| {
                    let down = s["disconnected_seconds"].as_f64().unwrap_or(0.0);
                    let state = if down > 0.0 {
                        format!(
                            "DISCONNECTED for {down:.1} s ({} failed reconnects, last: {}), ",
                            s["failed_reconnects"].as_u64().unwrap_or(0),
                            s["last_error"].as_str().unwrap_or("?"),
                        )
                    } else {
                        String::new()
                    };
                    format!(
                        "{} {state}at offset {}, lag {} bytes / {:.3} s, {} reconnects continued, {} full resyncs",
                        s["server"].as_str().unwrap_or("?"),
                        s["offset"].as_u64().unwrap_or(0),
                        s["lag_bytes"].as_u64().unwrap_or(0),
                        s["lag_seconds"].as_f64().unwrap_or(0.0),
                        s["continued"].as_u64().unwrap_or(0),
                        s["full_resyncs"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let events = &capture["events"];
    let count = |action: &str| events[action].as_u64().unwrap_or(0);
    format!(
        "  capture  replication, following the {}: {}\n           stream commands: {} replayed, {} copied, {} in a copy, {} ignored, {} markers; {} copies await their marker\n",
        capture["side"].as_str().unwrap_or("source"),
        servers.join("; "),
        count("replayed"),
        count("copied"),
        count("in_copy"),
        count("ignored"),
        count("marker"),
        capture["pending_markers"].as_u64().unwrap_or(0),
    )
}

/// The engines line, the copies line and the readiness report of one migration.
fn engines_text(m: &Value) -> String {
    let engines = &m["engines"];
    let side = |v: &Value| -> String {
        let names: Vec<&str> = v
            .as_array()
            .map(|a| a.iter().map(|e| e.as_str().unwrap_or("unknown")).collect())
            .unwrap_or_default();
        let mut distinct = names.clone();
        distinct.dedup();
        match distinct.as_slice() {
            [one] if names.len() > 1 => format!("{one} x{}", names.len()),
            _ => names.join(", "),
        }
    };
    let copies = &m["copies"];
    let mut out = format!(
        "  engines  source {}; target {}; copies by {} (after cutover, back by {})\n  copies   {} by RESTORE, {} by type ({} after a refused payload), {} stream parts not carried\n",
        side(&engines["source"]),
        side(&engines["target"]),
        engines["copy_method"]["to_target"].as_str().unwrap_or("?"),
        engines["copy_method"]["to_source"].as_str().unwrap_or("?"),
        copies["restore"].as_u64().unwrap_or(0),
        copies["by_type"].as_u64().unwrap_or(0),
        copies["refused_then_by_type"].as_u64().unwrap_or(0),
        copies["stream_parts_not_carried"].as_u64().unwrap_or(0),
    );
    if let Some(lacking) = m["readiness"].as_array().filter(|a| !a.is_empty()) {
        let list: Vec<String> = lacking
            .iter()
            .map(|r| {
                let why = match r["reason"].as_str() {
                    Some("keys_on_different_target_servers") => "keys on different target servers",
                    _ => "the target lacks it",
                };
                format!(
                    "{} ({} requests: {why})",
                    r["command"].as_str().unwrap_or("?"),
                    r["requests"].as_u64().unwrap_or(0)
                )
            })
            .collect();
        out.push_str(&format!(
            "  readiness what would not work after the cutover: {}\n",
            list.join(", ")
        ));
    }
    out
}

/// Why sampled reads were not compared, when some were not: `; not compared: 12 while
/// dirty keys waited, ...`.
fn skipped_text(skipped: &Value) -> String {
    let Some(map) = skipped.as_object() else {
        return String::new();
    };
    let parts: Vec<String> = map
        .iter()
        .filter_map(|(reason, n)| {
            let n = n.as_u64().filter(|n| *n > 0)?;
            let why = match reason.as_str() {
                "not_copied" => "before their key was copied",
                "copy_pending" => "while their key's copy was pending",
                "dirty" => "while dirty keys waited",
                "unavailable" => "with the target unavailable",
                "target_lacks" => "the target lacks the command",
                other => other,
            };
            Some(format!("{n} {why}"))
        })
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("; not compared: {}", parts.join(", "))
    }
}

/// One migration's status as text.
fn migration_text(m: &Value) -> String {
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    let backfill = &m["backfill"];
    let mirror = &m["mirror"];
    let shadow = &m["shadow"];
    let ratio = f(&backfill["progress"]).clamp(0.0, 1.0);
    let filled = (ratio * BAR as f64).round() as usize;
    let eta = match backfill["eta_seconds"].as_f64() {
        Some(s) if s > 0.0 => format!(", ETA {s:.0}s"),
        _ => String::new(),
    };
    let mut out = format!(
        "{} -> {}   phase: {} (clients served by {})\n",
        m["source"].as_str().unwrap_or("?"),
        m["target"].as_str().unwrap_or("?"),
        m["phase"].as_str().unwrap_or("?"),
        m["authority"].as_str().unwrap_or("?"),
    );
    out.push_str(&format!(
        "  backfill [{}{}] {:5.1}%  {} of {} keys scanned, {} copied, {:.1} MB ({}{eta})\n",
        "#".repeat(filled),
        ".".repeat(BAR - filled),
        ratio * 100.0,
        n(&backfill["keys_scanned"]),
        n(&backfill["keys_total"]),
        n(&backfill["keys_copied"]),
        n(&backfill["bytes_copied"]) as f64 / 1e6,
        backfill["state"].as_str().unwrap_or("?"),
    ));
    out.push_str(&format!(
        "  mirror   queued {}, dirty {}, lag p50 {:.1} ms, p99 {:.1} ms; {} replayed, {} copied\n",
        n(&mirror["queued"]),
        n(&mirror["dirty"]),
        f(&mirror["lag_p50_ms"]),
        f(&mirror["lag_p99_ms"]),
        n(&mirror["replayed"]),
        n(&mirror["copied"]),
    ));
    let backoff = n(&mirror["dirty_backoff_ms"]);
    if backoff > 0 {
        out.push_str(&format!(
            "           copies of dirty keys keep failing ({} so far): {} keys tried every {:.1} s until they succeed\n",
            n(&mirror["dirty_failed_again"]),
            crate::migrate::DIRTY_PROBE,
            backoff as f64 / 1000.0,
        ));
    }
    out.push_str(&restarts_text(&m["restarts"]));
    out.push_str(&evictions_text(
        &m["evictions"],
        "evicted while mirrored (maxmemory full); raise maxmemory, then verify with repair",
    ));
    out.push_str(&evictions_text(
        &m["evictions_not_followed"],
        "evicted by the side clients use, still held by the other (capture: proxy cannot tell which); verify with repair before a flip, or use capture: replication",
    ));
    out.push_str(&engines_text(m));
    out.push_str(&capture_text(&m["capture"]));
    out.push_str(&format!(
        "  shadow   {} reads checked (ratio {}), {} mismatches, {} repaired{}\n",
        n(&shadow["checked"]),
        f(&shadow["ratio"]),
        n(&shadow["mismatches"]),
        n(&shadow["repaired"]),
        skipped_text(&shadow["skipped"]),
    ));
    let verify = &m["verify"];
    if verify["running"].as_bool() == Some(true) {
        out.push_str(&format!(
            "  verify   running: {} keys checked\n",
            n(&verify["checked"])
        ));
    } else if verify["last"].is_object() {
        out.push_str(&format!("  {}", verify_text(&verify["last"])));
    } else {
        out.push_str("  verify   not run yet (cutover ctl verify)\n");
    }
    let cutover = &m["cutover"];
    let blockers: Vec<&str> = cutover["blockers"]
        .as_array()
        .map(|b| b.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if m["phase"].as_str() == Some("migrating") {
        if blockers.is_empty() {
            out.push_str("  cutover  ready (cutover ctl cutover)\n");
        } else {
            out.push_str("  cutover  not ready:\n");
            for b in blockers {
                out.push_str(&format!("             - {b}\n"));
            }
        }
    }
    out.push_str(&format!(
        "  last flip held requests {:.3} ms\n",
        f(&cutover["last_pause_ms"])
    ));
    let late = cutover["given_up_late"].as_u64().unwrap_or(0);
    if late > 0 {
        let why: Vec<&str> = cutover["last_given_up"]
            .as_array()
            .map(|b| b.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        out.push_str(&format!(
            "  {late} flips given up at their last look, under the gate; the latest because:\n"
        ));
        for b in why {
            out.push_str(&format!("             - {b}\n"));
        }
    }
    let unread = cutover["checks_unread"].as_u64().unwrap_or(0);
    if unread > 0 {
        let limit = cutover["checks_limit_ms"].as_u64().unwrap_or(0);
        out.push_str(&format!(
            "  {unread} times a flip's check (or a verify pass's start) could not read a server of the side clients use within {limit} ms (a hung server?): a restart or evictions there may be found only after the flip\n"
        ));
    }
    out
}

/// A verify report as text.
pub(super) fn verify_text(report: &Value) -> String {
    if !report.is_object() {
        return "verify   no result\n".into();
    }
    let mut out = format!(
        "verify   {} differences in {} keys (rounds: {}, {:.1} s){}\n",
        report["differences"].as_u64().unwrap_or(0),
        report["checked"].as_u64().unwrap_or(0),
        report["rounds"].as_u64().unwrap_or(0),
        report["seconds"].as_f64().unwrap_or(0.0),
        if report["repair"].as_bool() == Some(true) {
            format!(", {} repaired", report["repaired"].as_u64().unwrap_or(0))
        } else {
            String::new()
        }
    );
    if let Some(kinds) = report["by_kind"].as_object() {
        for (kind, count) in kinds {
            let count = count.as_u64().unwrap_or(0);
            if count > 0 {
                let examples: Vec<&str> = report["examples"][kind]
                    .as_array()
                    .map(|e| e.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                out.push_str(&format!(
                    "             {kind}: {count} (e.g. {})\n",
                    examples.join(", ")
                ));
            }
        }
    }
    out
}
