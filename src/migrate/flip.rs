//! Cutover, rollback and finalize: the flips of authority between source and target.
//!
//! A flip closes the gate (new requests wait), waits until no request is being routed, no
//! mirrored write is in flight and every lane is empty, moves authority, tells the lanes
//! both sides are equal, and opens the gate. The time the gate was closed is the pause
//! clients saw; it is measured and exported.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::time::Instant;

use super::capture::Side;
use super::direct_clients::client_field;
use super::phase::Phase;
use super::restarts::Look;
use super::{Migration, Owed};
use crate::config::Capture;

/// Longest a flip waits for in-flight requests and lanes before giving up (the gate then
/// opens again and nothing changes).
const DRAIN_LIMIT: Duration = Duration::from_secs(5);
/// Longest a cutover waits for a moment when the lanes are empty before refusing.
const IDLE_WAIT: Duration = Duration::from_secs(2);
/// Longest a flip's last look (rule 20) may hold requests: a mirrored server that does
/// not answer `INFO` within it gives the flip up.
const LAST_LOOK_LIMIT: Duration = Duration::from_secs(2);
/// Spin (yielding) this long before sleeping between drain checks: most flips finish
/// within it, and a timer tick (1 ms) would dominate the pause.
const SPIN: Duration = Duration::from_millis(3);

/// Why a flip did not happen. Each message says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum FlipError {
    /// The migration is not ready; every reason is listed.
    #[error("not ready: {}", .0.join("; "))]
    NotReady(Vec<String>),
    /// The call makes no sense in the current phase.
    #[error("cannot {action} in phase '{phase}'{hint}")]
    WrongPhase {
        /// What was asked.
        action: &'static str,
        /// The current phase's name.
        phase: &'static str,
        /// What would work instead.
        hint: &'static str,
    },
    /// In-flight requests or lanes did not finish in time; nothing changed.
    #[error(
        "requests in flight or mirror events did not finish within {0:?} (a slow or dead backend?); nothing changed, try again"
    )]
    Busy(Duration),
    /// Servers of the side clients use did not answer what was sent to them before the
    /// flip within its limit; nothing changed.
    #[error(
        "server(s) {} of the side clients use did not answer what was sent to them before the flip within {limit:?} (hung?); nothing changed and clients were released; try again once they answer",
        .servers.join(", ")
    )]
    Unanswered {
        /// The servers that had not answered.
        servers: Vec<String>,
        /// The flip's limit (or a fleet barrier's).
        limit: Duration,
    },
}

/// A flip that happened.
#[derive(Debug, Clone, Copy)]
pub struct Flipped {
    /// The phase before.
    pub from: Phase,
    /// The phase now.
    pub to: Phase,
    /// How long new requests were held.
    pub pause: Duration,
    /// Whether the readiness checks were overridden.
    pub forced: bool,
}

impl Migration {
    /// What stands between the migration and a safe cutover (empty: ready), waiting a
    /// little for a moment when the lanes are empty.
    pub async fn cutover_blockers(self: &Arc<Self>) -> Vec<String> {
        let unread = self.look_before_a_flip().await;
        let idle = self.wait_lanes_idle(IDLE_WAIT).await;
        self.refresh_direct_clients().await;
        self.cutover_reasons(idle, unread)
    }

    /// The cutover's blockers once looked: the readiness report (with the lanes found
    /// `idle` or not), then the mirrored servers whose `run_id` the look could not read.
    fn cutover_reasons(&self, idle: bool, unread: Vec<String>) -> Vec<String> {
        let mut reasons = self.readiness(idle);
        reasons.extend(unread);
        reasons
    }

    /// Look now, not after the flip, at what the periodic looks would find later: the
    /// servers' restarts (rule 17) and evictions (rule 19), the mirrored side's in full
    /// and the side clients use as far as it answers within half a second, and the ejections
    /// on the side clients use (rule 18). The mirrored servers whose `run_id` could not be
    /// read, with why.
    async fn look_before_a_flip(self: &Arc<Self>) -> Vec<String> {
        // Side by side: under the gate (rule 20) this look is part of the pause.
        let (unread, ()) = tokio::join!(
            self.watch_restarts(Look::Now),
            self.watch_evictions(Look::Now)
        );
        self.look_at_ejections();
        unread
    }

    /// Rule 20: the flip's last look, taken under the gate once every request routed
    /// before it is answered (in a fleet, once every member holds). The checks before ran
    /// with the gate open, for seconds (waiting for the lanes to empty, listing the source's
    /// clients, under capture a full sync of each new authority's server): a server
    /// that restarted or evicted meanwhile, or an ejection on the side clients use,
    /// would be found only after the flip. So look again, now that no request reaches
    /// either side, and give the flip up (`Err`, every reason) if anything stands in the
    /// way; `Ok` at once for a forced flip or a finalize. The look must finish within
    /// 2 s: a hung mirrored server would otherwise hold every client.
    pub async fn last_look(self: &Arc<Self>, to: Phase, force: bool) -> Result<(), FlipError> {
        if force || to == Phase::Finalized || *SKIP_LAST_LOOK {
            return Ok(());
        }
        let started = Instant::now();
        let look = async {
            if to == Phase::Cutover {
                // The hold waited for every lane to empty before this look.
                self.cutover_reasons(true, self.look_before_a_flip().await)
            } else {
                self.rollback_blockers().await
            }
        };
        let reasons = tokio::time::timeout(LAST_LOOK_LIMIT, look)
            .await
            .unwrap_or_else(|_| {
                vec![format!(
                    "the last look at the mirrored servers (their run_id and evicted_keys) did not finish within {LAST_LOOK_LIMIT:?}, with requests held; nothing changed, try again"
                )]
            });
        self.counters
            .last_look
            .record(started.elapsed().as_secs_f64());
        if reasons.is_empty() {
            return Ok(());
        }
        self.flips.given_up_late.fetch_add(1, Relaxed);
        self.counters.given_up_late.increment(1);
        tracing::warn!(pool = self.source.name(), to = to.name(), reasons = %reasons.join("; "), "flip given up at its last look, under the gate: something changed since its checks; nothing changed");
        super::lock(&self.flips.last_given_up).clone_from(&reasons);
        Err(FlipError::NotReady(reasons))
    }

    /// What stands between the migration and a rollback now: dirty keys the source would
    /// miss; a source server that restarted after the cutover until every key is copied
    /// back to it (rule 17), or one whose `run_id` cannot be read; an ejection now; and
    /// every cause since the cutover for which a verify pass is owed (the source may then
    /// lack writes, or hold keys the app no longer sees, which a rollback would serve).
    async fn rollback_blockers(self: &Arc<Self>) -> Vec<String> {
        let mut reasons = self.look_before_a_flip().await;
        let (_, dirty) = self.backlog();
        if dirty > 0 {
            reasons.push(format!(
                "{dirty} dirty keys wait to be copied to the source; wait, or force"
            ));
        }
        reasons.extend(self.restarts.blocker());
        reasons.extend(self.ejections.blocker());
        reasons.extend(self.owed_verify());
        reasons
    }

    /// Each cause for which a verify pass is owed (one that starts after it), in words,
    /// with what to do: each says the two sides may differ where no lane saw it, so a
    /// flip either way waits for it.
    fn owed_verify(&self) -> Vec<String> {
        let owed = Owed::ALL
            .into_iter()
            .filter(|&cause| self.dirty.owes(cause));
        owed.map(|cause| {
            let what = match cause {
                Owed::StreamGap => "part of the replication stream of a server clients use was lost (or a replicated command's keys could not be told)".to_string(),
                Owed::Takeover => "this member took over from a fleet leader, whose dirty keys died with it".to_string(),
                Owed::DamagedFile => format!("the dirty-key file {} ended in a damaged record (a crash or a full disk), now cut off", self.dirty.path.display()),
                Owed::Restart => format!("{}; the two sides may differ (what it reloaded may hold keys since deleted, or lack keys the other side holds)", self.restarts.restarted_text()),
                Owed::Ejection => "a server of the side clients use was ejected (auto_eject_hosts): their writes for its keys went to the other servers meanwhile, and it came back with what it held before".to_string(),
                Owed::Eviction => format!("{} (its maxmemory is full), so it lacks keys; raise its maxmemory or add servers", self.evictions.evicted_text()),
                Owed::EvictionNotFollowed => format!("{} (its maxmemory is full) that the other side may still hold: with capture: proxy nothing says which keys went (capture: replication carries evictions as deletes)", self.evictions.not_followed_text()),
            };
            format!("{what}; run a verify pass with repair (cutover ctl verify --repair) that starts now")
        })
        .collect()
    }

    /// What stands between the migration and a safe cutover now; `lanes_idle` says
    /// whether the lanes were found empty.
    pub fn readiness(&self, lanes_idle: bool) -> Vec<String> {
        let mut reasons = self.direct_seen.lock().map_or(Vec::new(), |s| s.clone());
        if !self.backfill.done.load(Relaxed) {
            reasons.push(format!(
                "the backfill is not complete ({} of about {} keys scanned); wait for it (cutover ctl status)",
                self.totals.scanned.load(Relaxed),
                self.backfill.total_keys.load(Relaxed)
            ));
        }
        let (_, dirty) = self.backlog();
        if dirty > 0 {
            use super::retries::RetryReason;
            let why = [RetryReason::CopyFailed, RetryReason::CopyUnavailable]
                .into_iter()
                .find_map(|reason| self.counters.retries.last_detail(reason))
                .map(|detail| format!(" (the last copy that failed: {detail})"))
                .unwrap_or_default();
            reasons.push(format!(
                "{dirty} dirty keys wait to be copied again{why}; wait, and check the target's health"
            ));
        }
        if !lanes_idle {
            reasons.push(format!(
                "the lanes did not empty ({} events queued); the target is not keeping up",
                self.backlog().0
            ));
        }
        reasons.extend(self.restarts.blocker());
        reasons.extend(self.ejections.blocker());
        reasons.extend(self.owed_verify());
        if self.dirty.needs_verify() && self.dirty.unpersisted.load(Relaxed) > 0 {
            reasons.push(format!(
                "{} dirty keys could not be written to the dirty-key file {} (kept in memory, {} past its bound); fix the disk, then run a verify pass (cutover ctl verify --repair) that starts now",
                self.dirty.unpersisted.load(Relaxed),
                self.dirty.path.display(),
                self.dirty.overflowed.load(Relaxed),
            ));
        }
        match self.verify.last() {
            _ if self.verify.running() => {
                reasons.push("a verify pass is running; wait for its result".into());
            }
            None => reasons.push(
                "no verify pass has run yet; run one (cutover ctl verify, or POST /verify)".into(),
            ),
            Some(report) if report.differences() > 0 => reasons.push(format!(
                "the last verify found {} differences; run verify again (with repair) until it finds none",
                report.differences()
            )),
            Some(_) => {}
        }
        reasons
    }

    /// Make the target authoritative. Refused unless ready, or `force`.
    pub async fn cutover(self: &Arc<Self>, force: bool) -> Result<Flipped, FlipError> {
        self.flip_to(Phase::Cutover, force).await
    }

    /// Make the source authoritative again. Refused while dirty keys wait (the source would
    /// miss them), unless `force`.
    pub async fn rollback(self: &Arc<Self>, force: bool) -> Result<Flipped, FlipError> {
        self.flip_to(Phase::Migrating, force).await
    }

    /// Stop mirroring to the source: the proxy serves the target pool alone from now on.
    pub async fn finalize(self: &Arc<Self>) -> Result<Flipped, FlipError> {
        self.flip_to(Phase::Finalized, false).await
    }

    /// Check, then flip to `to` (one flip at a time).
    async fn flip_to(self: &Arc<Self>, to: Phase, force: bool) -> Result<Flipped, FlipError> {
        let _flipping = self.flips.lock.lock().await;
        let from = self.check_flip(to, force).await?;
        let next = self.prepare_flip(to).await;
        let started = Instant::now();
        if let Err(busy) = self.hold(DRAIN_LIMIT).await {
            self.abandon_flip(next);
            return Err(busy);
        }
        if !self.settle_flip(next, started).await {
            self.abandon_flip(next);
            return Err(FlipError::Busy(DRAIN_LIMIT));
        }
        if let Err(late) = self.last_look(to, force).await {
            self.abandon_flip(next);
            return Err(late);
        }
        Ok(self.commit_flip(from, to, next, started, force))
    }

    /// Whether the migration may flip to `to` now (the phase it flips from), with every
    /// reason it may not; `force` overrides the readiness checks, not the phase.
    pub async fn check_flip(self: &Arc<Self>, to: Phase, force: bool) -> Result<Phase, FlipError> {
        let phase = self.phase();
        match to {
            Phase::Cutover if phase != Phase::Migrating => {
                Err(self.wrong_phase("cut over", phase, " (rollback returns to 'migrating')"))
            }
            Phase::Migrating if phase != Phase::Cutover => Err(self.wrong_phase(
                "roll back",
                phase,
                " (only a cutover can be rolled back; after finalize the source is no longer mirrored)",
            )),
            Phase::Finalized if phase != Phase::Cutover => {
                Err(self.wrong_phase("finalize", phase, " (cut over first)"))
            }
            Phase::Cutover => {
                let blockers = self.cutover_blockers().await;
                self.unless_blocked(phase, blockers, force, "cutover")
            }
            Phase::Migrating => {
                let blockers = self.rollback_blockers().await;
                self.unless_blocked(phase, blockers, force, "rollback")
            }
            Phase::Finalized => Ok(phase),
        }
    }

    /// `Ok(phase)` when nothing blocks the `flip`, or `force` overrides what does (logged
    /// as a warning); otherwise the refusal, with every reason.
    fn unless_blocked(
        &self,
        phase: Phase,
        blockers: Vec<String>,
        force: bool,
        flip: &'static str,
    ) -> Result<Phase, FlipError> {
        if blockers.is_empty() {
            return Ok(phase);
        }
        if !force {
            self.counters.refusals.increment(1);
            return Err(FlipError::NotReady(blockers));
        }
        tracing::warn!(pool = self.source.name(), reasons = %blockers.join("; "), "{flip} forced past its checks");
        Ok(phase)
    }

    /// A `WrongPhase` error.
    fn wrong_phase(&self, action: &'static str, phase: Phase, hint: &'static str) -> FlipError {
        self.counters.refusals.increment(1);
        FlipError::WrongPhase {
            action,
            phase: phase.name(),
            hint,
        }
    }

    /// Before the gate closes: under capture, open the new authority's streams (a full
    /// sync can take a while) and let them stand by (rule 13); the side to follow after
    /// the flip, if any.
    pub async fn prepare_flip(self: &Arc<Self>, to: Phase) -> Option<Side> {
        let next = Side::authority(to)?;
        if self.settings.capture == Capture::Proxy {
            return None;
        }
        match super::capture::stand_by(self, next).await {
            Ok(()) => Some(next),
            Err(reason) => {
                tracing::warn!(pool = self.source.name(), side = next.name(), %reason, "the new authority's servers refuse replication: after the flip the proxy mirrors writes instead");
                None
            }
        }
    }

    /// Close the gate and wait until every request routed before it was answered (so
    /// every acknowledged write is applied on the authoritative side), no mirror hook is
    /// alive and the lanes are empty; `Err` (the gate open again) if that takes longer
    /// than `limit` (the flip's, or a fleet barrier's), with the servers of the side
    /// clients use that had not answered by then. Such a server that hangs thus gives the
    /// flip up at the limit, rather than holding every client of every server until it
    /// answers.
    pub async fn hold(&self, limit: Duration) -> Result<(), FlipError> {
        let deadline = Instant::now() + limit;
        self.flips.gate.close();
        if !self.wait_quiet(deadline).await {
            self.flips.gate.open();
            return Err(FlipError::Busy(limit));
        }
        let authority = self.authority();
        let late = authority.behind_every_request_until(deadline).await;
        if late.is_empty() {
            return Ok(());
        }
        self.flips.gate.open();
        let servers: Vec<String> = late
            .iter()
            .map(|&server| authority.servers[server].name.clone())
            .collect();
        tracing::warn!(
            pool = self.source.name(),
            servers = %servers.join(", "),
            "servers of the side clients use did not answer what was sent to them before the flip (hung?); flip abandoned, clients released"
        );
        Err(FlipError::Unanswered { servers, limit })
    }

    /// Open the gate again without flipping (a flip given up).
    pub fn release(&self) {
        self.flips.gate.open();
    }

    /// With the gate closed (here and, in a fleet, on every member): under capture, drain
    /// the streams followed now (rule 11), then read the fences of the side to follow
    /// (rule 13). False if that does not happen within the flip's time limit from
    /// `started`.
    pub async fn settle_flip(&self, next: Option<Side>, started: Instant) -> bool {
        let deadline = started + DRAIN_LIMIT;
        (!self.capturing() || self.drain_capture(deadline).await)
            && match next {
                Some(side) => self.fence(side).await,
                None => true,
            }
    }

    /// Before a fleet's flip drains the side that is authoritative now (`from`'s): close
    /// every connection to its servers that belongs to a fleet member not in `live`
    /// (rule 15). Such a member's lease expired, and it may be stopped with requests
    /// queued, or between its last fence check and a write; killed here, whatever it
    /// sends later meets a closed connection instead of the old authority, and whatever
    /// it sent before reached the server before the drain reads its offsets. Returns how
    /// many were closed.
    pub async fn disconnect_departed(&self, from: Phase, live: &[String]) -> usize {
        let Some(side) = super::capture::Side::authority(from) else {
            return 0;
        };
        let pool = side.copy_pool(self);
        let mut closed = 0;
        for server in 0..pool.servers.len() {
            let Ok(list) = pool
                .call(
                    server,
                    0,
                    &[b"CLIENT".as_slice(), b"LIST", b"TYPE", b"normal"],
                )
                .await
            else {
                continue;
            };
            let text = String::from_utf8_lossy(&list);
            for line in text.lines() {
                let (Some(id), Some(name)) = (client_field(line, "id"), client_field(line, "name"))
                else {
                    continue;
                };
                let Some(member) = crate::upstream::connection_member(name) else {
                    continue;
                };
                if live.iter().any(|m| m == member) {
                    continue;
                }
                let killed = pool
                    .call(
                        server,
                        0,
                        &[b"CLIENT".as_slice(), b"KILL", b"ID", id.as_bytes()],
                    )
                    .await;
                if matches!(killed.as_deref(), Ok(b":1\r\n")) {
                    closed += 1;
                    tracing::warn!(pool = self.source.name(), server = %pool.servers[server].name, member, "closed a departed fleet member's connection before the flip");
                }
            }
        }
        closed
    }

    /// Give up a flip: stop the streams that stood by, open the gate.
    pub fn abandon_flip(&self, next: Option<Side>) {
        if let Some(side) = next {
            super::capture::stand_down(self, side);
        }
        self.flips.gate.open();
        self.counters.refusals.increment(1);
    }

    /// Move authority to `to` (the capture follows `next`, or stops), open the gate, and
    /// count the pause since `started`.
    pub fn commit_flip(
        &self,
        from: Phase,
        to: Phase,
        next: Option<Side>,
        started: Instant,
        forced: bool,
    ) -> Flipped {
        match next {
            Some(side) => super::capture::switch(self, side),
            None => self.capture.turn_off(),
        }
        self.adopt_phase(to);
        let pause = started.elapsed();
        self.flips
            .last_pause_us
            .store(pause.as_micros() as u64, Relaxed);
        self.counters.pause.record(pause.as_secs_f64());
        tracing::info!(
            pool = self.source.name(),
            from = from.name(),
            to = to.name(),
            pause_us = pause.as_micros() as u64,
            forced,
            "authority flipped"
        );
        Flipped {
            from,
            to,
            pause,
            forced,
        }
    }

    /// Take phase `to` (a fleet member following its leader's flip, or this proxy's own),
    /// and open the gate. Both sides are equal now; the lanes' known-copied sets stay
    /// valid whichever side is authoritative: a key they know (and its TTL flag) is equal
    /// on both sides.
    pub fn adopt_phase(&self, to: Phase) {
        if self.phase() != to {
            self.flips.set_phase(to);
            self.counters.flips[Phase::ALL.iter().position(|p| *p == to).unwrap_or(0)].increment(1);
            self.counters.set_phase(to);
            self.save_state(false);
        }
        self.apply_ejection(to);
        if to == Phase::Finalized {
            self.send_fence.retire();
        }
        self.flips.gate.open();
    }

    /// Wait until no request is being routed, no mirror hook is alive and every lane is
    /// empty; false if `deadline` passes first.
    async fn wait_quiet(&self, deadline: Instant) -> bool {
        let started = Instant::now();
        loop {
            if self.lanes.all_idle()
                && self.flips.gate.empty()
                && self.flips.no_hooks()
                && self.lanes.all_idle()
            {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            pause_briefly(started).await;
        }
    }

    /// Under replication capture, with the gate closed: wait until the source answered
    /// every request queued before (so each is applied, and in its stream), until each
    /// source server's stream is applied up to the offset it has reached, and until the
    /// lanes are empty; then stop the capture: from the flip on, the proxy mirrors writes
    /// back to the source itself (writers that bypass cutover must have stopped: they would
    /// keep writing to the old servers). False if `deadline` passes first.
    async fn drain_capture(&self, deadline: Instant) -> bool {
        let started = Instant::now();
        let side = self.capture.side();
        let pool = side.pool(self);
        for (server, state) in self.capture.states(side).iter().enumerate() {
            let Some(target) = super::capture::master_offset(self, side, server).await else {
                return false;
            };
            while state.offset.load(Relaxed) < target {
                if Instant::now() >= deadline {
                    tracing::warn!(pool = self.source.name(), server = %pool.servers[server].name, applied = state.offset.load(Relaxed), offset = target, "the capture did not reach the server's offset in time; flip abandoned");
                    self.counters.capture_fences[1].increment(1);
                    return false;
                }
                pause_briefly(started).await;
            }
        }
        let quiet = self.wait_quiet(deadline).await;
        self.counters.capture_fences[usize::from(!quiet)].increment(1);
        self.counters
            .capture_drain
            .record(started.elapsed().as_secs_f64());
        quiet
    }

    /// Read the offset of every server of `side` (standing by) as its fence; false if one
    /// does not answer.
    async fn fence(&self, side: Side) -> bool {
        let armed = super::capture::arm(self, side).await;
        if !armed {
            tracing::warn!(
                pool = self.source.name(),
                side = side.name(),
                "cannot read the new authority's replication offsets; flip abandoned"
            );
        }
        armed
    }

    /// Wait (at most `limit`) for a moment when every lane is empty.
    async fn wait_lanes_idle(&self, limit: Duration) -> bool {
        let started = Instant::now();
        while !self.lanes.all_idle() {
            if started.elapsed() >= limit {
                return false;
            }
            pause_briefly(started).await;
        }
        true
    }
}

/// For tests only: `CUTOVER_TEST_SKIP_LAST_LOOK=1` skips a flip's last look under the gate
/// (rule 20), so the tests can show what it catches.
static SKIP_LAST_LOOK: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
    std::env::var("CUTOVER_TEST_SKIP_LAST_LOOK").is_ok_and(|v| v == "1")
});

/// Yield to other tasks for the first few milliseconds, then sleep a millisecond at a time.
async fn pause_briefly(since: Instant) {
    if since.elapsed() < SPIN {
        tokio::task::yield_now().await;
    } else {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
