//! Fleet-wide flips. The phase is one record in etcd (`phase`: the phase, an epoch, and a
//! hold while a flip is under way), changed only by transactions that compare its
//! revision; every member watches it.
//!
//! A flip is a barrier (rule 14): the leader writes a hold for the next epoch; every member
//! closes its gate, waits until every request it routed was answered, and acknowledges
//! (`acks/<member>`, under its lease, with its ejections). Once every live member has
//! acknowledged, no member sends anything to either side, and every acknowledged write is
//! applied on the old authority: the leader drains the capture up to the old side's
//! offsets, fences the new side's streams, takes its last look (rule 20: the mirrored
//! servers' restarts and evictions, and every member's ejections as acknowledged), writes
//! the decision (the new phase, or the old one if the look found something), and only
//! then flips itself;
//! members flip when they read the decision. A member that does not acknowledge in time
//! aborts the flip (everyone reopens on the old side), unless its lease expired first
//! (then it is no longer a member, and it has fenced itself, see `member`). The decision
//! is in etcd before anyone acts on it, so a leader that dies mid-flip leaves either a
//! hold (its successor aborts it) or a decision (everyone follows it).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::{Fleet, TICK};
use crate::migrate::{EjectionReport, FlipError, Flipped, Phase};

/// How long members get to acknowledge a hold: longer than a lease, so a member that
/// froze is out of the fleet (its lease expired) before the flip would give up.
const BARRIER_LIMIT: Duration = Duration::from_secs(super::LEASE_TTL as u64 + 2);
/// How often the leader looks for acknowledgements.
const ACK_POLL: Duration = Duration::from_millis(2);
/// How long the leader keeps finding out whether a phase record it wrote was taken, when
/// etcd's answer was lost ([`replace_known`]).
const LOST_ANSWER_LIMIT: Duration = Duration::from_secs(3);
/// Between two tries at that.
const LOST_ANSWER_RETRY: Duration = Duration::from_millis(100);

/// The phase record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PhaseRecord {
    /// The phase every member serves in.
    pub phase: String,
    /// Grows with every flip, done or given up.
    pub epoch: u64,
    /// A flip under way: every member holds its requests until the decision.
    #[serde(default)]
    pub hold: Option<Hold>,
}

/// A flip under way.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Hold {
    /// The phase it flips to.
    pub to: String,
    /// The epoch it will have.
    pub epoch: u64,
}

/// Read the phase record and its revision (`None`: not written yet).
async fn read(fleet: &Fleet) -> Result<Option<(PhaseRecord, i64)>, etcd_client::Error> {
    let mut client = fleet.client.clone();
    let reply = client.get(fleet.key("phase"), None).await?;
    Ok(reply
        .kvs()
        .first()
        .and_then(|kv| decode(kv).map(|r| (r, kv.mod_revision()))))
}

/// The phase record a key holds (`None`: not one).
fn decode(kv: &etcd_client::KeyValue) -> Option<PhaseRecord> {
    serde_json::from_slice(kv.value()).ok()
}

/// Replace the record read at `revision` with `record`; false if it changed meanwhile.
async fn replace(
    fleet: &Fleet,
    revision: i64,
    record: &PhaseRecord,
) -> Result<bool, etcd_client::Error> {
    let mut client = fleet.client.clone();
    let key = fleet.key("phase");
    let compare = if revision == 0 {
        Compare::create_revision(key.clone(), CompareOp::Equal, 0)
    } else {
        Compare::mod_revision(key.clone(), CompareOp::Equal, revision)
    };
    let text = serde_json::to_string(record).unwrap_or_default();
    let txn = Txn::new()
        .when([compare])
        .and_then([TxnOp::put(key, text, None)]);
    Ok(client.txn(txn).await?.succeeded())
}

/// [`replace`], with its outcome found out when etcd's answer is lost: a call that timed
/// out under load may still have been applied. Taken as not written, a hold that was
/// would leave every member held with no decision to come (and the next flip refused as
/// "under way"), and a decision that was would move the members to a phase the leader is
/// not in. So a call that failed is made again with the same compare (if the first lands
/// meanwhile, one of the two fails on the revision), and a compare that failed reads the
/// record back: the write was taken if the record is the one written (only the leader
/// writes records, each epoch's once). `Err` if etcd did not tell within
/// [`LOST_ANSWER_LIMIT`]: the outcome is then unknown.
async fn replace_known(
    fleet: &Fleet,
    revision: i64,
    record: &PhaseRecord,
) -> Result<bool, etcd_client::Error> {
    let deadline = Instant::now() + LOST_ANSWER_LIMIT;
    let mut first = true;
    loop {
        let mut answer = replace(fleet, revision, record).await;
        if std::mem::take(&mut first) && *LOSE_ANSWERS {
            answer = Err(etcd_client::Error::IoError(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "answer lost (CUTOVER_TEST_LOSE_ETCD_ANSWERS)",
            )));
        }
        let error = match answer {
            Ok(true) => return Ok(true),
            Ok(false) => match read(fleet).await {
                Ok(now) => return Ok(now.is_some_and(|(now, _)| now == *record)),
                Err(error) => error,
            },
            Err(error) if *BREAK_LOST_ANSWERS => return Err(error),
            Err(error) => error,
        };
        fleet.etcd_failed();
        tracing::warn!(pool = %fleet.pool, epoch = record.epoch, %error, "etcd did not answer a phase record's write; finding out whether it was taken");
        if Instant::now() >= deadline {
            return Err(error);
        }
        tokio::time::sleep(LOST_ANSWER_RETRY).await;
    }
}

/// For tests only: `CUTOVER_TEST_LOSE_ETCD_ANSWERS=1` loses etcd's answer to the first
/// try of every phase record write the leader makes in a flip (the write is applied), as
/// a call that times out under load may be.
static LOSE_ANSWERS: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
    std::env::var("CUTOVER_TEST_LOSE_ETCD_ANSWERS").is_ok_and(|v| v == "1")
});

/// For tests only: `CUTOVER_TEST_BREAK_LOST_ANSWERS=1` takes a write whose answer was lost
/// as not made, as before [`replace_known`], so the fleet test can show what that leaves.
static BREAK_LOST_ANSWERS: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
    std::env::var("CUTOVER_TEST_BREAK_LOST_ANSWERS").is_ok_and(|v| v == "1")
});

/// At join: write the record with this member's phase if there is none yet.
pub(super) async fn init(fleet: &Fleet) -> Result<(), etcd_client::Error> {
    if read(fleet).await?.is_none() {
        let record = PhaseRecord {
            phase: fleet.migration.phase().name().to_string(),
            epoch: 0,
            hold: None,
        };
        replace(fleet, 0, &record).await?;
    }
    Ok(())
}

/// Take the phase the record says (a member joining, or coming back after losing its
/// lease, must serve in the fleet's phase before it sends anything).
pub(super) async fn sync_phase(fleet: &Fleet) -> Result<(), etcd_client::Error> {
    if let Some((record, _)) = read(fleet).await?
        && let Some(phase) = Phase::parse(&record.phase)
        && fleet.migration.phase() != phase
    {
        tracing::info!(pool = %fleet.pool, phase = phase.name(), "taking the fleet's phase");
        fleet.migration.adopt_phase(phase);
    }
    Ok(())
}

/// A new leader finds a flip its predecessor began and never decided: give it up (the
/// members release on the old side).
pub(super) async fn abort_leftover(fleet: &Fleet) {
    abort_hold(fleet, None).await;
}

/// Give up the hold the record holds, if any (only epoch `only`'s, when given: this
/// leader's own flip, left undecided when etcd did not say whether it took a write, and
/// not a later leader's); the members release on the old side.
async fn abort_hold(fleet: &Fleet, only: Option<u64>) {
    if let Ok(Some((record, revision))) = read(fleet).await
        && let Some(hold) = &record.hold
        && only.is_none_or(|epoch| epoch == hold.epoch)
    {
        let aborted = PhaseRecord {
            phase: record.phase.clone(),
            epoch: hold.epoch,
            hold: None,
        };
        if replace(fleet, revision, &aborted).await.unwrap_or(false) {
            tracing::warn!(pool = %fleet.pool, epoch = hold.epoch, "a flip left undecided is given up");
        }
    }
}

/// Every member, for as long as the process runs: follow the phase record: the record as
/// it is, then every change after that revision, each once and in order (an older record
/// applied after a newer one could reopen a member's gate in the middle of a flip).
pub(super) async fn follow(fleet: Arc<Fleet>) {
    let mut held: Option<(u64, Instant)> = None;
    loop {
        let mut client = fleet.client.clone();
        let now = match client.get(fleet.key("phase"), None).await {
            Ok(reply) => reply,
            Err(_) => {
                fleet.etcd_failed();
                tokio::time::sleep(TICK).await;
                continue;
            }
        };
        let revision = now.header().map_or(0, |h| h.revision());
        if let Some(record) = now.kvs().first().and_then(decode) {
            apply(&fleet, &record, &mut held).await;
        }
        let mut streams = fleet.streams.clone();
        let from = etcd_client::WatchOptions::new().with_start_revision(revision + 1);
        let Ok(mut stream) = streams.watch(fleet.key("phase"), Some(from)).await else {
            fleet.etcd_failed();
            tokio::time::sleep(TICK).await;
            continue;
        };
        while let Ok(Some(reply)) = stream.message().await {
            for event in reply.events() {
                let Some(record) = event.kv().and_then(decode) else {
                    continue;
                };
                apply(&fleet, &record, &mut held).await;
            }
        }
        fleet.etcd_failed();
        tokio::time::sleep(TICK).await;
    }
}

/// Act on the record: hold and acknowledge a new hold; take a decided phase and release.
/// `held` is the epoch held for and since when.
async fn apply(fleet: &Fleet, record: &PhaseRecord, held: &mut Option<(u64, Instant)>) {
    let migration = &fleet.migration;
    match &record.hold {
        Some(hold) if held.is_none_or(|(epoch, _)| epoch < hold.epoch) => {
            let started = Instant::now();
            if migration.hold(BARRIER_LIMIT).await.is_ok() {
                *held = Some((hold.epoch, started));
                acknowledge(fleet, hold.epoch).await;
            }
        }
        Some(_) => {}
        None => {
            // The leader acts on its own decisions itself (after writing them).
            let own = fleet.deciding.load(Relaxed) == record.epoch;
            if let Some(phase) = Phase::parse(&record.phase)
                && !own
                && (held.is_some() || migration.phase() != phase)
            {
                migration.adopt_phase(phase);
            }
            if let Some((epoch, since)) = held.take() {
                report_pause(fleet, epoch, since.elapsed()).await;
            }
        }
    }
}

/// A member's acknowledgement of a hold (`acks/<member>`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Ack {
    /// The epoch it holds for.
    epoch: u64,
    /// Its ejections, read once it held (rule 20): with no request let through, none can
    /// follow before the decision, so the leader's last look sees every member's last.
    #[serde(default)]
    ejections: EjectionReport,
}

impl Ack {
    /// Read an acknowledgement (a bare epoch, as members before rule 20 wrote, has no
    /// ejections).
    fn parse(text: &str) -> Option<Ack> {
        serde_json::from_str(text).ok().or_else(|| {
            Some(Ack {
                epoch: text.trim().parse().ok()?,
                ejections: EjectionReport::default(),
            })
        })
    }
}

/// Say this member holds for `epoch`, with its ejections.
async fn acknowledge(fleet: &Fleet, epoch: u64) {
    let mut client = fleet.client.clone();
    let lease = fleet.lease.load(Relaxed);
    let key = fleet.key(&format!("acks/{}", fleet.me.id));
    let ack = Ack {
        epoch,
        ejections: fleet.migration.ejection_report(),
    };
    let text = serde_json::to_string(&ack).unwrap_or_else(|_| epoch.to_string());
    if client
        .put(key, text, Some(PutOptions::new().with_lease(lease)))
        .await
        .is_err()
    {
        fleet.etcd_failed();
    }
}

/// Say how long this member held for `epoch` (the leader takes the slowest).
async fn report_pause(fleet: &Fleet, epoch: u64, pause: Duration) {
    let mut client = fleet.client.clone();
    let lease = fleet.lease.load(Relaxed);
    let key = fleet.key(&format!("pauses/{}", fleet.me.id));
    let value = format!("{epoch} {}", pause.as_micros());
    let _ = client
        .put(key, value, Some(PutOptions::new().with_lease(lease)))
        .await;
}

/// The leader's flip to `to`: the barrier, then the decision. Refused on a follower.
pub async fn flip(fleet: &Arc<Fleet>, to: Phase, force: bool) -> Result<Flipped, FlipError> {
    if !fleet.leading() {
        let leader = fleet
            .leader_admin()
            .unwrap_or_else(|| "none elected yet".into());
        return Err(FlipError::NotReady(vec![format!(
            "this member follows; flips run on the fleet's leader (admin {leader})"
        )]));
    }
    let migration = &fleet.migration;
    let _flipping = migration.flips.lock.lock().await;
    let from = migration.check_flip(to, force).await?;
    let unreachable = |e: etcd_client::Error| FlipError::NotReady(vec![format!("etcd: {e}")]);
    let (record, revision) = read(fleet)
        .await
        .map_err(unreachable)?
        .ok_or_else(|| FlipError::NotReady(vec!["no phase record in etcd".into()]))?;
    if record.hold.is_some() {
        return Err(FlipError::NotReady(vec![
            "another flip is under way".into(),
        ]));
    }
    let epoch = record.epoch + 1;
    let next = migration.prepare_flip(to).await;
    let held = PhaseRecord {
        hold: Some(Hold {
            to: to.name().to_string(),
            epoch,
        }),
        ..record.clone()
    };
    let started = Instant::now();
    match replace_known(fleet, revision, &held).await {
        Ok(true) => {}
        Ok(false) => {
            migration.abandon_flip(next);
            return Err(FlipError::NotReady(vec![
                "the phase record changed under this flip".into(),
            ]));
        }
        Err(error) => {
            // Perhaps taken after all: members that hold for it are released.
            abort_hold(fleet, Some(epoch)).await;
            migration.abandon_flip(next);
            return Err(FlipError::NotReady(vec![format!(
                "etcd did not say whether it took the flip's hold ({error}); given up"
            )]));
        }
    }
    let held_revision = read(fleet).await.ok().flatten().map_or(0, |(_, r)| r);
    let (missing, live, reports) = wait_for_acks(fleet, epoch, started + BARRIER_LIMIT).await;
    if missing.is_empty() && !*BREAK_DEPARTED {
        // Rule 15: a member that left without holding cannot write to the old side late.
        let closed = migration.disconnect_departed(from, &live).await;
        fleet.counters.departed_closed.increment(closed as u64);
    }
    let settled = missing.is_empty() && migration.settle_flip(next, started).await;
    // Rule 20: with every member holding, the last look, taking each member's ejections
    // from its acknowledgement.
    let late = if settled {
        migration.member_ejections(reports);
        migration.last_look(to, force).await.err()
    } else {
        None
    };
    let settled = settled && late.is_none();
    let decision = PhaseRecord {
        phase: if settled { to.name() } else { from.name() }.to_string(),
        epoch,
        hold: None,
    };
    fleet.deciding.store(epoch, Relaxed);
    let written = match replace_known(fleet, held_revision, &decision).await {
        Ok(written) => written,
        Err(_) => {
            // Perhaps taken after all: then this member follows it when it reads it, as
            // the others do, rather than ignore it as its own.
            fleet.deciding.store(0, Relaxed);
            false
        }
    };
    if !written {
        // The hold stays unless given up (if the decision lands after all, whichever
        // write lands first, the other fails on the revision).
        abort_hold(fleet, Some(epoch)).await;
    }
    if !settled || !written {
        migration.abandon_flip(next);
        fleet.counters.barrier_aborts.increment(1);
        if let Some(late) = late {
            return Err(late);
        }
        let reason = if missing.is_empty() {
            "the flip could not settle (streams not drained, or etcd refused the decision)"
                .to_string()
        } else {
            format!("members did not hold in time: {}", missing.join(", "))
        };
        tracing::warn!(pool = %fleet.pool, epoch, %reason, "fleet flip given up; every member reopens on the old side");
        return Err(FlipError::NotReady(vec![reason]));
    }
    let flipped = migration.commit_flip(from, to, next, started, force);
    fleet
        .counters
        .barrier_wait
        .record(started.elapsed().as_secs_f64());
    if let Some(slowest) = slowest_pause(fleet, epoch).await {
        fleet.counters.pause.record(slowest.as_secs_f64());
        fleet
            .last_pause_us
            .store(slowest.as_micros() as u64, Relaxed);
    }
    Ok(flipped)
}

/// For tests only: `CUTOVER_TEST_BREAK_BARRIER=1` makes the leader decide without waiting
/// for the members to hold (breaking rule 14), so the fleet test can show that writes
/// through the other members are then lost or doubled.
static BREAK_BARRIER: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
    std::env::var("CUTOVER_TEST_BREAK_BARRIER").is_ok_and(|v| v == "1")
});

/// For tests only: `CUTOVER_TEST_BREAK_DEPARTED=1` skips closing departed members'
/// connections before a flip, so the fleet test can show they are closed otherwise.
static BREAK_DEPARTED: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
    std::env::var("CUTOVER_TEST_BREAK_DEPARTED").is_ok_and(|v| v == "1")
});

/// What the leader waits for in a flip: the members that did not acknowledge (empty: all
/// did), the live members last seen, and the ejections the other members acknowledged
/// with.
type Acks = (Vec<String>, Vec<String>, BTreeMap<String, EjectionReport>);

/// Wait until every live member acknowledged `epoch`, at most until `deadline`.
async fn wait_for_acks(fleet: &Fleet, epoch: u64, deadline: Instant) -> Acks {
    if *BREAK_BARRIER {
        return (Vec::new(), vec![fleet.me.id.clone()], BTreeMap::new());
    }
    let mut client = fleet.client.clone();
    let prefix = Some(GetOptions::new().with_prefix());
    loop {
        let members = client.get(fleet.key("members/"), prefix.clone()).await;
        let acks = client.get(fleet.key("acks/"), prefix.clone()).await;
        let mut missing = Vec::new();
        let mut live = Vec::new();
        if let (Ok(members), Ok(acks)) = (members, acks) {
            let acked: BTreeMap<String, EjectionReport> = acks
                .kvs()
                .iter()
                .filter_map(|kv| {
                    let ack = Ack::parse(kv.value_str().ok()?)?;
                    (ack.epoch >= epoch).then(|| (member_of(kv), ack.ejections))
                })
                .collect();
            for kv in members.kvs() {
                let id = member_of(kv);
                if !acked.contains_key(&id) {
                    missing.push(id.clone());
                }
                live.push(id);
            }
            if missing.is_empty() {
                let others = acked
                    .into_iter()
                    .filter(|(id, _)| *id != fleet.me.id)
                    .collect();
                return (missing, live, others);
            }
        } else {
            missing.push("(etcd unreachable)".into());
        }
        if Instant::now() >= deadline {
            return (missing, live, BTreeMap::new());
        }
        tokio::time::sleep(ACK_POLL).await;
    }
}

/// The member a per-member key (`members/<id>`, `acks/<id>`) belongs to.
fn member_of(kv: &etcd_client::KeyValue) -> String {
    let key = kv.key_str().unwrap_or_default();
    key.rsplit('/').next().unwrap_or(key).to_string()
}

/// The longest hold any member reported for `epoch` (waiting at most a second for every
/// live member's report).
async fn slowest_pause(fleet: &Fleet, epoch: u64) -> Option<Duration> {
    let mut client = fleet.client.clone();
    let prefix = Some(GetOptions::new().with_prefix());
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let members = client
            .get(fleet.key("members/"), prefix.clone())
            .await
            .ok()?;
        let pauses = client
            .get(fleet.key("pauses/"), prefix.clone())
            .await
            .ok()?;
        let reported: Vec<u64> = pauses
            .kvs()
            .iter()
            .filter_map(|kv| {
                let text = kv.value_str().ok()?;
                let (e, us) = text.split_once(' ')?;
                (e.parse::<u64>().ok()? == epoch).then(|| us.parse().ok())?
            })
            .collect();
        if reported.len() >= members.kvs().len() || Instant::now() >= deadline {
            return reported.into_iter().max().map(Duration::from_micros);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_acknowledgement_carries_its_ejections_and_a_bare_epoch_still_reads() {
        let ack = Ack {
            epoch: 7,
            ejections: EjectionReport {
                count: 2,
                out: vec!["source server s1".into()],
            },
        };
        let text = serde_json::to_string(&ack).expect("JSON");
        assert_eq!(Ack::parse(&text), Some(ack));
        let bare = Ack::parse("7").expect("a bare epoch");
        assert_eq!((bare.epoch, bare.ejections), (7, EjectionReport::default()));
        assert_eq!(Ack::parse("not an ack"), None);
    }
}
