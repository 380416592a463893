//! Recent mirror lag quantiles for `/status` and `cutover ctl` (Prometheus gets the full
//! histogram): counts in power-of-two buckets, over the current and the previous window.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use tokio::time::Instant;

/// When a mirrored write was acknowledged by the authoritative side, kept only for the
/// writes whose lag is measured (one in [`super::LAG_SAMPLE`]): reading the clock for
/// every write was a visible share of the mirroring cost, and a sample gives the same
/// quantiles.
#[derive(Debug, Clone, Copy)]
pub struct LagStart(pub Option<Instant>);

/// Buckets: the first holds lags up to 64 µs, each next one twice as long (about 36
/// minutes at the top).
const BUCKETS: usize = 26;
/// Upper bound of the first bucket, in microseconds.
const FIRST_US: u64 = 64;

/// Lag counts over two windows.
#[derive(Debug)]
pub struct LagWindow {
    /// Two sets of bucket counts; `current` says which one is being filled.
    counts: [[AtomicU64; BUCKETS]; 2],
    /// The set being filled.
    current: AtomicUsize,
    /// Mirrored events seen by [`LagWindow::start`] (which measures one in a sample).
    tick: AtomicU64,
}

impl Default for LagWindow {
    fn default() -> Self {
        LagWindow {
            counts: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            current: AtomicUsize::new(0),
            tick: AtomicU64::new(0),
        }
    }
}

impl LagWindow {
    /// Where a mirrored event's lag starts: now for one event in `sample`, else
    /// unmeasured.
    pub fn start(&self, sample: u64) -> LagStart {
        let due = self.tick.fetch_add(1, Relaxed).is_multiple_of(sample);
        LagStart(due.then(Instant::now))
    }

    /// Count one lag of `seconds`.
    pub fn record(&self, seconds: f64) {
        let us = (seconds * 1e6) as u64;
        let bucket = if us <= FIRST_US {
            0
        } else {
            ((us - 1) / FIRST_US).ilog2() as usize + 1
        };
        self.counts[self.current.load(Relaxed) & 1][bucket.min(BUCKETS - 1)].fetch_add(1, Relaxed);
    }

    /// Start a new window: the older of the two is cleared and filled from now on.
    pub fn rotate(&self) {
        let next = (self.current.load(Relaxed) + 1) & 1;
        for count in &self.counts[next] {
            count.store(0, Relaxed);
        }
        self.current.store(next, Relaxed);
    }

    /// The `q` quantile (0 to 1) in milliseconds, as its bucket's upper bound; 0 with no data.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        let totals: Vec<u64> = (0..BUCKETS)
            .map(|b| self.counts[0][b].load(Relaxed) + self.counts[1][b].load(Relaxed))
            .collect();
        let all: u64 = totals.iter().sum();
        if all == 0 {
            return 0.0;
        }
        let wanted = (q * all as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (bucket, count) in totals.iter().enumerate() {
            seen += count;
            if seen >= wanted {
                return (FIRST_US << bucket) as f64 / 1000.0;
            }
        }
        (FIRST_US << (BUCKETS - 1)) as f64 / 1000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_from_buckets() {
        let lag = LagWindow::default();
        assert_eq!(lag.quantile_ms(0.99), 0.0);
        for _ in 0..98 {
            lag.record(0.000_050);
        }
        lag.record(0.003);
        lag.record(0.003);
        assert_eq!(lag.quantile_ms(0.5), 0.064);
        // 3 ms falls in the bucket up to 4.096 ms.
        assert_eq!(lag.quantile_ms(0.99), 4.096);
        lag.rotate();
        assert_eq!(
            lag.quantile_ms(0.99),
            4.096,
            "the previous window still counts"
        );
        lag.rotate();
        assert_eq!(lag.quantile_ms(0.99), 0.0, "two rotations forget it");
    }
}
