//! The migration's state file: per source server the SCAN cursor to resume from, the
//! running totals, the fingerprint salt, and whether the last stop was clean. A cursor is
//! saved only once every copy queued before it has been processed, so a crash never skips
//! a key; after an unclean stop the migration is marked as needing a verify pass.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::Migration;
use super::known::Salt;
use super::phase::Phase;
use crate::upstream::replication::Position;

/// How often safe cursors advance and the file is written.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(1000);
/// Checkpoints per lag window (the recent lag covers one to two windows).
const LAG_WINDOW_TICKS: u64 = 30;
/// Checkpoints between two looks for clients connected straight to a source server.
const DIRECT_CLIENTS_TICKS: u64 = 2;
/// First line of the file.
const HEADER: &str = "cutover-migration-state 1";

/// One source server's backfill position.
#[derive(Debug, Default)]
struct ServerProgress {
    /// The cursor to resume from and whether the server is fully scanned.
    saved: Mutex<(String, bool)>,
    /// Positions reached but not yet safe: `(cursor, done, events queued per lane then)`.
    pending: Mutex<VecDeque<(String, bool, Vec<u64>)>>,
}

/// The backfill's resumable progress.
#[derive(Debug)]
pub struct Progress {
    /// The state file, if one is configured.
    path: Option<PathBuf>,
    /// Fingerprint salt (kept so a resumed run fingerprints keys the same way).
    salt: Salt,
    /// Set when the last stop was not clean: a verify pass is needed before cutover.
    needs_verify: AtomicBool,
    /// Totals loaded from the file: scanned, copied, bytes.
    pub loaded: [u64; 3],
    /// The phase the migration was in (it survives restarts).
    pub phase: Phase,
    /// Per source server.
    servers: Vec<ServerProgress>,
    /// The `run_id`s an earlier run saw last, per side (source, target), as
    /// `(name, run_id)`: rule 17.
    pub run_ids: [Vec<(String, String)>; 2],
}

impl Progress {
    /// Load `path` if it exists (and matches `servers` source servers), else start fresh.
    pub fn load_or_new(path: Option<PathBuf>, servers: usize) -> Progress {
        let fresh = |path| Progress {
            path,
            salt: Salt::random(),
            needs_verify: AtomicBool::new(false),
            loaded: [0; 3],
            phase: Phase::Migrating,
            servers: (0..servers)
                .map(|_| ServerProgress {
                    saved: Mutex::new(("0".into(), false)),
                    ..Default::default()
                })
                .collect(),
            run_ids: [Vec::new(), Vec::new()],
        };
        let Some(file) = path.as_deref() else {
            return fresh(None);
        };
        match std::fs::read_to_string(file) {
            Err(_) => fresh(path),
            Ok(text) => match parse(&text, servers) {
                Some(progress) => {
                    tracing::info!(state = %file.display(), clean = !progress.needs_verify.load(Relaxed), "resuming the migration from its state file");
                    Progress { path, ..progress }
                }
                None => {
                    tracing::warn!(state = %file.display(), "state file unreadable or for another pool; starting over (verify before cutover)");
                    let progress = fresh(path);
                    progress.needs_verify.store(true, Relaxed);
                    progress
                }
            },
        }
    }

    /// The fingerprint salt.
    pub fn salt(&self) -> Salt {
        self.salt
    }

    /// Whether a verify pass is needed before cutover (the last stop was not clean).
    pub fn needs_verify(&self) -> bool {
        self.needs_verify.load(Relaxed)
    }

    /// Where server `server`'s scan resumes: `(cursor, done)`.
    pub fn resume_point(&self, server: usize) -> (String, bool) {
        self.servers[server]
            .saved
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|_| ("0".into(), false))
    }

    /// Server `server` queued every key before `cursor` (`done`: the scan finished); the
    /// position becomes safe once lanes processed `snapshot` events each.
    pub fn batch_queued(&self, server: usize, cursor: &[u8], done: bool, snapshot: Vec<u64>) {
        if let Ok(mut pending) = self.servers[server].pending.lock() {
            pending.push_back((String::from_utf8_lossy(cursor).into_owned(), done, snapshot));
        }
    }

    /// Advance each server's saved cursor past every position whose copies are processed.
    pub fn advance_to(&self, processed: &[u64]) {
        self.advance(processed);
    }

    /// Advance each server's saved cursor past every position whose copies are processed.
    fn advance(&self, processed: &[u64]) {
        for server in &self.servers {
            let (Ok(mut pending), Ok(mut saved)) = (server.pending.lock(), server.saved.lock())
            else {
                continue;
            };
            while let Some((cursor, done, snapshot)) = pending.front() {
                if snapshot.iter().zip(processed).any(|(want, got)| got < want) {
                    break;
                }
                *saved = (cursor.clone(), *done);
                pending.pop_front();
            }
        }
    }
}

/// Parse a state file written by [`save`] (capture lines, a fleet leader's, are read by
/// [`adopt`]).
fn parse(text: &str, servers: usize) -> Option<Progress> {
    let mut lines = text.lines();
    if lines.next()? != HEADER {
        return None;
    }
    let mut clean = false;
    let mut salt = None;
    let mut loaded = [0u64; 3];
    let mut phase = Phase::Migrating;
    let mut saved = vec![("0".to_string(), false); servers];
    let mut run_ids = [Vec::new(), Vec::new()];
    for line in lines {
        let words: Vec<&str> = line.split(' ').collect();
        match words.as_slice() {
            ["clean", value] => clean = *value == "true",
            ["phase", name] => phase = Phase::parse(name)?,
            ["salt", a, b] => salt = Some(Salt(a.parse().ok()?, b.parse().ok()?)),
            ["totals", a, b, c] => loaded = [a.parse().ok()?, b.parse().ok()?, c.parse().ok()?],
            ["server", index, done, cursor] => {
                let index: usize = index.parse().ok()?;
                *saved.get_mut(index)? = (cursor.to_string(), *done == "1");
            }
            ["capture", _, _, _] => {}
            ["run", side, name, run_id] => {
                let side = usize::from(*side == "target");
                run_ids[side].push((name.to_string(), run_id.to_string()));
            }
            _ => return None,
        }
    }
    Some(Progress {
        path: None,
        salt: salt?,
        needs_verify: AtomicBool::new(!clean),
        loaded,
        phase,
        servers: saved
            .into_iter()
            .map(|s| ServerProgress {
                saved: Mutex::new(s),
                ..Default::default()
            })
            .collect(),
        run_ids,
    })
}

/// Write the state file (atomically: a temporary file renamed over it).
pub fn save(migration: &Migration, clean: bool) {
    let Some(path) = migration.progress.path.as_deref() else {
        return;
    };
    let text = render(migration, clean);
    if let Err(error) = write_atomically(path, &text) {
        tracing::warn!(state = %path.display(), %error, "cannot write the state file");
    }
}

/// The migration's state as the state file's text: the phase, the salt, the totals, each
/// source server's safe cursor, under capture each source server's safe stream position
/// (`capture <server> <replid> <offset>`), and each server's last `run_id` seen
/// (`run <side> <name> <run_id>`, rule 17).
pub fn render(migration: &Migration, clean: bool) -> String {
    let progress = &migration.progress;
    let t = &migration.totals;
    let mut text = format!(
        "{HEADER}\nclean {clean}\nphase {}\nsalt {} {}\ntotals {} {} {}\n",
        migration.phase().name(),
        progress.salt.0,
        progress.salt.1,
        t.scanned.load(Relaxed),
        t.backfill_copied.load(Relaxed),
        t.bytes.load(Relaxed)
    );
    for i in 0..progress.servers.len() {
        let (cursor, done) = progress.resume_point(i);
        text.push_str(&format!("server {i} {} {cursor}\n", u8::from(done)));
    }
    // The side followed now: the source's servers while migrating, the target's after.
    let side = migration.capture.side();
    for (i, position) in super::capture::safe_positions(migration, side)
        .iter()
        .enumerate()
    {
        if let Some(p) = position {
            let name = side.name();
            text.push_str(&format!("capture {name}:{i} {} {}\n", p.replid, p.offset));
        }
    }
    for side in [super::capture::Side::Source, super::capture::Side::Target] {
        for (name, run_id) in migration.restarts.saved(side) {
            text.push_str(&format!("run {} {name} {run_id}\n", side.name()));
        }
    }
    text
}

/// Take over a former leader's checkpoint (`render`'s text): its safe cursors and totals,
/// and the positions to continue from in the streams of `side`'s servers. `None` when the
/// text is not a checkpoint of this pool (the caller starts afresh).
pub fn adopt(
    migration: &Migration,
    text: &str,
    side: super::capture::Side,
) -> Option<Vec<Option<Position>>> {
    let taken = parse(text, migration.progress.servers.len())?;
    let mut positions = vec![None; side.pool(migration).servers.len()];
    for line in text.lines() {
        if let ["capture", at, replid, offset] = line.split(' ').collect::<Vec<_>>()[..] {
            let Some(index) = at
                .strip_prefix(side.name())
                .and_then(|i| i.strip_prefix(':'))
            else {
                continue;
            };
            let index: usize = index.parse().ok()?;
            *positions.get_mut(index)? = Some(Position {
                replid: replid.to_string(),
                offset: offset.parse().ok()?,
            });
        }
    }
    for (mine, theirs) in migration.progress.servers.iter().zip(taken.servers) {
        if let (Ok(mut saved), Ok(cursor)) = (mine.saved.lock(), theirs.saved.into_inner()) {
            *saved = cursor;
        }
    }
    migration
        .restarts
        .adopt([&taken.run_ids[0], &taken.run_ids[1]]);
    let t = &migration.totals;
    t.scanned.store(taken.loaded[0], Relaxed);
    t.backfill_copied.store(taken.loaded[1], Relaxed);
    t.bytes.store(taken.loaded[2], Relaxed);
    Some(positions)
}

/// Write `text` to a temporary file beside `path`, then rename it over `path`.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// Advance safe cursors and write the state file, every second, marked unclean (a clean
/// stop rewrites it as clean).
pub async fn checkpoints(migration: Arc<Migration>) {
    let mut ticks: u64 = 0;
    loop {
        migration.progress.advance(&migration.lanes.processed_now());
        if migration.capturing() {
            super::capture::note_progress(&migration, super::capture::Side::Source);
        }
        save(&migration, false);
        migration.publish_progress();
        if migration.phase() == Phase::Migrating && ticks.is_multiple_of(DIRECT_CLIENTS_TICKS) {
            migration.refresh_direct_clients().await;
        }

        ticks += 1;
        if ticks.is_multiple_of(LAG_WINDOW_TICKS) {
            migration.lag.rotate();
        }
        tokio::time::sleep(CHECKPOINT_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_through_text() {
        let text = format!(
            "{HEADER}\nclean false\nphase cutover\nsalt 1 2\ntotals 10 8 1000\nserver 0 1 0\nserver 1 0 1234\nrun target t1 4f2a\n"
        );
        let progress = parse(&text, 2).expect("valid");
        assert_eq!(
            progress.run_ids[1],
            [("t1".to_string(), "4f2a".to_string())]
        );
        assert!(progress.run_ids[0].is_empty());
        assert!(progress.needs_verify());
        assert_eq!(progress.salt(), Salt(1, 2));
        assert_eq!(progress.loaded, [10, 8, 1000]);
        assert_eq!(progress.phase, Phase::Cutover);
        assert_eq!(progress.resume_point(0), ("0".to_string(), true));
        assert_eq!(progress.resume_point(1), ("1234".to_string(), false));
        assert!(parse("something else", 2).is_none());
        assert!(
            parse(&format!("{HEADER}\nsalt 1 2\nserver 5 0 0\n"), 2).is_none(),
            "a server the pool does not have"
        );
    }

    #[test]
    fn cursors_advance_only_when_lanes_caught_up() {
        let progress = Progress::load_or_new(None, 1);
        progress.batch_queued(0, b"100", false, vec![5, 3]);
        progress.batch_queued(0, b"0", true, vec![9, 3]);
        progress.advance(&[4, 3]);
        assert_eq!(
            progress.resume_point(0),
            ("0".to_string(), false),
            "lane 0 still behind"
        );
        progress.advance(&[5, 3]);
        assert_eq!(progress.resume_point(0), ("100".to_string(), false));
        progress.advance(&[9, 9]);
        assert_eq!(progress.resume_point(0), ("0".to_string(), true));
    }
}
