//! One member's life in the fleet: its lease and record (with its ejections, rule 18), the
//! campaign for leadership, the list of members (whose ejections the leader takes as its
//! own), and, while it leads, its checkpoint.
//!
//! A term begins with a lease: the member's record is put under it and it campaigns with
//! it. The lease is renewed every tick; when renewing has failed for a whole TTL (etcd
//! lost, the process stalled) the lease is gone, so is any leadership it carried: the
//! member stops migrating, then registers again once etcd answers.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use tokio::time::Instant;

use super::{CALL_TIMEOUT, FENCE_AFTER, Fleet, LEASE_TTL, MemberInfo, TICK};
use crate::migrate::EjectionReport;

/// Enter the fleet (at start, or again after losing the lease): register under a new
/// lease, make sure the phase record exists, take the fleet's phase (it may have flipped
/// meanwhile), and only then let requests through (rule 15). The lease's id.
pub(super) async fn enter(fleet: &Fleet) -> Result<i64, etcd_client::Error> {
    let sent = std::time::Instant::now();
    let lease = register(fleet).await?;
    super::barrier::init(fleet).await?;
    super::barrier::sync_phase(fleet).await?;
    fleet.migration.lease_renewed(sent, FENCE_AFTER);
    Ok(lease)
}

/// Every member's record in etcd, each with the revision that created it (the order the
/// members registered in).
async fn members(fleet: &Fleet) -> Result<Vec<(i64, MemberInfo)>, etcd_client::Error> {
    let reply = fleet
        .client
        .clone()
        .get(
            fleet.key("members/"),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await?;
    Ok(reply
        .kvs()
        .iter()
        .filter_map(|kv| {
            let info = serde_json::from_slice::<MemberInfo>(kv.value()).ok()?;
            Some((kv.create_revision(), info))
        })
        .collect())
}

/// Rule 16: after registering, compare this member's placement with every other
/// member's; if one that registered before it (a lower create revision) disagrees, leave
/// (revoke the lease, so the record goes at once) and say who and how. Of two members
/// joining at once with different configs, the later one leaves and the earlier one
/// stays. `Ok(Some(_))`: the disagreement.
pub(super) async fn agree_on_placement(
    fleet: &Fleet,
    lease: i64,
) -> Result<Option<super::FleetError>, etcd_client::Error> {
    let records = members(fleet).await?;
    let mine = records
        .iter()
        .find(|(_, info)| info.id == fleet.me.id)
        .map_or(i64::MAX, |(revision, _)| *revision);
    let first_disagreeing = records
        .iter()
        .filter(|(revision, info)| {
            *revision < mine && info.placement.is_some() && info.placement != fleet.me.placement
        })
        .min_by_key(|(revision, _)| *revision);
    let Some((_, theirs)) = first_disagreeing else {
        return Ok(None);
    };
    let _ = fleet.client.clone().lease_revoke(lease).await;
    Ok(Some(super::FleetError::Placement {
        member: theirs.id.clone(),
        theirs: theirs.placement.clone().unwrap_or_default(),
        ours: fleet.me.placement.clone().unwrap_or_default(),
    }))
}

/// Put this member's record under a new lease; the lease's id.
async fn register(fleet: &Fleet) -> Result<i64, etcd_client::Error> {
    let mut client = fleet.client.clone();
    let lease = client.lease_grant(LEASE_TTL, None).await?.id();
    put_record(fleet, lease, &fleet.me).await?;
    fleet.lease.store(lease, Relaxed);
    Ok(lease)
}

/// Put `record` as this member's, under `lease` (it goes with the lease).
async fn put_record(
    fleet: &Fleet,
    lease: i64,
    record: &MemberInfo,
) -> Result<(), etcd_client::Error> {
    let text = serde_json::to_string(record).unwrap_or_default();
    let key = fleet.key(&format!("members/{}", fleet.me.id));
    fleet
        .client
        .clone()
        .put(key, text, Some(PutOptions::new().with_lease(lease)))
        .await?;
    Ok(())
}

/// The member's terms, for as long as the process runs.
pub(super) async fn run(fleet: Arc<Fleet>, mut lease: i64) {
    loop {
        let campaign = tokio::spawn(campaign(fleet.clone(), lease));
        keep(&fleet, lease).await;
        campaign.abort();
        if fleet.leading.swap(false, Relaxed) {
            fleet.counters.leading.set(0.0);
            fleet.migration.step_down();
        }
        tracing::warn!(pool = %fleet.pool, member = %fleet.me.id, "the fleet lease is lost; registering again");
        lease = loop {
            tokio::time::sleep(TICK).await;
            match enter(&fleet).await {
                Ok(lease) => {
                    tracing::info!(pool = %fleet.pool, member = %fleet.me.id, "back in the fleet");
                    break lease;
                }
                Err(error) => {
                    fleet.etcd_failed();
                    tracing::warn!(pool = %fleet.pool, %error, "cannot register in the fleet; retrying");
                }
            }
        };
    }
}

/// Renew `lease` every tick (opening the renewal stream again after etcd went away, so a
/// restart of etcd keeps the lease), list the members, and write the checkpoint while
/// leading; return once the lease is gone (expired, or not renewed for a whole TTL).
async fn keep(fleet: &Fleet, lease: i64) {
    let mut client = fleet.streams.clone();
    let mut channel = None;
    let mut renewed = Instant::now();
    // What this member's record in etcd says of its ejections (registering put none).
    let mut reported = EjectionReport::default();
    let lost = |renewed: Instant| renewed.elapsed() >= Duration::from_secs(LEASE_TTL as u64);
    loop {
        tokio::time::sleep(TICK).await;
        if channel.is_none() {
            channel = client.lease_keep_alive(lease).await.ok();
        }
        let Some((keeper, responses)) = channel.as_mut() else {
            fleet.etcd_failed();
            if lost(renewed) {
                return;
            }
            continue;
        };
        let sent = std::time::Instant::now();
        let renewal = tokio::time::timeout(CALL_TIMEOUT, async {
            keeper.keep_alive().await?;
            responses.message().await
        })
        .await;
        match renewal {
            Ok(Ok(Some(response))) if response.ttl() > 0 => {
                renewed = Instant::now();
                fleet.migration.lease_renewed(sent, FENCE_AFTER);
            }
            Ok(Ok(Some(_))) => return,
            _ => {
                channel = None;
                fleet.etcd_failed();
                if lost(renewed) {
                    return;
                }
                continue;
            }
        }
        look(fleet).await;
        report_ejections(fleet, lease, &mut reported).await;
        if fleet.leading() {
            write_checkpoint(fleet, lease).await;
        }
    }
}

/// Put this member's record again, with its ejections, under `lease` when they changed
/// since the record last said (so the leader's next look at the members sees them).
async fn report_ejections(fleet: &Fleet, lease: i64, reported: &mut EjectionReport) {
    let report = fleet.migration.ejection_report();
    if *reported == report {
        return;
    }
    let record = MemberInfo {
        ejections: Some(report.clone()),
        ..fleet.me.clone()
    };
    match put_record(fleet, lease, &record).await {
        Ok(_) => *reported = report,
        Err(_) => fleet.etcd_failed(),
    }
}

/// Campaign for leadership with `lease` until elected, then lead: take over the last
/// checkpoint and start migrating.
async fn campaign(fleet: Arc<Fleet>, lease: i64) {
    let mut client = fleet.streams.clone();
    let election = fleet.key("election");
    loop {
        match client
            .campaign(election.as_str(), fleet.me.id.as_str(), lease)
            .await
        {
            Ok(_) => break,
            Err(error) => {
                fleet.etcd_failed();
                tracing::warn!(pool = %fleet.pool, %error, "campaign failed; retrying");
                tokio::time::sleep(TICK).await;
            }
        }
    }
    super::barrier::abort_leftover(&fleet).await;
    if super::barrier::sync_phase(&fleet).await.is_err() {
        fleet.etcd_failed();
    }
    let checkpoint = match client.get(fleet.key("checkpoint"), None).await {
        Ok(reply) => reply
            .kvs()
            .first()
            .and_then(|kv| kv.value_str().ok().map(str::to_string)),
        Err(_) => None,
    };
    match fleet.migration.lead(checkpoint.as_deref()).await {
        Ok(()) => {
            fleet.leading.store(true, Relaxed);
            fleet.counters.leading.set(1.0);
            tracing::info!(pool = %fleet.pool, member = %fleet.me.id, "elected leader of the fleet");
        }
        Err(reason) => {
            // Another member may fare better: give the election back.
            tracing::error!(pool = %fleet.pool, %reason, "elected, but cannot capture the source; resigning");
            let _ = client.lease_revoke(lease).await;
        }
    }
}

/// Read the members and the leader into the fleet's view.
async fn look(fleet: &Fleet) {
    let members = members(fleet).await;
    let leader = fleet.client.clone().leader(fleet.key("election")).await;
    let Ok(mut view) = fleet.view.lock() else {
        return;
    };
    view.reachable = members.is_ok();
    if let Ok(members) = members {
        view.members = members.into_iter().map(|(_, info)| info).collect();
        fleet.counters.members.set(view.members.len() as f64);
        if fleet.leading() {
            // Rule 18: an ejection at any member owes a verify pass, and a flip waits
            // while one is out.
            let reports = view
                .members
                .iter()
                .filter(|m| m.id != fleet.me.id)
                .map(|m| (m.id.clone(), m.ejections.clone().unwrap_or_default()))
                .collect();
            fleet.migration.member_ejections(reports);
        }
    }
    let now = leader.ok().and_then(|r| {
        r.kv()
            .and_then(|kv| kv.value_str().ok().map(str::to_string))
    });
    if now.is_some() && now != view.leader {
        fleet.counters.leader_changes.increment(1);
    }
    if now.is_some() || view.reachable {
        view.leader = now;
    }
}

/// Write the leader's checkpoint, only while its election key (held by `lease`) exists:
/// a former leader that lost its lease cannot overwrite its successor's.
async fn write_checkpoint(fleet: &Fleet, lease: i64) {
    let mut client = fleet.client.clone();
    let mine = format!("{}/{lease:x}", fleet.key("election"));
    let text = fleet.migration.checkpoint_text();
    let txn = Txn::new()
        .when([Compare::version(mine, CompareOp::Greater, 0)])
        .and_then([TxnOp::put(fleet.key("checkpoint"), text, None)]);
    if client.txn(txn).await.is_err() {
        fleet.etcd_failed();
    }
}
