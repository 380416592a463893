//! The continuum: how a key hash picks a server, for each of nutcracker's distributions.

use std::cell::Cell;

use super::md5_digest;

/// A pool's `distribution:` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Distribution {
    /// Consistent hashing on an MD5 ring of 160 points per server (scaled by weight).
    Ketama,
    /// `hash % slots`, one slot per unit of weight.
    Modula,
    /// A random live server per request; the hash is ignored.
    Random,
}

impl Distribution {
    /// Every distribution with its config name.
    pub const ALL: [(Distribution, &'static str); 3] = [
        (Distribution::Ketama, "ketama"),
        (Distribution::Modula, "modula"),
        (Distribution::Random, "random"),
    ];

    /// The distribution named as in a nutcracker config.
    pub fn from_name(name: &str) -> Option<Distribution> {
        Self::ALL.iter().find(|(_, n)| *n == name).map(|(d, _)| *d)
    }

    /// The config name of this distribution.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(d, _)| *d == self)
            .map(|(_, n)| *n)
            .unwrap_or("?")
    }
}

/// Ketama points a server owns per nutcracker (`KETAMA_POINTS_PER_SERVER`).
const KETAMA_POINTS_PER_SERVER: f32 = 160.0;
/// Points taken from one MD5 digest.
const KETAMA_POINTS_PER_HASH: u32 = 4;
/// Longest point string nutcracker hashes (`KETAMA_MAX_HOSTLEN` - 1 for the NUL).
const KETAMA_MAX_POINT_STRING: usize = 272;

/// The number of ketama points a live server gets, computed in IEEE float32 exactly as
/// nutcracker does. Single precision is why 25 equal servers get 156 points, not 160, and
/// why a weight of 1 beside 100 gets none.
pub fn ketama_points(weight: u32, total_weight: u32, live_servers: u32) -> u32 {
    let pct = weight as f32 / total_weight as f32;
    let x =
        ((pct * KETAMA_POINTS_PER_SERVER) / KETAMA_POINTS_PER_HASH as f32) * live_servers as f32;
    // C adds 1e-10 in double precision, then casts back to float, which usually loses it.
    let rounded = (f64::from(x) + 1e-10) as f32;
    (rounded.floor() as u32) * KETAMA_POINTS_PER_HASH
}

/// A server as the continuum sees it: its identity, weight and whether it is live.
#[derive(Debug, Clone, Copy)]
pub struct ContinuumServer<'a> {
    /// The server's name (identity), hashed into ketama point strings.
    pub name: &'a [u8],
    /// Its weight from the server line.
    pub weight: u32,
    /// False while the server is ejected.
    pub live: bool,
}

/// A built continuum over the live servers; lookups return indexes into the pool's
/// name-sorted server array.
#[derive(Debug, Clone)]
pub enum Continuum {
    /// Ring points `(value, server)`, sorted by value; a key takes the first point `>= hash`.
    Ketama(Box<[(u32, u32)]>),
    /// Slots as cumulative weight ends `(end, server)`: slot `s` belongs to the first entry
    /// with `s < end`. Equivalent to nutcracker's one-slot-per-weight array, without
    /// allocating one entry per unit of weight.
    Modula {
        /// `(cumulative end, server)` per live server, in server order.
        ends: Box<[(u64, u32)]>,
        /// Total slots (sum of live weights).
        slots: u64,
    },
    /// One slot per live server, chosen at random per request.
    Random(Box<[u32]>),
}

impl Continuum {
    /// Build the continuum for `distribution` over `servers` (in name-sorted order),
    /// counting only the live ones, as nutcracker's `*_update` functions do.
    pub fn build(distribution: Distribution, servers: &[ContinuumServer<'_>]) -> Continuum {
        let live = || {
            servers
                .iter()
                .enumerate()
                .filter(|(_, s)| s.live)
                .map(|(i, s)| (i as u32, s))
        };
        match distribution {
            Distribution::Ketama => {
                let total: u32 = live().map(|(_, s)| s.weight).fold(0, u32::saturating_add);
                let count = live().count() as u32;
                let mut points = Vec::new();
                for (index, server) in live() {
                    let owned = ketama_points(server.weight, total, count);
                    push_ketama_points(&mut points, server.name, index, owned);
                }
                // Stable sort: equal values keep server order (nutcracker's qsort leaves ties
                // unspecified; they are vanishingly rare).
                points.sort_by_key(|&(value, _)| value);
                Continuum::Ketama(points.into_boxed_slice())
            }
            Distribution::Modula => {
                let mut end = 0u64;
                let ends = live()
                    .map(|(index, s)| {
                        end += u64::from(s.weight);
                        (end, index)
                    })
                    .collect::<Vec<_>>()
                    .into_boxed_slice();
                Continuum::Modula { ends, slots: end }
            }
            Distribution::Random => Continuum::Random(live().map(|(i, _)| i).collect()),
        }
    }

    /// The server index for a key hash, or `None` when no server is live.
    pub fn lookup(&self, hash: u32) -> Option<usize> {
        match self {
            Continuum::Ketama(points) => {
                if points.is_empty() {
                    return None;
                }
                let at = points.partition_point(|&(value, _)| value < hash);
                let (_, server) = points[if at == points.len() { 0 } else { at }];
                Some(server as usize)
            }
            Continuum::Modula { ends, slots } => {
                if *slots == 0 {
                    return None;
                }
                let slot = u64::from(hash) % slots;
                let at = ends.partition_point(|&(end, _)| end <= slot);
                ends.get(at).map(|&(_, server)| server as usize)
            }
            Continuum::Random(servers) => {
                if servers.is_empty() {
                    return None;
                }
                let pick = (next_random() % servers.len() as u64) as usize;
                Some(servers[pick] as usize)
            }
        }
    }

    /// How many ring points (ketama), slots (modula) or servers (random) this continuum holds.
    pub fn len(&self) -> usize {
        match self {
            Continuum::Ketama(points) => points.len(),
            Continuum::Modula { slots, .. } => *slots as usize,
            Continuum::Random(servers) => servers.len(),
        }
    }

    /// True when no server is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Add `owned` points for one server: point strings `"<name>-<i>"`, four little-endian
/// u32 points from the MD5 of each.
fn push_ketama_points(points: &mut Vec<(u32, u32)>, name: &[u8], index: u32, owned: u32) {
    // `%.*s` stops at a NUL byte.
    let name = name.split(|&b| b == 0).next().unwrap_or_default();
    let mut text = Vec::with_capacity(name.len() + 12);
    for i in 0..owned / KETAMA_POINTS_PER_HASH {
        text.clear();
        text.extend_from_slice(name);
        text.push(b'-');
        text.extend_from_slice(i.to_string().as_bytes());
        text.truncate(KETAMA_MAX_POINT_STRING);
        let digest = md5_digest(&text);
        for chunk in digest.chunks_exact(4) {
            let value = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            points.push((value, index));
        }
    }
}

thread_local! {
    /// Per-thread xorshift state for the random distribution, seeded from the clock
    /// (nutcracker seeds `random()` with `time(NULL)`).
    static RANDOM_STATE: Cell<u64> = Cell::new(random_seed());
}

/// A non-zero seed from the clock and the thread's stack address.
fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x9e37_79b9_7f4a_7c15);
    let local = 0u8;
    (nanos ^ (&local as *const u8 as u64).rotate_left(32)) | 1
}

/// xorshift64*: fast, uniform enough to spread requests; not for anything secret.
fn next_random() -> u64 {
    RANDOM_STATE.with(|state| {
        let mut x = state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float32_point_counts() {
        // 25 equal servers: 156 each, not 160 (TWEMPROXY.md §2.2).
        assert_eq!(ketama_points(1, 25, 25), 156);
        assert_eq!(ketama_points(1, 3, 3), 160);
        // 100:1 gives the small server no point at all.
        assert_eq!(ketama_points(1, 101, 2), 0);
        // Weights 1,1,2,3x7 over 10 servers: 60, 124, 188.
        let total = 1 + 1 + 2 + 3 * 7;
        assert_eq!(ketama_points(1, total, 10), 60);
        assert_eq!(ketama_points(2, total, 10), 124);
        assert_eq!(ketama_points(3, total, 10), 188);
    }

    fn server(name: &[u8], weight: u32, live: bool) -> ContinuumServer<'_> {
        ContinuumServer { name, weight, live }
    }

    #[test]
    fn ketama_lookup_wraps_and_takes_lower_bound() {
        let servers = [server(b"a", 1, true), server(b"b", 1, true)];
        let Continuum::Ketama(points) = Continuum::build(Distribution::Ketama, &servers) else {
            panic!("ketama expected");
        };
        assert_eq!(points.len(), 320);
        let c = Continuum::Ketama(points.clone());
        let (first_value, first_server) = points[0];
        let (last_value, _) = points[points.len() - 1];
        assert_eq!(c.lookup(first_value), Some(first_server as usize));
        assert_eq!(c.lookup(0), Some(first_server as usize));
        if last_value < u32::MAX {
            assert_eq!(c.lookup(last_value + 1), Some(first_server as usize));
        }
        let (v5, s5) = points[5];
        if points[4].0 < v5 {
            assert_eq!(c.lookup(v5), Some(s5 as usize));
            assert_eq!(c.lookup(points[4].0 + 1), Some(s5 as usize));
        }
    }

    #[test]
    fn modula_slots_follow_weights_and_skip_dead_servers() {
        let servers = [
            server(b"a", 2, true),
            server(b"b", 1, false),
            server(b"c", 1, true),
        ];
        let c = Continuum::build(Distribution::Modula, &servers);
        assert_eq!(c.len(), 3);
        let picks: Vec<_> = (0..6).map(|h| c.lookup(h)).collect();
        assert_eq!(
            picks,
            [Some(0), Some(0), Some(2), Some(0), Some(0), Some(2)]
        );
    }

    #[test]
    fn empty_continuum_has_no_server() {
        let servers = [server(b"a", 1, false)];
        for (d, _) in Distribution::ALL {
            assert_eq!(Continuum::build(d, &servers).lookup(7), None);
        }
    }

    #[test]
    fn random_only_picks_live_servers() {
        let servers = [
            server(b"a", 1, false),
            server(b"b", 5, true),
            server(b"c", 1, true),
        ];
        let c = Continuum::build(Distribution::Random, &servers);
        let mut seen = [0usize; 3];
        for _ in 0..1000 {
            seen[c.lookup(0).expect("live server")] += 1;
        }
        assert_eq!(seen[0], 0);
        assert!(
            seen[1] > 300 && seen[2] > 300,
            "weight is ignored: {seen:?}"
        );
    }
}
