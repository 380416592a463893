//! Dirty keys (rule 7): keys whose copy or replay kept failing, or whose mirror event found
//! its lane full. They are appended to a file, not held in memory, and copied again later
//! by [`drain`], so a slow or dead target never grows the proxy's memory.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;

use super::Migration;
use super::lane::LaneEvent;

/// How often the drainer looks for dirty keys.
const DRAIN_INTERVAL: Duration = Duration::from_millis(500);
/// Longest key accepted back from the file (guards against a damaged file).
const MAX_KEY: usize = 512 * 1024 * 1024;

/// The dirty-key file and its progress.
pub struct DirtyKeys {
    /// The file, opened for reading and appending.
    file: Mutex<Option<std::fs::File>>,
    /// Where it is.
    pub path: PathBuf,
    /// Bytes of the file already copied again.
    read_offset: AtomicU64,
    /// Keys written and not yet copied again.
    pub pending: AtomicU64,
}

impl DirtyKeys {
    /// Open (creating) the dirty file at `path`.
    pub fn open(path: PathBuf) -> DirtyKeys {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path);
        if let Err(error) = &file {
            tracing::error!(path = %path.display(), %error, "cannot open the dirty-key file; dirty keys will only be counted");
        }
        DirtyKeys {
            file: Mutex::new(file.ok()),
            path,
            read_offset: AtomicU64::new(0),
            pending: AtomicU64::new(0),
        }
    }

    /// Record `key` as dirty.
    pub fn mark(&self, key: &[u8]) {
        let Ok(mut guard) = self.file.lock() else {
            return;
        };
        let Some(file) = guard.as_mut() else { return };
        let mut record = (key.len() as u32).to_le_bytes().to_vec();
        record.extend_from_slice(key);
        if file.write_all(&record).is_ok() {
            self.pending.fetch_add(1, Relaxed);
        }
    }

    /// Up to `max` dirty keys not yet taken, advancing past them.
    fn take(&self, max: usize) -> Vec<Bytes> {
        let Ok(mut guard) = self.file.lock() else {
            return Vec::new();
        };
        let Some(file) = guard.as_mut() else {
            return Vec::new();
        };
        let mut offset = self.read_offset.load(Relaxed);
        let mut keys = Vec::new();
        if file.seek(SeekFrom::Start(offset)).is_err() {
            return keys;
        }
        while keys.len() < max {
            let mut len = [0u8; 4];
            if file.read_exact(&mut len).is_err() {
                break;
            }
            let len = u32::from_le_bytes(len) as usize;
            if len > MAX_KEY {
                break;
            }
            let mut key = vec![0u8; len];
            if file.read_exact(&mut key).is_err() {
                break;
            }
            offset += 4 + len as u64;
            keys.push(Bytes::from(key));
        }
        let _ = file.seek(SeekFrom::End(0));
        self.read_offset.store(offset, Relaxed);
        self.pending.fetch_sub(keys.len() as u64, Relaxed);
        keys
    }
}

/// Copy dirty keys again, through their lanes, as they come.
pub async fn drain(migration: Arc<Migration>) {
    loop {
        tokio::time::sleep(DRAIN_INTERVAL).await;
        for key in migration.dirty.take(1024) {
            migration
                .send(LaneEvent::Copy {
                    key,
                    unless_known: false,
                    reason: super::CopyReason::Dirty,
                    lag: super::lag::LagStart(None),
                })
                .await;
        }
        migration
            .counters
            .dirty_pending
            .set(migration.dirty.pending.load(Relaxed) as f64);
    }
}
