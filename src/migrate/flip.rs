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

use super::Migration;
use super::capture::Side;
use super::phase::Phase;
use crate::config::Capture;

/// Longest a flip waits for in-flight requests and lanes before giving up (the gate then
/// opens again and nothing changes).
const DRAIN_LIMIT: Duration = Duration::from_secs(5);
/// Longest a cutover waits for a moment when the lanes are empty before refusing.
const IDLE_WAIT: Duration = Duration::from_secs(2);
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
    pub async fn cutover_blockers(&self) -> Vec<String> {
        let idle = self.wait_lanes_idle(IDLE_WAIT).await;
        self.refresh_direct_clients().await;
        self.readiness(idle)
    }

    /// Look again for clients connected straight to a source server (`/status` shows what
    /// was last found; a cutover looks again first).
    pub async fn refresh_direct_clients(&self) {
        let found = self.direct_clients().await;
        if let Ok(mut seen) = self.direct_seen.lock() {
            *seen = found;
        }
    }

    /// Clients connected straight to a source server that are not cutover's own (every
    /// connection of cutover's is named `cutover`; replicas are left out): a writer among
    /// them would keep writing to the old servers after the flip. One reason per server.
    async fn direct_clients(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        for (server, s) in self.copy_source.servers.iter().enumerate() {
            let Ok(reply) = self
                .copy_source
                .call(server, 0, &[b"CLIENT".as_slice(), b"LIST"])
                .await
            else {
                continue;
            };
            let text = String::from_utf8_lossy(&reply);
            let others: Vec<String> = text
                .lines()
                .filter_map(|line| {
                    let field = |name: &str| {
                        line.split(' ')
                            .find_map(|f| f.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
                    };
                    let name = field("name").unwrap_or("");
                    let flags = field("flags").unwrap_or("");
                    let addr = field("addr")?;
                    let mine = name.as_bytes() == crate::upstream::CONNECTION_NAME;
                    (!mine && !flags.contains('S') && !flags.contains('M')).then(|| {
                        format!(
                            "{addr} (name '{name}', last command {})",
                            field("cmd").unwrap_or("?")
                        )
                    })
                })
                .collect();
            if let Some(first) = others.first() {
                reasons.push(format!(
                    "{} clients are connected straight to source server {} (e.g. {first}): a writer among them would keep writing to the old servers after the cutover; stop them, or force",
                    others.len(),
                    s.name
                ));
            }
        }
        reasons
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
            reasons.push(format!(
                "{dirty} dirty keys wait to be copied again; wait, and check the target's health"
            ));
        }
        if !lanes_idle {
            reasons.push(format!(
                "the lanes did not empty ({} events queued); the target is not keeping up",
                self.backlog().0
            ));
        }
        if self.dirty.needs_verify() && self.dirty.owed.load(Relaxed) > 0 {
            reasons.push("part of a source's replication stream was lost (or a replicated command's keys could not be told); run a verify pass with repair (cutover ctl verify --repair) that starts now".to_string());
        }
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
        let _flipping = self.flips.lock.lock().await;
        let phase = self.phase();
        if phase != Phase::Migrating {
            return Err(self.wrong_phase("cut over", phase, " (rollback returns to 'migrating')"));
        }
        let blockers = self.cutover_blockers().await;
        if !blockers.is_empty() {
            if !force {
                self.counters.refusals.increment(1);
                return Err(FlipError::NotReady(blockers));
            }
            tracing::warn!(pool = self.source.name(), reasons = %blockers.join("; "), "cutover forced past its readiness checks");
        }
        self.flip(phase, Phase::Cutover, force).await
    }

    /// Make the source authoritative again. Refused while dirty keys wait (the source would
    /// miss them), unless `force`.
    pub async fn rollback(self: &Arc<Self>, force: bool) -> Result<Flipped, FlipError> {
        let _flipping = self.flips.lock.lock().await;
        let phase = self.phase();
        if phase != Phase::Cutover {
            return Err(self.wrong_phase(
                "roll back",
                phase,
                " (only a cutover can be rolled back; after finalize the source is no longer mirrored)",
            ));
        }
        let (_, dirty) = self.backlog();
        if dirty > 0 && !force {
            self.counters.refusals.increment(1);
            return Err(FlipError::NotReady(vec![format!(
                "{dirty} dirty keys wait to be copied to the source; wait, or force"
            )]));
        }
        self.flip(phase, Phase::Migrating, force).await
    }

    /// Stop mirroring to the source: the proxy serves the target pool alone from now on.
    pub async fn finalize(self: &Arc<Self>) -> Result<Flipped, FlipError> {
        let _flipping = self.flips.lock.lock().await;
        let phase = self.phase();
        if phase != Phase::Cutover {
            return Err(self.wrong_phase("finalize", phase, " (cut over first)"));
        }
        self.flip(phase, Phase::Finalized, false).await
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

    /// Hold new requests, wait for everything in flight, move authority, release.
    ///
    /// Under capture, the new authority's streams are opened before the gate closes (a
    /// full sync can take a while) and stand by; with the gate closed, the old side's
    /// streams are drained (rule 11), then each new authority server's offset is read (the
    /// fence): what its stream holds before it is cutover's own copying, what comes after
    /// is mirrored back (rule 13).
    async fn flip(
        self: &Arc<Self>,
        from: Phase,
        to: Phase,
        forced: bool,
    ) -> Result<Flipped, FlipError> {
        let next = match to {
            Phase::Migrating => Some(Side::Source),
            Phase::Cutover => Some(Side::Target),
            Phase::Finalized => None,
        };
        let next = match next {
            Some(side) if self.settings.capture != Capture::Proxy => {
                match super::capture::stand_by(self, side).await {
                    Ok(()) => Some(side),
                    Err(reason) => {
                        tracing::warn!(pool = self.source.name(), side = side.name(), %reason, "the new authority's servers refuse replication: after the flip the proxy mirrors writes instead");
                        None
                    }
                }
            }
            _ => None,
        };
        let started = Instant::now();
        self.flips.gate.close();
        let fenced = self.wait_quiet(started + DRAIN_LIMIT).await
            && (!self.capturing() || self.drain_capture(started + DRAIN_LIMIT).await)
            && match next {
                Some(side) => self.fence(side).await,
                None => true,
            };
        if !fenced {
            if let Some(side) = next {
                super::capture::stand_down(self, side);
            }
            self.flips.gate.open();
            self.counters.refusals.increment(1);
            return Err(FlipError::Busy(DRAIN_LIMIT));
        }
        match next {
            Some(side) => super::capture::switch(self, side),
            None => self.capture.turn_off(),
        }
        self.flips.set_phase(to);
        // Both sides are equal now. The lanes' known-copied sets stay valid whichever side
        // is authoritative: a key they know (and its TTL flag) is equal on both sides.
        self.flips.gate.open();
        let pause = started.elapsed();
        self.flips
            .last_pause_us
            .store(pause.as_micros() as u64, Relaxed);
        self.counters.pause.record(pause.as_secs_f64());
        self.counters.flips[Phase::ALL.iter().position(|p| *p == to).unwrap_or(0)].increment(1);
        self.counters.set_phase(to);
        self.save_state(false);
        tracing::info!(
            pool = self.source.name(),
            from = from.name(),
            to = to.name(),
            pause_us = pause.as_micros() as u64,
            forced,
            "authority flipped"
        );
        Ok(Flipped {
            from,
            to,
            pause,
            forced,
        })
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
        self.authority().behind_every_request().await;
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

/// Yield to other tasks for the first few milliseconds, then sleep a millisecond at a time.
async fn pause_briefly(since: Instant) {
    if since.elapsed() < SPIN {
        tokio::task::yield_now().await;
    } else {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
